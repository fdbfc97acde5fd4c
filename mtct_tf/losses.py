"""Masked multi-task attribute losses and cross-domain embedding losses.

Every loss is a pure function in ``keras.ops`` (backend-neutral) that
returns one value per sample or per triplet, its docstring carrying the
formula. The training step (``transfer.MTNTrainer``) composes them: it
takes the masked mean of each attribute with ``multitask_loss``, adds the
cross-domain term of ``cross_domain_loss``, and under a tf.distribute
strategy turns the replica's means into shares of the global-batch means
with ``global_shares`` (the counts come from ``distribute.global_counts``).
There are no ``keras.losses.Loss`` wrappers: nothing compiles these losses
into a plain ``Model.fit``, and a masked mean over the global batch needs
the label counts, which a Keras loss does not see.

Label coding (see ``mtct_tf.attributes``):
- softmax attributes: ``y_true`` int ``[B]`` (or ``[B, 1]``) in ``[0, K)``,
  ``-1`` = missing;
- multi-label (binary) attributes: ``y_true`` ``[B, A]`` with ``1`` =
  positive, ``0`` = negative, ``-1`` = unknown. The project codes a missing
  label as -1 everywhere, so DeepFashion's ``1 / -1 / 0(unknown)`` files are
  re-coded to ``1 / 0 / -1`` when read.

Cross-domain losses act on embeddings of a triplet (SPEC §4): anchor
``a = f_t(I_i)`` (street image through the street network), positive
``p = f_s(I_p)`` (the shop image of the same item through the shop network)
and a negative item ``I_n`` seen as ``n_s = f_s(I_n)`` and ``n_t = f_t(I_n)``.
Each loss is tested against NumPy in tests/test_losses.py.
"""

from keras import ops

from mtct_tf import distribute
from mtct_tf.attributes import MULTILABEL, SOFTMAX
from mtct_tf.configs import CROSS_DOMAIN_KINDS

DEFAULT_MARGINS = {"contrastive": 1.0, "triplet": 0.2}
# Embeddings are divided by max(||x||, 1e-6) (tf.math.l2_normalize's floor
# of 1e-12 on the squared norm): a zero embedding stays zero, with finite
# gradients.
_NORM_FLOOR = 1e-6
# sqrt has an infinite derivative at 0: distances are taken of at least
# this squared distance.
_SQ_DIST_FLOOR = 1e-12


# === Masked attribute losses ===


def _labels_1d(y_true, y_pred):
    """Casts labels to int32 and drops a trailing unit axis (``[B, 1]``)."""
    y_true = ops.convert_to_tensor(y_true)
    if len(y_true.shape) == len(y_pred.shape):
        y_true = ops.squeeze(y_true, axis=-1)
    return ops.cast(y_true, "int32")


def masked_sparse_categorical_crossentropy(y_true, y_pred, from_logits=False,
                                           label_smoothing=0.0):
    """Per-sample softmax cross-entropy, 0 where the label is missing.

    ``l_b = -log softmax(y_pred_b)[y_b]`` (or ``-log p_b[y_b]`` from
    probabilities) when ``y_b >= 0``, else ``0``. A missing sample contributes
    neither loss nor gradient (its label is replaced by a valid dummy before
    the cross-entropy so no NaN can leak through ``where``). With label
    smoothing ``e`` the target is ``(1 - e) onehot(y_b) + e / K``:
    ``l_b = (1 - e) (-log p_b[y_b]) + e mean_k(-log p_b[k])``.

    Args:
        y_true: int ``[B]`` or ``[B, 1]``, ``-1`` = missing.
        y_pred: ``[B, K]`` probabilities, or logits with ``from_logits=True``.
        from_logits: whether ``y_pred`` holds logits.
        label_smoothing: ``e`` in [0, 1).

    Returns:
        ``[B]`` per-sample losses.
    """
    y_pred = ops.convert_to_tensor(y_pred)
    labels = _labels_1d(y_true, y_pred)
    known = labels >= 0
    safe = ops.where(known, labels, ops.zeros_like(labels))
    if label_smoothing:
        k = y_pred.shape[-1]
        target = (ops.one_hot(safe, k, dtype=y_pred.dtype)
                  * (1.0 - label_smoothing) + label_smoothing / k)
        ce = ops.categorical_crossentropy(target, y_pred,
                                          from_logits=from_logits)
    else:
        ce = ops.sparse_categorical_crossentropy(
            safe, y_pred, from_logits=from_logits
        )
    return ops.where(known, ce, ops.zeros_like(ce))


