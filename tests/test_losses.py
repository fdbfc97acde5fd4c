"""Tests of mtct_tf.losses against independent float64 NumPy computations."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from mtct_tf import losses

RTOL = 1e-5

# --- NumPy references (float64).


def np_log_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def np_sce(y, pred, from_logits):
    logp = np_log_softmax(pred) if from_logits else np.log(
        pred / pred.sum(-1, keepdims=True)
    )
    out = np.zeros(len(y))
    for b, label in enumerate(y):
        if label >= 0:
            out[b] = -logp[b, label]
    return out


def np_masked_mean_sce(y, pred, from_logits=False):
    known = np.asarray(y) >= 0
    return np_sce(y, pred, from_logits).sum() / max(known.sum(), 1)


def np_bce(y, pred, from_logits):
    p = 1 / (1 + np.exp(-pred)) if from_logits else pred
    known = y >= 0
    e = -(y * np.log(p) + (1 - y) * np.log(1 - p))
    return np.where(known, e, 0.0), known


def np_kernel(d, alpha, beta):
    return (1 + d / alpha) ** beta


def np_sq(x, y):
    return ((x - y) ** 2).sum(-1)


def np_norm(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def np_cross_domain(kind, a, p, ns, nt, alpha=1.0, beta=None, margin=None,
                    normalize=True, street=False):
    if normalize:
        a, p, ns, nt = (np_norm(v) for v in (a, p, ns, nt))
    beta = -(alpha + 1) / 2 if beta is None else beta
    kp = np_kernel(np_sq(a, p), alpha, beta)
    ks = np_kernel(np_sq(a, ns), alpha, beta)
    kt = np_kernel(np_sq(a, nt), alpha, beta)
    if kind == "none":
        return np.zeros(len(a))
    if kind == "tste_poster":
        return np.sign(beta) * np.log(kp / (ks + kt))
    if kind == "tste_canonical":
        return -np.log(kp / (kp + ks + (kt if street else 0)))
    negatives = (ns, nt) if street else (ns,)
    if kind == "contrastive":
        m = 1.0 if margin is None else margin
        out = 0.5 * np_sq(a, p)
        for n in negatives:
            out += 0.5 * np.maximum(0, m - np.sqrt(np_sq(a, n))) ** 2
        return out
    if kind == "triplet":
        m = 0.2 if margin is None else margin
        return sum(
            np.maximum(0, np_sq(a, p) - np_sq(a, n) + m) for n in negatives
        )
    raise AssertionError(kind)


def to_np(x):
    return keras.ops.convert_to_numpy(x)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


# --- Masked softmax cross-entropy.


@pytest.mark.parametrize("from_logits", [False, True])
def test_masked_sce_matches_numpy(rng, from_logits):
    y = np.array([2, -1, 0, 1, -1, 3])
    if from_logits:
        pred = rng.normal(size=(6, 4)) * 3
    else:
        pred = rng.dirichlet(np.ones(4), size=6) * 0.9 + 0.025
    got = losses.masked_sparse_categorical_crossentropy(
        y, pred, from_logits=from_logits
    )
    np.testing.assert_allclose(to_np(got), np_sce(y, pred, from_logits),
                               rtol=RTOL)
    assert to_np(got)[1] == 0.0 and to_np(got)[4] == 0.0


@pytest.mark.parametrize("from_logits", [False, True])
def test_label_smoothing_matches_numpy(rng, from_logits):
    y = np.array([2, -1, 0, 1, -1, 3])
    pred = (rng.normal(size=(6, 4)) * 3 if from_logits
            else rng.dirichlet(np.ones(4), size=6) * 0.9 + 0.025)
    probs = (np.exp(pred) / np.exp(pred).sum(1, keepdims=True)
             if from_logits else pred / pred.sum(1, keepdims=True))
    e = 0.1
    target = np.full((6, 4), e / 4)
    target[np.arange(6), np.maximum(y, 0)] += 1 - e
    expected = np.where(y >= 0, -(target * np.log(probs)).sum(1), 0.0)
    got = losses.masked_sparse_categorical_crossentropy(
        y, pred, from_logits=from_logits, label_smoothing=e)
    np.testing.assert_allclose(to_np(got), expected, rtol=RTOL)
    _, per = losses.multitask_loss({"a": y}, {"a": pred.astype("float32")},
                                   from_logits=from_logits,
                                   label_smoothing=e)
    assert float(per["a"]) == pytest.approx(expected.sum() / 4, rel=RTOL)
    # Smoothing raises the loss of a confident right answer.
    plain = to_np(losses.masked_sparse_categorical_crossentropy(
        y, pred, from_logits=from_logits))
    assert not np.allclose(plain, expected)


@pytest.mark.parametrize("from_logits", [False, True])
def test_multitask_masked_mean_is_over_labelled_samples(rng, from_logits):
    y = np.array([2, -1, 0, 1, -1, 3])
    if from_logits:
        pred = rng.normal(size=(6, 4)) * 3
    else:
        pred = rng.dirichlet(np.ones(4), size=6) * 0.9 + 0.025
    _, per = losses.multitask_loss({"a": y[:, None]},
                                   {"a": pred.astype("float32")},
                                   from_logits=from_logits)
    value = float(per["a"])
    # The mean over the 4 labelled samples, not diluted over all 6.
    assert value == pytest.approx(np_sce(y, pred, from_logits).sum() / 4,
                                  rel=RTOL)
    assert value != pytest.approx(np_sce(y, pred, from_logits).mean())


def test_multitask_gradient_matches_numpy(rng):
    # d L / d z_b = (softmax(z_b) - onehot(y_b)) / count for labelled rows,
    # 0 for missing rows.
    y = np.array([1, -1, 0, -1, 2])
    logits = rng.normal(size=(5, 3)).astype("float32")
    z = tf.Variable(logits)
    with tf.GradientTape() as tape:
        total, _ = losses.multitask_loss({"a": y}, {"a": z}, from_logits=True)
    grad = tape.gradient(total, z).numpy()
    soft = np.exp(np_log_softmax(logits.astype(np.float64)))
    want = np.zeros_like(soft)
    for b, label in enumerate(y):
        if label >= 0:
            want[b] = soft[b] - np.eye(3)[label]
    want /= 3
    np.testing.assert_allclose(grad, want, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("from_logits", [False, True])
def test_multitask_all_missing_gives_zero_and_finite_gradient(from_logits):
    init = np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]], "float32")
    if from_logits:
        init = init * 50.0  # Extreme logits must not leak NaN either.
    z, tags = tf.Variable(init), tf.Variable(init)
    y = {"a": np.array([-1, -1, -1]), "tags": -np.ones((3, 2))}
    with tf.GradientTape() as tape:
        total, _ = losses.multitask_loss(y, {"a": z, "tags": tags},
                                         from_logits=from_logits)
    grads = tape.gradient(total, [z, tags])
    assert float(total) == 0.0
    for grad in grads:
        assert np.all(np.isfinite(grad)) and np.all(grad.numpy() == 0)


def test_multitask_multilabel_probabilities_match_numpy(rng):
    y = np.array([[1, 0, -1, 1], [-1, -1, -1, -1], [0, 0, 1, -1]], "float64")
    pred = rng.uniform(0.05, 0.95, size=(3, 4))
    elems, known = np_bce(y, pred, False)
    _, per = losses.multitask_loss({"tags": y},
                                   {"tags": pred.astype("float32")})
    # Mean over the 6 known (image, attribute) pairs.
    assert float(per["tags"]) == pytest.approx(elems.sum() / 6, rel=RTOL)


# --- Multi-task loss.


def test_multitask_loss_matches_numpy(rng):
    y_true = {
        "colour": np.array([0, 2, -1, 1]),
        "pattern": np.array([[-1], [-1], [-1], [-1]]),
        "tags": np.array([[1, 0, -1], [0, -1, -1], [1, 1, 0], [-1, -1, 1]]),
    }
    y_pred = {
        "colour": rng.normal(size=(4, 3)),
        "pattern": rng.normal(size=(4, 2)),
        "tags": rng.normal(size=(4, 3)),
    }
    total, per = losses.multitask_loss(
        y_true, y_pred, weights={"colour": 2.0}, from_logits=True
    )
    want_colour = np_masked_mean_sce(y_true["colour"], y_pred["colour"], True)
    elems, known = np_bce(y_true["tags"], y_pred["tags"], True)
    want_tags = elems.sum() / known.sum()
    assert float(per["colour"]) == pytest.approx(want_colour, rel=RTOL)
    assert float(per["pattern"]) == 0.0
    assert float(per["tags"]) == pytest.approx(want_tags, rel=RTOL)
    assert float(total) == pytest.approx(2 * want_colour + want_tags,
                                         rel=RTOL)
    with pytest.raises(ValueError, match="not predicted"):
        losses.multitask_loss(y_true, y_pred, weights={"collar": 1.0})
    with pytest.raises(KeyError, match="colour"):
        losses.multitask_loss({"pattern": y_true["pattern"]}, y_pred)


# --- Cross-domain losses.

KINDS = losses.CROSS_DOMAIN_KINDS


def _triplets(rng, b=5, d=8):
    return [rng.normal(size=(b, d)) for _ in range(4)]


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize(
    "kind,kwargs",
    [
        ("none", {}),
        ("tste_poster", {}),
        ("tste_poster", {"alpha": 2.0, "beta": -0.7}),
        ("tste_poster", {"alpha": 0.5, "beta": 1.3}),
        ("tste_canonical", {}),
        ("tste_canonical", {"alpha": 3.0, "include_street_negative": True}),
        ("contrastive", {}),
        ("contrastive", {"margin": 2.5, "include_street_negative": True}),
        ("triplet", {}),
        ("triplet", {"margin": 1.0, "include_street_negative": True}),
    ],
)
def test_cross_domain_matches_numpy(rng, kind, kwargs, normalize):
    a, p, ns, nt = _triplets(rng)
    got = losses.cross_domain_loss(kind, a, p, ns, nt, normalize=normalize,
                                   **kwargs)
    kwargs = dict(kwargs)  # Shared between parametrizations: do not mutate.
    street = kwargs.pop("include_street_negative", False)
    want = np_cross_domain(kind, a, p, ns, nt, normalize=normalize,
                           street=street, **kwargs)
    assert to_np(got).shape == (5,)
    np.testing.assert_allclose(to_np(got), want, rtol=RTOL, atol=1e-12)
    if kind in ("triplet", "contrastive") and not normalize:
        assert np.any(want > 0)  # The hinges are active somewhere.


def _direction_geometry(rng, b=6, d=8, normalize=True):
    """Anchors with the positive on one side and both negatives opposite.

    p = a + u, n = a - u (+ small noise), u orthogonal to a: moving the anchor
    towards p shortens d(a, p) and lengthens both d(a, n), and conversely,
    in Euclidean and (for normalised embeddings) in angular terms.
    """
    a = np_norm(rng.normal(size=(b, d)))
    u = rng.normal(size=(b, d))
    u -= (u * a).sum(-1, keepdims=True) * a
    u = 0.6 * np_norm(u)
    noise = lambda: 0.05 * rng.normal(size=(b, d))  # noqa: E731
    p, ns, nt = a + u, a - u + noise(), a - 1.2 * u + noise()
    if not normalize:
        a, p, ns, nt = 3 * a, 3 * p, 3 * ns, 3 * nt
    return a, p, ns, nt


DIRECTION_KINDS = [
    ("tste_poster", {}),
    ("tste_poster", {"beta": 1.0}),
    ("tste_canonical", {}),
    ("tste_canonical", {"include_street_negative": True}),
    # Margins large enough for every hinge to be active.
    ("contrastive", {"margin": 10.0, "include_street_negative": True}),
    ("triplet", {"margin": 50.0, "include_street_negative": True}),
]


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("kind,kwargs", DIRECTION_KINDS)
def test_moving_anchor_to_positive_lowers_loss(rng, kind, kwargs, normalize):
    a, p, ns, nt = _direction_geometry(rng, normalize=normalize)

    def loss(anchor):
        return to_np(losses.cross_domain_loss(
            kind, anchor, p, ns, nt, normalize=normalize, **kwargs
        ))

    base = loss(a)
    for step in (0.01, 0.1):
        assert np.all(loss(a + step * (p - a)) < base)
        assert np.all(loss(a + step * (ns - a)) > base)
        assert np.all(loss(a + step * (nt - a)) > base) or not (
            kind == "tste_poster" or kwargs.get("include_street_negative")
        )


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("kind,kwargs", DIRECTION_KINDS)
def test_each_distance_moves_loss_the_right_way(rng, kind, kwargs, normalize):
    # Moving one embedding at a time changes one distance only.
    a, p, ns, nt = _triplets(rng, b=6)

    def loss(p_, ns_, nt_):
        return to_np(losses.cross_domain_loss(
            kind, a, p_, ns_, nt_, normalize=normalize, **kwargs
        ))

    base = loss(p, ns, nt)
    if normalize:
        # Normalised: move along the chord towards the anchor direction.
        towards = lambda x: x + 0.1 * (np_norm(a) * np.linalg.norm(  # noqa
            x, axis=-1, keepdims=True) - x)
    else:
        towards = lambda x: x + 0.1 * (a - x)  # noqa: E731
    assert np.all(loss(towards(p), ns, nt) < base)
    assert np.all(loss(p, towards(ns), nt) > base)
    uses_street = kind == "tste_poster" or kwargs.get(
        "include_street_negative"
    )
    if uses_street:
        assert np.all(loss(p, ns, towards(nt)) > base)
    else:
        np.testing.assert_array_equal(loss(p, ns, towards(nt)), base)


def test_poster_form_is_bounded_when_normalised(rng):
    # Negatives far away: unnormalised, -log ratio runs off to -infinity;
    # normalised it stays within [log 2 - L, log 2 + L], L = log(1 + 4/alpha).
    a, p, ns, nt = _triplets(rng)
    bound = np.log(5.0)
    far = [losses.cross_domain_loss("tste_poster", a, p, s * ns, s * nt,
                                    normalize=False) for s in (1e2, 1e4)]
    assert np.all(to_np(far[1]) < to_np(far[0]) - 5)
    for scale in (1.0, 1e2, 1e4):
        v = to_np(losses.cross_domain_loss(
            "tste_poster", a, p, scale * ns, scale * nt
        ))
        assert np.all(v >= np.log(2) - bound) and np.all(
            v <= np.log(2) + bound
        )
    # The extremes: a == p and both negatives antipodal -> log 2 - L;
    # a == both negatives and p antipodal -> log 2 + L.
    low = losses.cross_domain_loss("tste_poster", a, a, -a, -a)
    high = losses.cross_domain_loss("tste_poster", a, -a, a, a)
    np.testing.assert_allclose(to_np(low), np.log(2) - bound, rtol=RTOL)
    np.testing.assert_allclose(to_np(high), np.log(2) + bound, rtol=RTOL)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("normalize", [True, False])
def test_cross_domain_gradients_finite(rng, kind, normalize):
    a, p, ns, nt = _triplets(rng, b=4)
    # Degenerate rows: anchor equal to the positive, to a negative, zero.
    p[0] = a[0]
    ns[1] = a[1]
    a[2] = 0.0
    variables = [tf.Variable(x.astype("float32")) for x in (a, p, ns, nt)]
    with tf.GradientTape() as tape:
        value = keras.ops.mean(losses.cross_domain_loss(
            kind, *variables, normalize=normalize,
            include_street_negative=True,
        ))
    grads = tape.gradient(value, variables)
    assert np.isfinite(float(value))
    for g in grads:
        if g is not None:
            assert np.all(np.isfinite(g.numpy()))
    if kind != "none":
        assert grads[0] is not None and np.any(grads[0].numpy() != 0)


def test_cross_domain_argument_errors(rng):
    a, p, ns, nt = _triplets(rng)
    with pytest.raises(ValueError, match="kind"):
        losses.cross_domain_loss("tste", a, p, ns, nt)
    with pytest.raises(ValueError, match="neg_street"):
        losses.cross_domain_loss("tste_poster", a, p, ns)
    with pytest.raises(ValueError, match="beta < 0"):
        losses.cross_domain_loss("tste_canonical", a, p, ns, beta=1.0)
    with pytest.raises(ValueError, match="alpha"):
        losses.cross_domain_loss("tste_poster", a, p, ns, nt, alpha=0.0)
    with pytest.raises(ValueError, match="margin"):
        losses.cross_domain_loss("triplet", a, p, ns, margin=-1.0)
    with pytest.raises(ValueError, match=r"\[B, D\]"):
        losses.cross_domain_loss("triplet", a[0], p[0], ns[0])


def test_coral_matches_numpy(rng):
    street = rng.normal(size=(8, 5)) * 2 + 1
    shop = rng.normal(size=(8, 5))
    for normalize in (False, True):
        a, b = street, shop
        if normalize:
            a = a / np.linalg.norm(a, axis=1, keepdims=True)
            b = b / np.linalg.norm(b, axis=1, keepdims=True)
        gap = np.cov(a, rowvar=False) - np.cov(b, rowvar=False)
        expected = (gap ** 2).sum() / (4 * 5 ** 2)
        got = to_np(losses.cross_domain_loss(
            "coral", street, None, None, shop, normalize=normalize))
        np.testing.assert_allclose(got, np.full(8, expected), rtol=RTOL)
    # Same distribution: close to 0; it grows with the covariance gap.
    same = to_np(losses.coral_loss(street, street, normalize=False))
    assert np.allclose(same, 0.0, atol=1e-6)
    wider = to_np(losses.coral_loss(street * 3, shop, normalize=False))
    assert wider[0] > to_np(losses.coral_loss(street, shop,
                                              normalize=False))[0]
    with pytest.raises(ValueError, match="neg_street"):
        losses.cross_domain_loss("coral", street, None, None, None)
