"""Evaluation metrics of the paper (SPEC §6), in pure NumPy.

Definitions (all values are fractions in [0, 1]; ``format_table`` prints them
as the paper's percentages):

- **AP** (``average_precision``): non-interpolated average precision, the mean
  over the positives of the precision at each positive's rank.
- **Class-level AP of an attribute** (``attribute_ap``): for each value ``c``,
  rank the test images *labelled for the attribute* by ``p(a = c)`` and take
  the AP against ``label == c``; the attribute's AP is the mean over the values
  that have at least one positive. **mAP_cls** is the mean over attributes that
  have at least one labelled test image.
- **mP_ins / mR_ins** (``evaluate_predictions``): per image, the prediction is
  the top-1 value of *every* attribute; hits are predictions equal to a known
  label; precision = hits / number of attributes, recall = hits / number of
  labelled attributes; both averaged over the images with at least one label.
- **top-k recall** (``topk_recall``) for multi-label (binary) attribute sets as
  the DeepFashion attribute benchmark reports it.

Missing labels are ``attributes.MISSING`` (-1) everywhere: they are neither
positives nor negatives and are never counted.
"""

import math

import numpy as np

from mtct_tf.attributes import MISSING


def _check_scores(scores, name="scores"):
    scores = np.asarray(scores, dtype=np.float64)
    if not np.all(np.isfinite(scores)):
        raise ValueError(
            f"`{name}` must be finite (a NaN would make the ranking "
            f"arbitrary). Received: {name} with "
            f"{int(np.sum(~np.isfinite(scores)))} non-finite value(s)"
        )
    return scores


def average_precision(scores, positives):
    """Non-interpolated average precision of one ranking.

    ``AP = (1 / P) * sum over positives i of precision@rank(i)``, with ``P``
    the number of positives.

    Ties: items with equal scores form one block that is ranked as a whole, so
    a positive in a block gets the precision *at the end of its block*:
    ``precision(i) = #{j positive: s_j >= s_i} / #{j: s_j >= s_i}``. This
    makes AP independent of the input order, charges a predictor for every
    negative it cannot separate from a positive, and equals scikit-learn's
    ``average_precision_score`` (which thresholds at each distinct score).
    Without ties it is the textbook mean of precision at each positive's rank.

    Args:
        scores: ``[N]`` real scores, higher = more likely positive.
        positives: ``[N]`` booleans (or 0/1), True for a positive item.

    Returns:
        The AP as a float in [0, 1]; NaN when there is no positive.

    Raises:
        ValueError: shapes differ, are not 1-D, or a score is not finite.
    """
    scores = _check_scores(scores)
    positives = np.asarray(positives).astype(bool)
    if scores.ndim != 1 or scores.shape != positives.shape:
        raise ValueError(
            "`scores` and `positives` must be 1-D of the same length. "
            f"Received: scores.shape={scores.shape}, "
            f"positives.shape={positives.shape}"
        )
    num_pos = int(positives.sum())
    if num_pos == 0:
        return math.nan
    order = np.argsort(-scores, kind="stable")
    s = scores[order]
    hits = np.cumsum(positives[order])
    # Index of the last item of each tie block, broadcast to every item of it.
    is_block_end = np.append(s[1:] != s[:-1], True)
    block_end = np.flatnonzero(is_block_end)
    end_of = block_end[np.searchsorted(block_end, np.arange(len(s)))]
    precision_at = hits[end_of] / (end_of + 1.0)
    return float(np.sum(precision_at[positives[order]]) / num_pos)


def _check_labels(labels, n, num_values, name):
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.shape != (n,):
        raise ValueError(
            f"Labels of {name!r} must have shape [{n}]. "
            f"Received: labels.shape={labels.shape}"
        )
    if not np.issubdtype(labels.dtype, np.integer):
        if not np.all(np.equal(np.mod(labels, 1), 0)):
            raise ValueError(
                f"Labels of {name!r} must be integers. "
                f"Received: dtype={labels.dtype}"
            )
    labels = labels.astype(np.int64)
    bad = (labels < MISSING) | (labels >= num_values)
    if np.any(bad):
        raise ValueError(
            f"Labels of {name!r} must be in [0, {num_values - 1}] or "
            f"{MISSING} (missing). Received: label(s) "
            f"{sorted(set(labels[bad].tolist()))[:5]}"
        )
    return labels