def _masked_bce_elements(y_true, y_pred, from_logits):
    y_pred = ops.convert_to_tensor(y_pred)
    y_true = ops.cast(ops.convert_to_tensor(y_true), y_pred.dtype)
    known = y_true >= 0
    safe = ops.where(known, y_true, ops.zeros_like(y_true))
    bce = ops.binary_crossentropy(safe, y_pred, from_logits=from_logits)
    bce = ops.where(known, bce, ops.zeros_like(bce))
    return bce, ops.cast(known, y_pred.dtype)


# === Masked means over the replicas of a tf.distribute strategy ===


def label_count(labels):
    """Labelled entries of a label tensor (-1 = missing), as float32.

    The count ``multitask_loss`` divides by: labelled samples of a softmax
    attribute, known entries of a multi-label one.
    """
    return ops.sum(ops.cast(ops.convert_to_tensor(labels) >= 0, "float32"))


def global_shares(means, local, total):
    """Turns replica-local masked means into shares of the global means.

    ``mean_r * max(n_r, 1) / max(N, 1)``, with ``n_r`` the replica's count
    (``local``) and ``N`` its sum over replicas (``total``, from
    ``distribute.global_counts``): the shares add up over replicas to
    ``sum of values / N``, the mean over the global batch. The factor is a
    constant for the gradient. With one replica the means are returned
    unchanged.

    Args:
        means: the replica's masked means (scalars), in ``local``'s order.
        local: float32 [M], the replica's count behind each mean.
        total: float32 [M], the counts summed over the replicas.

    Returns:
        A list of the means' shares.
    """
    if distribute.num_replicas() == 1:
        return list(means)
    factors = ops.maximum(local, 1.0) / ops.maximum(total, 1.0)
    return [m * ops.cast(factors[i], m.dtype) for i, m in enumerate(means)]


def _infer_kind(y_true, y_pred):
    y_true = ops.convert_to_tensor(y_true)
    if (
        len(y_true.shape) == len(y_pred.shape)
        and y_true.shape[-1] == y_pred.shape[-1]
        and y_pred.shape[-1] != 1
    ):
        return MULTILABEL
    return SOFTMAX


