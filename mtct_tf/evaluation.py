"""Evaluation: predict a split, score it with the paper's metrics, report.

``evaluate(model_dir, split, domain)`` loads the final model of a training
run, scores every labelled image of the split and domain, and writes
``<model_dir>/eval/<domain>_<split>.{json,md,png}``.

Softmax attributes get the paper's metrics (``metrics.evaluate_predictions``).
Multilabel attributes (groups of binary attributes, e.g. DeepFashion's five
attribute types) get DeepFashion's: top-k recall over *all* multilabel
attributes ranked together, then per group the mean recall of its
attributes (``evaluate_multilabel``), under ``results["multilabel"]``.
"""

import math
import os
import sys

import numpy as np

from mtct_tf import attributes as attributes_lib
from mtct_tf import fileio
from mtct_tf import metrics as metrics_lib
from mtct_tf import retrieval, runs
from mtct_tf import stages as stages_lib
from mtct_tf.data import pipeline, shards

# DeepFashion reports top-3 and top-5 recall (attributes) and accuracy
# (category).
TOP_K = (3, 5)


def predict(net, dataset):
    """Runs ``net`` over ``dataset`` of (images, labels[, meta]).

    Returns:
        ``(probs, labels, meta)``: dicts attribute -> stacked arrays, and
        meta -> list of strings when the dataset carries it.
    """
    names = tuple(net.num_values)
    probs = {a: [] for a in names}
    labels = {a: [] for a in names}
    meta = {}
    for batch in dataset:
        out = net.predict_on_batch(batch[0])
        for a in names:
            probs[a].append(np.asarray(out[a]))
            labels[a].append(np.asarray(batch[1][a]))
        if len(batch) > 2:
            for k, v in batch[2].items():
                meta.setdefault(k, []).extend(
                    x.decode() for x in np.asarray(v))
    if not probs[names[0]]:
        raise ValueError("the dataset to evaluate is empty")
    return ({a: np.concatenate(v) for a, v in probs.items()},
            {a: np.concatenate(v) for a, v in labels.items()}, meta)


def chance_map(labels):
    """mAP_cls of a predictor that ignores the image.

    The AP of a random ranking equals the value's prevalence among the
    labelled images, so an attribute's chance AP is the mean prevalence over
    its values that have a positive: 1 / (number of such values).
    """
    per = []
    for y in labels.values():
        y = np.asarray(y)
        present = np.unique(y[y >= 0])
        if len(present):
            per.append(1.0 / len(present))
    return float(np.mean(per)) if per else math.nan


def topk_accuracy(probs, labels, k):
    """Fraction of labelled images whose label is among the top-k scores."""
    probs, labels = np.asarray(probs), np.asarray(labels).reshape(-1)
    known = labels != attributes_lib.MISSING
    if not known.any():
        return math.nan
    k = min(k, probs.shape[1])
    top = np.argsort(-probs[known], axis=1, kind="stable")[:, :k]
    return float(np.mean(np.any(top == labels[known, None], axis=1)))


def evaluate_multilabel(probs, labels, names, softmax_names=(), ks=TOP_K):
    """DeepFashion's metrics for multilabel attribute groups.

    The scores of every group in ``names`` are concatenated to ``[N, A]``
    and ranked together per image, as DeepFashion ranks its 1,000
    attributes (``metrics.topk_recall``); a group's top-k recall is the mean
    recall of its attributes in that joint ranking. ``k`` larger than ``A``
    is clipped to ``A``.

    Args:
        probs: dict attribute -> ``[N, A_g]`` sigmoid scores (and ``[N, K]``
            for the ``softmax_names``).
        labels: dict attribute -> ``[N, A_g]`` of 1 / 0 / -1 (``[N]`` codes
            for softmax attributes).
        names: the multilabel attributes, in schema order.
        softmax_names: softmax attributes whose top-k accuracy is reported
            too (DeepFashion's category top-3 / top-5).
        ks: the k values.

    Returns:
        Dict with ``"topk_recall"`` (str(k) -> mean recall over all
        attributes with a positive), ``"mAP"`` (mean AP over the same
        attributes), ``"groups"`` (group -> ``top<k>_recall``, ``ap``,
        ``num_positive``, ``num_known``), ``"softmax_topk_accuracy"``
        (attribute -> str(k) -> accuracy), ``"num_attributes"`` and
        ``"num_images"``.
    """
    scores = np.concatenate([np.asarray(probs[a]) for a in names], axis=1)
    targets = np.concatenate([np.asarray(labels[a]) for a in names], axis=1)
    spans, start = {}, 0
    for a in names:
        width = np.asarray(probs[a]).shape[1]
        spans[a] = slice(start, start + width)
        start += width
    out = {"num_images": int(scores.shape[0]),
           "num_attributes": int(scores.shape[1]), "topk_recall": {},
           "groups": {a: {} for a in names}}
    for k in ks:
        mean, per = metrics_lib.topk_recall(scores, targets,
                                            min(k, scores.shape[1]))
        out["topk_recall"][str(k)] = mean
        for a in names:
            part = per[spans[a]]
            out["groups"][a][f"top{k}_recall"] = (
                math.nan if np.all(np.isnan(part))
                else float(np.nanmean(part)))
    out["mAP"], _ = metrics_lib.multilabel_ap(scores, targets)
    for a in names:
        t = targets[:, spans[a]]
        g = out["groups"][a]
        g["ap"], _ = metrics_lib.multilabel_ap(scores[:, spans[a]], t)
        g["num_positive"] = int(np.sum(t == 1))
        g["num_known"] = int(np.sum(t != attributes_lib.MISSING))
    out["softmax_topk_accuracy"] = {
        a: {str(k): topk_accuracy(probs[a], labels[a], k) for k in ks}
        for a in softmax_names}
    return out