def _check_probs(probs, name):
    probs = _check_scores(probs, f"probs[{name!r}]")
    if probs.ndim != 2:
        raise ValueError(
            f"Scores of {name!r} must have shape [N, K]. "
            f"Received: shape={probs.shape}"
        )
    return probs


def attribute_ap(probs, labels, name="attribute"):
    """Class-level AP of one softmax attribute.

    Only images labelled for the attribute are ranked. For each value ``c``:
    ``AP_c = average_precision(probs[labelled, c], labels[labelled] == c)``.

    Args:
        probs: ``[N, K]`` scores (probabilities or logits; only the ranking of
            each column matters).
        labels: ``[N]`` integer labels in ``[0, K)`` or ``MISSING`` (-1).
        name: used in error messages.

    Returns:
        ``(ap, per_value)``: ``ap`` is the mean of ``per_value`` over the values
        with at least one positive among the labelled images (NaN if no image
        is labelled); ``per_value`` is a ``[K]`` float array, NaN for values
        without a positive.
    """
    probs = _check_probs(probs, name)
    labels = _check_labels(labels, probs.shape[0], probs.shape[1], name)
    known = labels != MISSING
    per_value = np.array(
        [
            average_precision(probs[known, c], labels[known] == c)
            for c in range(probs.shape[1])
        ]
    )
    if np.all(np.isnan(per_value)):
        return math.nan, per_value
    return float(np.nanmean(per_value)), per_value


def _nanmean(values):
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0 or np.all(np.isnan(values)):
        return math.nan
    return float(np.nanmean(values))


def evaluate_predictions(probs, labels, attribute_names=None):
    """All softmax-attribute metrics of the paper's tables.

    Args:
        probs: dict attribute name -> ``[N, K_a]`` scores.
        labels: dict attribute name -> ``[N]`` integer labels (-1 = missing).
        attribute_names: the attributes to evaluate, in table order; defaults
            to the keys of ``probs``. Every one of them is "predicted" for the
            instance-level precision.

    Returns:
        A dict with
        - ``"ap"``: name -> class-level AP (NaN if no labelled image),
        - ``"ap_per_value"``: name -> ``[K_a]`` array (NaN: no positive),
        - ``"top1"``: name -> top-1 accuracy over its labelled images (NaN if
          none),
        - ``"num_labelled"``: name -> number of labelled images,
        - ``"mAP_cls"``: mean of the attribute APs, skipping attributes with no
          labelled image,
        - ``"mean_top1"``: mean of the top-1 accuracies, same skipping,
        - ``"mP_ins"``, ``"mR_ins"``: instance-level mean precision / recall,
          averaged over the ``num_images_labelled`` images with at least one
          known label (an image with none can be neither right nor wrong, and
          averaging both over the same images keeps mP / mR comparable),
        - ``"num_images"``, ``"num_images_labelled"``, ``"num_attributes"``.

    Raises:
        KeyError: an attribute is missing from ``probs`` or ``labels``.
        ValueError: inconsistent shapes or labels out of range.
    """
    names = tuple(probs) if attribute_names is None else tuple(attribute_names)
    if not names:
        raise ValueError(
            f"No attribute to evaluate. Received: attribute_names={names!r}"
        )
    for what, d in (("probs", probs), ("labels", labels)):
        absent = [a for a in names if a not in d]
        if absent:
            raise KeyError(f"`{what}` has no entry for attribute(s) {absent}")
    n = None
    results = {"ap": {}, "ap_per_value": {}, "top1": {}, "num_labelled": {}}
    hits = None
    num_known = None
    for a in names:
        p = _check_probs(probs[a], a)
        if n is None:
            n = p.shape[0]
            hits = np.zeros(n, dtype=np.int64)
            num_known = np.zeros(n, dtype=np.int64)
        elif p.shape[0] != n:
            raise ValueError(
                f"All attributes must score the same images. Received: "
                f"{p.shape[0]} rows for {a!r}, {n} for {names[0]!r}"
            )
        y = _check_labels(labels[a], n, p.shape[1], a)
        known = y != MISSING
        ap, per_value = attribute_ap(p, y, a)
        # argmax takes the first of tied maxima: a fixed, documented choice.
        correct = (np.argmax(p, axis=1) == y) & known
        results["ap"][a] = ap
        results["ap_per_value"][a] = per_value
        results["num_labelled"][a] = int(known.sum())
        results["top1"][a] = (
            float(correct.sum() / known.sum()) if known.any() else math.nan
        )
        hits += correct
        num_known += known
    labelled = num_known > 0
    results["mAP_cls"] = _nanmean(list(results["ap"].values()))
    results["mean_top1"] = _nanmean(list(results["top1"].values()))
    if labelled.any():
        results["mP_ins"] = float(np.mean(hits[labelled] / len(names)))
        results["mR_ins"] = float(
            np.mean(hits[labelled] / num_known[labelled])
        )
    else:
        results["mP_ins"] = results["mR_ins"] = math.nan
    results["num_images"] = int(n)
    results["num_images_labelled"] = int(labelled.sum())
    results["num_attributes"] = len(names)
    return results