def multitask_loss(y_true, y_pred, weights=None, from_logits=False, kinds=None,
                   label_smoothing=0.0):
    """Weighted sum of per-attribute masked losses (stage 1 and 2).

    ``total = sum_a w_a * L_a`` where ``L_a`` is the masked mean of attribute
    ``a`` over the batch (softmax cross-entropy over its labelled samples, or
    binary cross-entropy over its known binary labels), ``w_a`` defaults to 1.
    An attribute with no label in the batch contributes 0. The means are
    local to the caller's batch; under tf.distribute, ``MTNTrainer`` turns
    them into shares of the global-batch means with
    ``distribute.global_counts`` and ``global_shares``.

    Args:
        y_true: dict attribute -> labels (see the module docstring).
        y_pred: dict attribute -> predictions; its keys name the attributes.
        weights: optional dict attribute -> weight (absent = 1.0).
        from_logits: whether predictions are logits.
        kinds: optional dict attribute -> ``"softmax"`` / ``"multilabel"``;
            by default ``[B, A]`` labels of the prediction's shape are
            multi-label and anything else is softmax.
        label_smoothing: of the softmax attributes' targets
            (``masked_sparse_categorical_crossentropy``).

    Returns:
        ``(total, per_attribute)``: a scalar and a dict attribute -> scalar
        (unweighted).

    Raises:
        KeyError: ``y_true`` lacks an attribute of ``y_pred``.
        ValueError: ``weights`` or ``kinds`` name an unknown attribute, or a
            kind is not one of the two.
    """
    weights = dict(weights or {})
    kinds = dict(kinds or {})
    for what, d in (("weights", weights), ("kinds", kinds)):
        unknown = sorted(set(d) - set(y_pred))
        if unknown:
            raise ValueError(
                f"`{what}` names attributes that are not predicted: "
                f"{unknown}. Received: {what} keys={sorted(d)}"
            )
    absent = [a for a in y_pred if a not in y_true]
    if absent:
        raise KeyError(f"`y_true` has no labels for attribute(s) {absent}")
    per_attribute = {}
    total = None
    for name, pred in y_pred.items():
        pred = ops.convert_to_tensor(pred)
        kind = kinds.get(name) or _infer_kind(y_true[name], pred)
        if kind == SOFTMAX:
            labels = _labels_1d(y_true[name], pred)
            values = masked_sparse_categorical_crossentropy(
                labels, pred, from_logits=from_logits,
                label_smoothing=label_smoothing,
            )
            count = ops.sum(ops.cast(labels >= 0, values.dtype))
        elif kind == MULTILABEL:
            values, known = _masked_bce_elements(
                y_true[name], pred, from_logits
            )
            count = ops.sum(known)
        else:
            raise ValueError(
                f"Attribute kinds are {SOFTMAX!r} or {MULTILABEL!r}. "
                f"Received: kinds[{name!r}]={kind!r}"
            )
        loss = ops.sum(values) / ops.maximum(count, 1.0)
        per_attribute[name] = loss
        weighted = loss * weights.get(name, 1.0)
        total = weighted if total is None else total + weighted
    if total is None:
        raise ValueError("`y_pred` holds no attribute.")
    return total, per_attribute


# === Cross-domain embedding losses ===


def squared_distance(x, y):
    """``||x - y||^2`` along the last axis: ``[B, D], [B, D] -> [B]``."""
    return ops.sum(ops.square(x - y), axis=-1)


def default_beta(alpha):
    """Canonical t-STE exponent ``-(alpha + 1) / 2`` (Student-t, alpha dof)."""
    return -(alpha + 1.0) / 2.0


def _check_alpha_beta(alpha, beta, negative_only):
    if not alpha > 0:
        raise ValueError(
            f"`alpha` (degrees of freedom) must be > 0. Received: alpha={alpha}"
        )
    beta = default_beta(alpha) if beta is None else float(beta)
    if negative_only and not beta < 0:
        raise ValueError(
            "The canonical t-STE needs a kernel that decreases with "
            f"distance, i.e. beta < 0. Received: beta={beta}"
        )
    if beta == 0:
        raise ValueError(
            "`beta` = 0 makes the kernel constant (no learning signal). "
            f"Received: beta={beta}"
        )
    return float(alpha), beta


def _log_kernel(sq_dist, alpha, beta):
    # log K = beta * log(1 + d / alpha): log1p keeps small distances exact and
    # working in the log domain avoids under/overflow of K for large |beta|.
    return beta * ops.log1p(sq_dist / alpha)


def _prepare(normalize, *embeddings):
    embeddings = [
        None if e is None else ops.convert_to_tensor(e) for e in embeddings
    ]
    shapes = {tuple(e.shape) for e in embeddings if e is not None}
    ranks = {len(s) for s in shapes}
    if ranks != {2}:
        raise ValueError(
            "Triplet embeddings must all be [B, D]. Received shapes: "
            f"{[None if e is None else tuple(e.shape) for e in embeddings]}"
        )
    if normalize:
        embeddings = [
            None if e is None else ops.normalize(e, axis=-1,
                                                 epsilon=_NORM_FLOOR)
            for e in embeddings
        ]
    return embeddings