def _pct(value):
    return "n/a" if value is None or math.isnan(value) else \
        f"{100 * value:.2f}"


def multilabel_table(ml):
    """``evaluate_multilabel``'s result as a Markdown table (percentages)."""
    ks = list(ml["topk_recall"])
    lines = ["| Group | " + " | ".join(f"top-{k} recall" for k in ks)
             + " | mAP | positives |", "|---" * (len(ks) + 3) + "|"]
    for name, g in ml["groups"].items():
        cells = [_pct(g[f"top{k}_recall"]) for k in ks]
        lines.append(f"| {name} | " + " | ".join(cells)
                     + f" | {_pct(g['ap'])} | {g['num_positive']} |")
    cells = [_pct(ml["topk_recall"][k]) for k in ks]
    lines.append("| **all** | " + " | ".join(cells)
                 + f" | {_pct(ml['mAP'])} | |")
    for name, accs in ml["softmax_topk_accuracy"].items():
        lines.append("")
        lines.append(f"{name}: " + ", ".join(
            f"top-{k} accuracy {_pct(v)}" for k, v in accs.items()))
    return "\n".join(lines) + "\n"


def _empty_softmax_results(n):
    """The softmax part of the results when a schema has no softmax head."""
    nan = math.nan
    return {"ap": {}, "ap_per_value": {}, "top1": {}, "num_labelled": {},
            "mAP_cls": nan, "mean_top1": nan, "mP_ins": nan, "mR_ins": nan,
            "num_images": int(n), "num_images_labelled": 0,
            "num_attributes": 0, "chance_mAP_cls": nan}