# A head whose top-1 is one value for this share of the images, while the
# labels are more varied than that, has collapsed.
COLLAPSE_SHARE = 0.95


def _entropy_bits(counts):
    p = np.asarray(counts, np.float64)
    p = p[p > 0] / p.sum()
    return float(-(p * np.log2(p)).sum()) if p.size else math.nan


def prediction_spread(probs, labels, attribute_names=None,
                      collapse_share=COLLAPSE_SHARE):
    """How varied each softmax head's top-1 predictions are.

    A model that predicts the same value for every image can still score a
    fair mAP_cls on a skewed test set; this says so. Counted over each
    attribute's labelled images, so that both histograms cover the same
    images.

    Args:
        probs: dict attribute name -> ``[N, K_a]`` scores.
        labels: dict attribute name -> ``[N]`` labels (-1 = missing).
        attribute_names: which attributes; default: the keys of ``probs``.
        collapse_share: the top prediction's share that flags a collapse.

    Returns:
        Dict name -> ``{"prediction_entropy", "label_entropy"`` (bits),
        ``"top_prediction"`` (value index), ``"top_prediction_share"``,
        ``"top_label_share"``, ``"collapsed"``}``. ``collapsed``: the top
        prediction covers at least ``collapse_share`` of the images while
        the most frequent label covers less. Attributes without a labelled
        image are left out.
    """
    names = tuple(probs) if attribute_names is None else tuple(attribute_names)
    out = {}
    for a in names:
        p = _check_probs(probs[a], a)
        y = _check_labels(labels[a], p.shape[0], p.shape[1], a)
        known = y != MISSING
        if not known.any():
            continue
        k = p.shape[1]
        predicted = np.bincount(np.argmax(p[known], axis=1), minlength=k)
        truth = np.bincount(y[known], minlength=k)
        n = int(known.sum())
        top_share = float(predicted.max() / n)
        label_share = float(truth.max() / n)
        out[a] = {
            "prediction_entropy": _entropy_bits(predicted),
            "label_entropy": _entropy_bits(truth),
            "top_prediction": int(np.argmax(predicted)),
            "top_prediction_share": top_share,
            "top_label_share": label_share,
            "collapsed": bool(top_share >= collapse_share
                              and label_share < collapse_share),
        }
    return out


def multilabel_ap(scores, targets):
    """Per-attribute AP for binary (multi-label) attributes.

    Args:
        scores: ``[N, A]`` scores.
        targets: ``[N, A]`` with 1 = positive, 0 = negative, -1 = unknown
            (the project's coding; DeepFashion's 1 / -1 / 0 files are
            converted on reading). Unknown entries are left out of that
            attribute's ranking.

    Returns:
        ``(mean AP over attributes with a positive, [A] per-attribute AP with
        NaN where an attribute has no positive)``.
    """
    scores, targets = _check_multilabel(scores, targets)
    per = np.array(
        [
            average_precision(
                scores[targets[:, j] != MISSING, j],
                targets[targets[:, j] != MISSING, j] == 1,
            )
            for j in range(scores.shape[1])
        ]
    )
    return _nanmean(per), per