def _need_street(neg_street, why):
    if neg_street is None:
        raise ValueError(
            f"{why} needs `neg_street` = f_t(I_n). Received: neg_street=None"
        )


def tste_poster_loss(
    anchor, positive, neg_shop, neg_street, alpha=1.0, beta=None,
    normalize=True,
):
    """The poster's cross-domain t-STE loss, per triplet.

    Poster: ``log [K(a, p) / (K(a, n_s) + K(a, n_t))]`` with
    ``K(x, y) = (1 + ||x - y||^2 / alpha) ** beta``.

    Sign convention: the returned value is the quantity to *minimise*, and it
    must fall as the anchor approaches the positive and leaves the negatives.
    With ``beta < 0`` (default ``-(alpha + 1) / 2``) ``K`` decreases with
    distance, so that quantity is ``-log ratio``; with ``beta > 0`` ``K``
    grows with distance and the poster's ``+log ratio`` is already right. In
    general::

        loss = sign(beta) * log [K(a, p) / (K(a, n_s) + K(a, n_t))]

    Boundedness: the ratio has no positive term in its denominator, so with
    ``beta < 0`` the loss tends to ``-inf`` as the negatives move away
    (``K(a, n) -> 0``); training could then spread embeddings without bound
    instead of matching items. With ``normalize=True`` (default) embeddings
    are L2-normalised, squared distances lie in ``[0, 4]``, and with
    ``L = |beta| * log(1 + 4 / alpha)`` the loss lies in
    ``[log 2 - L, log 2 + L]`` for ``beta < 0`` and in
    ``[-log 2 - L, -log 2 + L]`` for ``beta > 0``. It may be negative.

    Args:
        anchor, positive, neg_shop, neg_street: ``[B, D]`` embeddings
            ``f_t(I_i)``, ``f_s(I_p)``, ``f_s(I_n)``, ``f_t(I_n)``.
        alpha: degrees of freedom, > 0.
        beta: kernel exponent, non-zero; ``None`` = ``-(alpha + 1) / 2``.
        normalize: L2-normalise the embeddings first.

    Returns:
        ``[B]`` per-triplet losses.
    """
    _need_street(neg_street, "The poster t-STE")
    alpha, beta = _check_alpha_beta(alpha, beta, negative_only=False)
    a, p, ns, nt = _prepare(normalize, anchor, positive, neg_shop, neg_street)
    log_pos = _log_kernel(squared_distance(a, p), alpha, beta)
    log_neg = ops.logaddexp(
        _log_kernel(squared_distance(a, ns), alpha, beta),
        _log_kernel(squared_distance(a, nt), alpha, beta),
    )
    sign = 1.0 if beta > 0 else -1.0
    return sign * (log_pos - log_neg)