def _bar_figure(names):
    """A figure with room for a bar group per name, its axes, positions."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(1.0 + 0.9 * len(names), 3.6))
    return fig, ax, np.arange(len(names))


def _save_bar_figure(fig, ax, names, path, title, legend_loc):
    """Labels a bar chart of percentages per name and saves it (PNG)."""
    ax.set_xticks(np.arange(len(names)),
                  [a.replace("_", "\n") for a in names], fontsize=8)
    ax.set_ylim(0, 100)
    ax.set_ylabel("%")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc=legend_loc)
    fig.tight_layout()
    fileio.save_figure(fig, path)


def multilabel_bar_chart(ml, path, title):
    """Per-group top-k recall as a grouped bar chart (PNG)."""
    names = list(ml["groups"])
    ks = list(ml["topk_recall"])
    fig, ax, x = _bar_figure(names)
    width = 0.8 / len(ks)
    for i, k in enumerate(ks):
        values = [100 * np.nan_to_num(ml["groups"][a][f"top{k}_recall"])
                  for a in names]
        ax.bar(x - 0.4 + width * (i + 0.5), values, width,
               label=f"top-{k} recall")
    _save_bar_figure(fig, ax, names, path, title, "upper right")


def _jsonable(results):
    out = {}
    for k, v in results.items():
        if isinstance(v, dict):
            out[k] = _jsonable(v)
        elif isinstance(v, np.ndarray):
            out[k] = [None if math.isnan(x) else float(x) for x in v]
        elif isinstance(v, float) and math.isnan(v):
            out[k] = None
        else:
            out[k] = v
    return out


def bar_chart(results, path, title):
    """Per-attribute AP and top-1 accuracy as a grouped bar chart (PNG)."""
    names = list(results["ap"])
    ap = [100 * results["ap"][a] for a in names]
    top1 = [100 * results["top1"][a] for a in names]
    fig, ax, x = _bar_figure(names)
    ax.bar(x - 0.2, ap, 0.4, label="class-level AP")
    ax.bar(x + 0.2, top1, 0.4, label="top-1 accuracy")
    ax.axhline(100 * results["mAP_cls"], color="k", lw=1, ls="--",
               label=f"mAP_cls {100 * results['mAP_cls']:.1f}")
    _save_bar_figure(fig, ax, names, path, title, "lower right")


def write_report(results, out_prefix, title, schema=None):
    """Writes ``<prefix>.json``, ``.md`` and ``.png``; returns the table.

    With ``schema``, the prediction spread (``results["spread"]``) is
    tabulated with value names.
    """
    os.makedirs(os.path.dirname(os.path.abspath(out_prefix)), exist_ok=True)
    if results["ap"]:
        table = metrics_lib.format_table(results, title=title)
        extra = (f"\nchance mAP_cls: {100 * results['chance_mAP_cls']:.2f}; "
                 f"mean top-1: {100 * results['mean_top1']:.2f}; "
                 f"images: {results['num_images']}\n"
                 "top-1 accuracy per attribute (labelled images): "
                 + ", ".join(f"{a} {100 * v:.1f}"
                             for a, v in results["top1"].items()
                             if not math.isnan(v)) + "\n")
    else:  # Multilabel heads only.
        table = f"**{title}**\n"
        extra = f"\nimages: {results['num_images']}\n"
    if results.get("retrieval"):
        extra += "\n" + retrieval.format_result(results["retrieval"]) + "\n"
    if results.get("retrieval_shop_gallery"):
        default = (" (this run's default gallery, `retrieval.gallery_stage`)"
                   if results.get("gallery_stage") == "shop" else "")
        extra += ("\nThe same queries, the gallery embedded by the shop "
                  f"stage's network{default}:\n\n" + retrieval.format_result(
                      results["retrieval_shop_gallery"]) + "\n")
    if schema is not None and results.get("spread"):
        extra += ("\nPrediction spread (top-1 over labelled images):\n\n"
                  + spread_table(results["spread"], schema))
    if "multilabel" in results:
        extra += ("\nMultilabel attributes (DeepFashion top-k recall):\n\n"
                  + multilabel_table(results["multilabel"]))
    fileio.write_json(out_prefix + ".json", _jsonable(results))
    fileio.write_text(out_prefix + ".md", table + extra)
    if results["ap"]:
        bar_chart(results, out_prefix + ".png", title)
    else:
        multilabel_bar_chart(results["multilabel"], out_prefix + ".png",
                             title)
    return table + extra


# Where street-test crops come from (``evaluate(box_source=...)``), and
# how tables name them.
BOX_SOURCES = ("gt", "detector", "none")
BOX_SOURCE_NAMES = {"gt": "annotated boxes", "detector": "detector crops",
                    "none": "whole photos"}


def evaluate(model_dir, *, split="test", domain="street", stage=None,
             shards_dir=None, batch_size=64, config=None, box_source=None):
    """Evaluates a run's final model (or ``stage``'s) on a split and domain.

    Args:
        model_dir: the training run's directory (holds ``config.yaml``).
        split: ``"train"``, ``"val"`` or ``"test"``.
        domain: ``"street"`` or ``"shop"``.
        stage: which stage's model; default: the method's last stage.
        shards_dir: shards to read; default: the config's (its street shards
            for the street domain).
        batch_size: images per prediction batch.
        config: an ``ExperimentConfig``; default: ``<model_dir>/config.yaml``.
        box_source: ``None`` (the crops training used: the config's street
            shards for the street domain), ``"gt"`` (the annotated box of
            each record of ``data.shards_dir``), ``"detector"`` (the
            detector's crops, ``data.street_shards_dir``) or ``"none"`` (the
            whole photo): what a deployed model sees is ``"detector"`` or
            ``"none"``, not ``"gt"``.

    Returns:
        The metrics dict of the softmax attributes (see
        ``metrics.evaluate_predictions``) plus ``chance_mAP_cls``, and with
        multilabel attributes ``"multilabel"`` (see ``evaluate_multilabel``);
        reports are written under ``<model_dir>/eval``.
    """
    if config is None:
        config = runs.load_config(model_dir)
    stage = stage or stages_lib.final_stage(config.method)
    if box_source not in (None,) + BOX_SOURCES:
        raise ValueError(f"box_source must be one of {BOX_SOURCES}. "
                         f"Received: box_source={box_source!r}")
    if box_source == "detector" and not config.data.street_shards_dir:
        raise ValueError(
            f"{model_dir}: its config has no data.street_shards_dir (the "
            "detector's crops), so there is nothing to evaluate with "
            "box_source='detector'")
    if shards_dir is None:
        if box_source in ("gt", "none"):
            shards_dir = config.data.shards_dir
        elif domain == "street":
            shards_dir = stages_lib.street_dir(config)
        else:
            shards_dir = config.data.shards_dir
    schema = shards.load_schema(shards_dir)
    net = runs.load_stage(model_dir, stage, schema, f"of {shards_dir}")
    ds = pipeline.make_dataset(
        shards.shard_files(shards_dir, split), schema,
        image_size=net.image_size, batch_size=batch_size, training=False,
        domain=domain, margin=config.data.margin, repeat=False,
        crop_to_bbox=box_source != "none")
    probs, labels, _ = predict(net, ds)
    softmax = [a.name for a in schema if a.kind == attributes_lib.SOFTMAX]
    multilabel = [a.name for a in schema
                  if a.kind == attributes_lib.MULTILABEL]
    if softmax:
        results = metrics_lib.evaluate_predictions(probs, labels, softmax)
        results["chance_mAP_cls"] = chance_map(
            {a: labels[a] for a in softmax})
        results["spread"] = metrics_lib.prediction_spread(probs, labels,
                                                          softmax)
    else:
        results = _empty_softmax_results(len(labels[multilabel[0]]))
    if multilabel:
        results["multilabel"] = evaluate_multilabel(
            probs, labels, multilabel, softmax_names=softmax)
    results["model"] = os.path.join(model_dir, stage)
    if domain == "street":
        crop = box_source != "none"
        results["retrieval"] = _street_to_shop(
            net, config, shards_dir, split, crop_to_bbox=crop)
        if stage != "shop" and runs.is_done(model_dir, "shop"):
            # The gallery through the shop stage's network f_s, the one the
            # cross-domain loss pulls street embeddings towards.
            shop_net = runs.load_stage(model_dir, "shop", schema,
                                       f"of {shards_dir}")
            results["retrieval_shop_gallery"] = _street_to_shop(
                net, config, shards_dir, split, crop_to_bbox=crop,
                gallery_net=shop_net)
            # Which of the two a user's ``retrieve index`` builds.
            results["gallery_stage"] = retrieval.gallery_stage(config)
    results["box_source"] = box_source or "training's"
    boxes = f", {BOX_SOURCE_NAMES[box_source]}" if box_source else ""
    title = (f"{config.method} ({stage} model) on {domain} {split}{boxes} "
             f"[{os.path.basename(os.path.normpath(model_dir))}]")
    prefix = os.path.join(model_dir, "eval", f"{stage}_{domain}_{split}"
                          + (f"_{box_source}" if box_source else ""))
    print(write_report(results, prefix, title, schema=schema))
    print(f"wrote {prefix}.json, .md and .png")
    for line in collapse_warnings(results.get("spread", {}), schema):
        print(line, file=sys.stderr)
    return results


def _street_to_shop(net, config, street_shards, split, *, crop_to_bbox,
                    gallery_net=None):
    """Retrieval top-k of the split's street images among its shop images,
    the queries embedded by ``net``, the gallery by ``gallery_net``
    (default ``net``).

    ``None`` when the split has no shop image (nothing to retrieve).
    """
    def embedder(model, name):
        return retrieval.Embedder(
            lambda x: model.predict_on_batch(x)["embedding"],
            model.image_size, config.data.margin, name)

    try:
        return retrieval.evaluate_retrieval(
            embedder(net, "model"), config.data.shards_dir, split=split,
            street_shards_dir=street_shards, progress=False,
            query_crop_to_bbox=crop_to_bbox,
            gallery_embedder=(None if gallery_net is None
                              else embedder(gallery_net, "shop model")))
    except ValueError:  # No shop (or street) image in the split.
        return None


def collapse_warnings(spread, schema):
    """One loud line per head that predicts (nearly) one value for all."""
    lines = []
    for a, s in spread.items():
        if s["collapsed"]:
            value = schema[a].values[s["top_prediction"]]
            lines.append(
                f"WARNING: the {a!r} head predicts {value!r} for "
                f"{100 * s['top_prediction_share']:.0f}% of the labelled "
                f"images (the most frequent label covers "
                f"{100 * s['top_label_share']:.0f}%): it has collapsed to "
                "one value; its AP says little. Train longer, rebalance, or "
                "check its labels.")
    return lines


def spread_table(spread, schema):
    """``prediction_spread`` as a Markdown table."""
    lines = ["| attribute | prediction entropy (bits) | label entropy (bits) "
             "| most frequent prediction | its share | top label share "
             "| collapsed |", "|---|---|---|---|---|---|---|"]
    for a, s in spread.items():
        lines.append(
            f"| {a} | {s['prediction_entropy']:.2f} | "
            f"{s['label_entropy']:.2f} | "
            f"{schema[a].values[s['top_prediction']]} | "
            f"{100 * s['top_prediction_share']:.0f}% | "
            f"{100 * s['top_label_share']:.0f}% | "
            f"{'**yes**' if s['collapsed'] else 'no'} |")
    return "\n".join(lines) + "\n"