def _check_multilabel(scores, targets):
    scores = _check_scores(scores)
    targets = np.asarray(targets)
    if scores.ndim != 2 or scores.shape != targets.shape:
        raise ValueError(
            "`scores` and `targets` must both be [N, A]. Received: "
            f"scores.shape={scores.shape}, targets.shape={targets.shape}"
        )
    bad = ~np.isin(targets, (1, 0, MISSING))
    if np.any(bad):
        raise ValueError(
            "`targets` must be 1 (positive), 0 (negative) or -1 (unknown). "
            f"Received: value(s) {sorted(set(targets[bad].tolist()))[:5]}"
        )
    return scores, targets.astype(np.int64)


def topk_recall(scores, targets, k):
    """DeepFashion's top-k recall rate for multi-label attributes.

    Our exact definition, following the DeepFashion benchmark (Liu et al.,
    CVPR 2016: "ranking the classification scores and determining how many
    attributes have been matched in the top-k list"): for every image rank all
    ``A`` attributes by score and keep the first ``k`` (ties broken by the
    lower attribute index, so exactly ``k`` are kept). For attribute ``j``,
    ``recall_j = #{positive images of j with j in their top-k} /
    #{positive images of j}``. The reported value is the mean of ``recall_j``
    over the attributes with at least one positive image. Negatives and
    unknowns (0 / -1) play no role. Per-group numbers (texture, fabric, ...)
    are means of ``per_attribute`` over the group's indices. (Some public
    code, e.g. mmfashion, instead averages only the 50 best attributes; we
    do not.)

    Args:
        scores: ``[N, A]`` scores.
        targets: ``[N, A]`` with 1 = positive, 0 = negative, -1 = unknown.
        k: how many attributes each image predicts, ``1 <= k <= A``.

    Returns:
        ``(mean recall, [A] per-attribute recall with NaN for attributes with
        no positive)``.
    """
    scores, targets = _check_multilabel(scores, targets)
    num_attributes = scores.shape[1]
    if not isinstance(k, (int, np.integer)) or not 1 <= k <= num_attributes:
        raise ValueError(
            f"`k` must be an integer in [1, {num_attributes}]. Received: k={k}"
        )
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    in_top = np.zeros(scores.shape, dtype=bool)
    np.put_along_axis(in_top, top, True, axis=1)
    positive = targets == 1
    num_pos = positive.sum(axis=0)
    found = (in_top & positive).sum(axis=0)
    per = np.full(num_attributes, np.nan)
    has = num_pos > 0
    per[has] = found[has] / num_pos[has]
    return _nanmean(per), per


def summary_percent(results, attribute_names=None):
    """The paper's table row as ``{column: percentage}`` (NaN kept)."""
    names = (
        tuple(results["ap"]) if attribute_names is None else attribute_names
    )
    row = {a: 100.0 * results["ap"][a] for a in names}
    for key in ("mAP_cls", "mP_ins", "mR_ins"):
        row[key] = 100.0 * results[key]
    return row


def _pretty(name):
    return name.replace("_", " ").capitalize()


def format_table(results, attribute_names=None, title=None, row_name="model"):
    """Formats results as the paper's table, in Markdown.

    One column per attribute (its class-level AP), then mAP_cls, mP_ins and
    mR_ins, as percentages with 2 decimals ("n/a" for NaN).

    Args:
        results: one ``evaluate_predictions`` result, or a dict of row name ->
            result (one table row each, in order).
        attribute_names: column order; defaults to the first result's order.
        title: optional caption, written as a bold line above the table.
        row_name: the row label when ``results`` is a single result.

    Returns:
        The Markdown table as a string (ending with a newline).
    """
    rows = {row_name: results} if "mAP_cls" in results else dict(results)
    if not rows:
        raise ValueError("`results` holds no row.")
    if attribute_names is None:
        attribute_names = tuple(next(iter(rows.values()))["ap"])
    columns = [_pretty(a) for a in attribute_names]
    columns += ["mAP_cls", "mP_ins", "mR_ins"]
    lines = []
    if title:
        lines += [f"**{title}**", ""]
    lines.append("| Method | " + " | ".join(columns) + " |")
    lines.append("|---" * (len(columns) + 1) + "|")
    for name, result in rows.items():
        values = summary_percent(result, attribute_names).values()
        cells = ["n/a" if math.isnan(v) else f"{v:.2f}" for v in values]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