def tste_canonical_loss(
    anchor, positive, neg_shop, neg_street=None, alpha=1.0, beta=None,
    normalize=True, include_street_negative=False,
):
    """Canonical t-STE (van der Maaten & Weinberger, 2012), per triplet.

    ``p = K(a, p) / (K(a, p) + K(a, n_s))`` and ``loss = -log p``, with
    ``K`` the Student-t kernel and ``beta < 0`` (default
    ``-(alpha + 1) / 2``). The negative is the shop image through the shop
    network, as in the survey's reading; ``include_street_negative=True``
    adds ``K(a, n_t)`` to the denominator (the poster's extra term). The loss
    is always >= 0 and bounded above by ``log(1 + m) + |beta| log(1 + 4 /
    alpha)`` (``m`` negatives) with normalised embeddings.

    Args:
        anchor, positive, neg_shop: ``[B, D]`` ``f_t(I_i)``, ``f_s(I_p)``,
            ``f_s(I_n)``.
        neg_street: ``[B, D]`` ``f_t(I_n)``; used only with
            ``include_street_negative``.
        alpha: degrees of freedom, > 0.
        beta: kernel exponent, < 0; ``None`` = ``-(alpha + 1) / 2``.
        normalize: L2-normalise the embeddings first.
        include_street_negative: add the ``f_t(I_n)`` term.

    Returns:
        ``[B]`` per-triplet losses.
    """
    alpha, beta = _check_alpha_beta(alpha, beta, negative_only=True)
    if include_street_negative:
        _need_street(neg_street, "include_street_negative=True")
    else:
        neg_street = None
    a, p, ns, nt = _prepare(normalize, anchor, positive, neg_shop, neg_street)
    log_pos = _log_kernel(squared_distance(a, p), alpha, beta)
    log_den = ops.logaddexp(
        log_pos, _log_kernel(squared_distance(a, ns), alpha, beta)
    )
    if nt is not None:
        log_den = ops.logaddexp(
            log_den, _log_kernel(squared_distance(a, nt), alpha, beta)
        )
    return log_den - log_pos


def _distance(sq_dist):
    # The clamp gives a zero gradient at 0 instead of NaN.
    return ops.sqrt(ops.maximum(sq_dist, _SQ_DIST_FLOOR))


def _margin_triplet(margin, normalize, include_street_negative, anchor,
                    positive, neg_shop, neg_street):
    """Checks a margin loss's arguments: ``(a, p, [negatives])``, prepared."""
    if not margin > 0:
        raise ValueError(f"`margin` must be > 0. Received: margin={margin}")
    if include_street_negative:
        _need_street(neg_street, "include_street_negative=True")
    else:
        neg_street = None
    a, p, ns, nt = _prepare(normalize, anchor, positive, neg_shop, neg_street)
    return a, p, [n for n in (ns, nt) if n is not None]


def contrastive_loss(
    anchor, positive, neg_shop, neg_street=None, margin=1.0, normalize=True,
    include_street_negative=False,
):
    """Contrastive loss (Hadsell et al., 2006) on the triplet's pairs.

    ``loss = 0.5 * d(a, p)^2 + 0.5 * sum_n max(0, margin - d(a, n))^2`` with
    Euclidean ``d`` and ``n`` in ``{n_s}`` (plus ``n_t`` with
    ``include_street_negative``): the positive pair is pulled together, the
    negative pairs are pushed beyond ``margin``. Normalised distances lie in
    ``[0, 2]``.

    Returns:
        ``[B]`` per-triplet losses.
    """
    a, p, negatives = _margin_triplet(
        margin, normalize, include_street_negative, anchor, positive,
        neg_shop, neg_street)
    loss = 0.5 * squared_distance(a, p)
    for n in negatives:
        gap = ops.relu(margin - _distance(squared_distance(a, n)))
        loss = loss + 0.5 * ops.square(gap)
    return loss


def triplet_loss(
    anchor, positive, neg_shop, neg_street=None, margin=0.2, normalize=True,
    include_street_negative=False,
):
    """Triplet hinge loss (FaceNet, Schroff et al., 2015).

    ``loss = sum_n max(0, d(a, p)^2 - d(a, n)^2 + margin)`` on squared
    Euclidean distances (FaceNet's choice; normalised they lie in ``[0, 4]``)
    with ``n`` in ``{n_s}`` (plus ``n_t`` with ``include_street_negative``).

    Returns:
        ``[B]`` per-triplet losses.
    """
    a, p, negatives = _margin_triplet(
        margin, normalize, include_street_negative, anchor, positive,
        neg_shop, neg_street)
    d_pos = squared_distance(a, p)
    loss = None
    for n in negatives:
        hinge = ops.relu(d_pos - squared_distance(a, n) + margin)
        loss = hinge if loss is None else loss + hinge
    return loss


def coral_loss(street, shop, normalize=True):
    """Deep CORAL (Sun & Saenko 2016): the distance between the two
    domains' embedding covariances, over a batch.

    ``l = ||C_street - C_shop||_F^2 / (4 D^2)``, ``C = (X^T X - (1^T X)^T
    (1^T X) / n) / (n - 1)`` of the ``[n, D]`` embeddings of each domain
    through the same (street) network. A batch-level alignment term with no
    pairing: the domain-adaptation baseline DDAN of the protocol, which
    sees the same street and shop images as MTCT's triplets.

    Args:
        street: ``[B, D]`` street embeddings ``f_t(I_i)``.
        shop: ``[B, D]`` shop embeddings through the same network,
            ``f_t(I_n)``.
        normalize: L2-normalise the embeddings first.

    Returns:
        ``[B]``: the batch's loss in every entry (their mean is the loss).
    """
    street, shop = _prepare(normalize, street, shop)

    def covariance(x):
        n = ops.cast(ops.shape(x)[0], x.dtype)
        centred = x - ops.mean(x, axis=0, keepdims=True)
        return ops.matmul(ops.transpose(centred), centred) / ops.maximum(
            n - 1.0, 1.0)

    d = ops.cast(ops.shape(street)[1], street.dtype)
    gap = covariance(street) - covariance(shop)
    loss = ops.sum(gap * gap) / (4.0 * d * d)
    return ops.ones_like(street[:, 0]) * loss


def cross_domain_loss(
    kind, anchor, positive, neg_shop, neg_street=None, *, alpha=1.0,
    beta=None, margin=None, normalize=True, include_street_negative=False,
):
    """Per-triplet cross-domain loss, selected by name.

    Args:
        kind: ``"none"`` (zeros: no cross-domain term, e.g. the FTT
            ablation), ``"contrastive"``, ``"triplet"``, ``"tste_poster"``
            (both negatives, always), ``"tste_canonical"`` or ``"coral"``
            (``coral_loss`` of the anchors against ``neg_street``, the
            shop images through the street network: no pairs used).
        anchor, positive, neg_shop, neg_street: ``[B, D]`` embeddings
            ``f_t(I_i)``, ``f_s(I_p)``, ``f_s(I_n)``, ``f_t(I_n)``.
        alpha, beta: t-STE kernel parameters (t-STE kinds only).
        margin: contrastive / triplet margin; ``None`` = 1.0 / 0.2.
        normalize: L2-normalise embeddings first (keeps the poster form
            bounded; see ``tste_poster_loss``).
        include_street_negative: also use ``f_t(I_n)`` in the contrastive,
            triplet and canonical t-STE losses.

    Returns:
        ``[B]`` per-triplet losses (the poster sums them; ``MTNTrainer``
        averages, so the loss weight does not depend on the batch size).
    """
    if kind not in CROSS_DOMAIN_KINDS:
        raise ValueError(
            f"`kind` must be one of {CROSS_DOMAIN_KINDS}. Received: "
            f"kind={kind!r}"
        )
    if kind == "none":
        anchor = ops.convert_to_tensor(anchor)
        return ops.zeros_like(anchor[:, 0])
    if kind == "coral":
        _need_street(neg_street, "CORAL aligns the street network's "
                     "embeddings of both domains")
        return coral_loss(anchor, neg_street, normalize=normalize)
    if kind == "tste_poster":
        return tste_poster_loss(
            anchor, positive, neg_shop, neg_street, alpha=alpha, beta=beta,
            normalize=normalize,
        )
    if kind == "tste_canonical":
        return tste_canonical_loss(
            anchor, positive, neg_shop, neg_street, alpha=alpha, beta=beta,
            normalize=normalize,
            include_street_negative=include_street_negative,
        )
    fn = contrastive_loss if kind == "contrastive" else triplet_loss
    return fn(
        anchor, positive, neg_shop, neg_street,
        margin=DEFAULT_MARGINS[kind] if margin is None else margin,
        normalize=normalize, include_street_negative=include_street_negative,
    )
