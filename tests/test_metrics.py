"""Tests of mtct_tf.metrics against hand-worked and brute-force values."""

import math

import numpy as np
import pytest

from mtct_tf import metrics

# --- Brute-force references (explicit loops, straight from the definitions).


def brute_ap(scores, positives):
    """AP = mean over positives i of #{pos j: s_j >= s_i} / #{j: s_j >= s_i}."""
    pos = [i for i in range(len(scores)) if positives[i]]
    if not pos:
        return math.nan
    total = 0.0
    for i in pos:
        above = [j for j in range(len(scores)) if scores[j] >= scores[i]]
        total += sum(1 for j in above if positives[j]) / len(above)
    return total / len(pos)


def brute_ap_no_ties(scores, positives):
    """Textbook AP: walk the ranking, average precision at each positive."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    hits, precisions = 0, []
    for rank, i in enumerate(order, start=1):
        if positives[i]:
            hits += 1
            precisions.append(hits / rank)
    return sum(precisions) / len(precisions) if precisions else math.nan


def brute_evaluate(probs, labels, names):
    ap, top1 = {}, {}
    for a in names:
        n, k = probs[a].shape
        rows = [i for i in range(n) if labels[a][i] != -1]
        per_value = []
        for c in range(k):
            s = [probs[a][i, c] for i in rows]
            y = [labels[a][i] == c for i in rows]
            if any(y):
                per_value.append(brute_ap(s, y))
        ap[a] = sum(per_value) / len(per_value) if per_value else math.nan
        correct = [
            int(np.argmax(probs[a][i])) == labels[a][i] for i in rows
        ]
        top1[a] = sum(correct) / len(rows) if rows else math.nan
    precisions, recalls = [], []
    n = len(labels[names[0]])
    for i in range(n):
        known = [a for a in names if labels[a][i] != -1]
        if not known:
            continue
        hits = sum(
            1 for a in known if int(np.argmax(probs[a][i])) == labels[a][i]
        )
        precisions.append(hits / len(names))
        recalls.append(hits / len(known))
    aps = [v for v in ap.values() if not math.isnan(v)]
    return {
        "ap": ap,
        "top1": top1,
        "mAP_cls": sum(aps) / len(aps),
        "mP_ins": sum(precisions) / len(precisions),
        "mR_ins": sum(recalls) / len(recalls),
    }


def brute_topk_recall(scores, targets, k):
    n, a = scores.shape
    per = []
    for j in range(a):
        pos = [i for i in range(n) if targets[i, j] == 1]
        if not pos:
            per.append(math.nan)
            continue
        found = 0
        for i in pos:
            # Stable ranking: higher score first, then lower index.
            ranked = sorted(range(a), key=lambda t, i=i: (-scores[i, t], t))
            found += j in ranked[:k]
        per.append(found / len(pos))
    valid = [v for v in per if not math.isnan(v)]
    return sum(valid) / len(valid), np.array(per)


# --- average_precision


def test_ap_by_hand():
    # Ranking: pos, neg, pos, neg, neg -> precisions 1/1 and 2/3.
    ap = metrics.average_precision(
        [0.9, 0.8, 0.7, 0.6, 0.5], [1, 0, 1, 0, 0]
    )
    assert ap == pytest.approx((1 + 2 / 3) / 2)


def test_ap_ties_use_end_of_block():
    # 0.9 neg; {0.5 pos, 0.5 neg} tie block ends at rank 3 -> 1/3;
    # 0.1 pos at rank 4 -> 2/4. AP = (1/3 + 1/2) / 2 = 5/12, whatever the
    # input order of the tied items.
    assert metrics.average_precision(
        [0.9, 0.5, 0.5, 0.1], [0, 1, 0, 1]
    ) == pytest.approx(5 / 12)
    assert metrics.average_precision(
        [0.9, 0.5, 0.5, 0.1], [0, 0, 1, 1]
    ) == pytest.approx(5 / 12)


def test_ap_edge_cases():
    assert math.isnan(metrics.average_precision([0.3, 0.2], [0, 0]))
    assert metrics.average_precision([0.9, 0.8, 0.1], [1, 1, 0]) == 1.0
    assert metrics.average_precision([0.1, 0.8, 0.9], [1, 0, 0]) == (
        pytest.approx(1 / 3)
    )
    with pytest.raises(ValueError, match="finite"):
        metrics.average_precision([0.1, np.nan], [1, 0])
    with pytest.raises(ValueError, match="same length"):
        metrics.average_precision([0.1, 0.2], [1, 0, 1])


@pytest.mark.parametrize("seed", range(5))
def test_ap_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    n = 40
    positives = rng.random(n) < 0.3
    positives[0] = True
    # Continuous scores (no ties) and coarse scores (many ties).
    fine = rng.random(n)
    coarse = np.round(rng.random(n), 1)
    assert metrics.average_precision(fine, positives) == pytest.approx(
        brute_ap_no_ties(fine, positives), rel=1e-12
    )
    assert metrics.average_precision(coarse, positives) == pytest.approx(
        brute_ap(coarse, positives), rel=1e-12
    )


def test_ap_matches_sklearn_with_ties():
    sk = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(7)
    scores = np.round(rng.random(60), 1)
    positives = rng.random(60) < 0.4
    assert metrics.average_precision(scores, positives) == pytest.approx(
        sk.average_precision_score(positives, scores), rel=1e-12
    )


# --- attribute_ap

# 5 images, 3 values. Image 3 is unlabelled; image 2's value-1 score (0.1)
# ties with image 3's, so counting image 3 as a negative would change AP_1.
PROBS = np.array(
    [
        [0.7, 0.2, 0.1],
        [0.2, 0.5, 0.3],
        [0.6, 0.1, 0.3],
        [0.1, 0.1, 0.8],
        [0.3, 0.4, 0.3],
    ]
)
LABELS = np.array([0, 1, 1, -1, 0])


def test_attribute_ap_by_hand():
    # Value 0, labelled images 0,1,2,4 scored 0.7,0.2,0.6,0.3, positives 0,4:
    #   ranks 0(+) 2(-) 4(+) 1(-) -> (1/1 + 2/3) / 2 = 5/6.
    # Value 1, scores 0.2,0.5,0.1,0.4, positives 1,2:
    #   ranks 1(+) 4(-) 0(-) 2(+) -> (1/1 + 2/4) / 2 = 3/4.
    #   (With image 3 wrongly counted as a negative tied at 0.1: 2/5 -> 0.7.)
    # Value 2 has no positive -> NaN, left out of the mean.
    ap, per_value = metrics.attribute_ap(PROBS, LABELS)
    np.testing.assert_allclose(per_value[:2], [5 / 6, 3 / 4])
    assert np.isnan(per_value[2])
    assert ap == pytest.approx((5 / 6 + 3 / 4) / 2)
    # Dropping the unlabelled image changes nothing.
    keep = LABELS != -1
    ap2, _ = metrics.attribute_ap(PROBS[keep], LABELS[keep])
    assert ap2 == ap


def test_attribute_ap_no_label_and_bad_labels():
    ap, per_value = metrics.attribute_ap(PROBS, [-1] * 5)
    assert math.isnan(ap) and np.all(np.isnan(per_value))
    with pytest.raises(ValueError, match="must be in"):
        metrics.attribute_ap(PROBS, [0, 1, 3, -1, 0])
    with pytest.raises(ValueError, match="shape"):
        metrics.attribute_ap(PROBS, [0, 1])


# --- evaluate_predictions


def _probs_for(preds, k):
    """Scores whose argmax is ``preds`` (distinct values per row)."""
    out = np.tile(np.linspace(0.1, 0.2, k), (len(preds), 1))
    out[np.arange(len(preds)), preds] = 0.9
    return out


def _hand_example():
    # 4 images, 3 attributes. Predictions (argmax) and labels:
    #        colour(K=3)  pattern(K=2)  collar(K=2)   hits  P     R
    # img0:  0 / 0 ok     1 / 1 ok      0 / -1        2     2/3   2/2
    # img1:  2 / 1        0 / 0 ok      1 / 1 ok      2     2/3   2/3
    # img2:  1 / -1       0 / -1        0 / 1         0     0     0/1
    # img3:  all labels missing -> skipped
    # mP = (2/3 + 2/3 + 0) / 3 = 4/9, mR = (1 + 2/3 + 0) / 3 = 5/9.
    preds = {"colour": [0, 2, 1, 0], "pattern": [1, 0, 0, 1],
             "collar": [0, 1, 0, 1]}
    labels = {"colour": [0, 1, -1, -1], "pattern": [1, 0, -1, -1],
              "collar": [-1, 1, 1, -1]}
    k = {"colour": 3, "pattern": 2, "collar": 2}
    probs = {a: _probs_for(preds[a], k[a]) for a in preds}
    labels = {a: np.array(v) for a, v in labels.items()}
    return probs, labels


def test_evaluate_mp_mr_top1_by_hand():
    probs, labels = _hand_example()
    names = ("colour", "pattern", "collar")
    r = metrics.evaluate_predictions(probs, labels, names)
    assert r["mP_ins"] == pytest.approx(4 / 9)
    assert r["mR_ins"] == pytest.approx(5 / 9)
    assert r["top1"] == pytest.approx(
        {"colour": 0.5, "pattern": 1.0, "collar": 0.5}
    )
    assert r["num_labelled"] == {"colour": 2, "pattern": 2, "collar": 2}
    assert r["num_images"] == 4 and r["num_images_labelled"] == 3
    # pattern: perfect ranking of both labelled images -> AP 1.
    assert r["ap"]["pattern"] == 1.0
    assert r["mAP_cls"] == pytest.approx(np.mean(list(r["ap"].values())))


def test_evaluate_unlabelled_attribute_excluded_from_map_not_from_mp():
    probs, labels = _hand_example()
    probs["button"] = _probs_for([0, 1, 0, 1], 2)
    labels["button"] = np.array([-1, -1, -1, -1])
    base = metrics.evaluate_predictions(
        probs, labels, ("colour", "pattern", "collar")
    )
    r = metrics.evaluate_predictions(
        probs, labels, ("colour", "pattern", "collar", "button")
    )
    assert math.isnan(r["ap"]["button"]) and math.isnan(r["top1"]["button"])
    assert r["mAP_cls"] == base["mAP_cls"]
    assert r["mR_ins"] == base["mR_ins"]
    # Four attributes predicted now: mP = (2/4 + 2/4 + 0) / 3.
    assert r["mP_ins"] == pytest.approx(1 / 3)


def test_evaluate_perfect_predictor():
    rng = np.random.default_rng(0)
    k = {"a": 4, "b": 3}
    labels = {a: rng.integers(-1, n, size=30) for a, n in k.items()}
    labels["a"][:4] = [0, 1, 2, 3]
    labels["b"][:3] = [0, 1, 2]
    probs = {
        a: _probs_for(np.where(labels[a] < 0, 0, labels[a]), k[a]) for a in k
    }
    r = metrics.evaluate_predictions(probs, labels)
    assert r["mAP_cls"] == 1.0 and r["mR_ins"] == 1.0
    assert r["top1"] == {"a": 1.0, "b": 1.0}
    # Precision still charges predictions on missing attributes.
    known = (labels["a"] >= 0).astype(int) + (labels["b"] >= 0)
    assert r["mP_ins"] == pytest.approx(np.mean(known[known > 0] / 2))


@pytest.mark.parametrize("seed", range(3))
def test_evaluate_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    k = {"category": 5, "colour": 4, "sleeve_length": 3}
    n = 50
    probs = {
        a: np.round(rng.dirichlet(np.ones(m), size=n), 2) for a, m in k.items()
    }
    labels = {}
    for a, m in k.items():
        y = rng.integers(0, m, size=n)
        y[rng.random(n) < 0.3] = -1
        labels[a] = y
    names = tuple(k)
    got = metrics.evaluate_predictions(probs, labels, names)
    want = brute_evaluate(probs, labels, names)
    for key in ("mAP_cls", "mP_ins", "mR_ins"):
        assert got[key] == pytest.approx(want[key], rel=1e-12)
    for a in names:
        assert got["ap"][a] == pytest.approx(want["ap"][a], rel=1e-12)
        assert got["top1"][a] == pytest.approx(want["top1"][a], rel=1e-12)


def test_evaluate_rejects_inconsistent_inputs():
    probs, labels = _hand_example()
    with pytest.raises(KeyError, match="sleeve"):
        metrics.evaluate_predictions(probs, labels, ("colour", "sleeve"))
    probs["colour"] = probs["colour"][:3]
    with pytest.raises(ValueError, match="same images"):
        metrics.evaluate_predictions(
            probs, labels, ("pattern", "colour", "collar")
        )


# --- multi-label


def test_topk_recall_by_hand():
    scores = np.array(
        [[0.9, 0.1, 0.5, 0.3], [0.2, 0.8, 0.1, 0.7], [0.4, 0.3, 0.2, 0.1]]
    )
    targets = np.array([[1, 0, 1, -1], [1, 1, 0, 0], [0, -1, 1, 0]])
    # top-2 per image: {0, 2}, {1, 3}, {0, 1}.
    # attr 0: positives img0 (in), img1 (out) -> 1/2; attr 1: img1 (in) -> 1;
    # attr 2: img0 (in), img2 (out) -> 1/2; attr 3: no positive -> NaN.
    mean, per = metrics.topk_recall(scores, targets, 2)
    np.testing.assert_allclose(per[:3], [0.5, 1.0, 0.5])
    assert np.isnan(per[3])
    assert mean == pytest.approx(2 / 3)
    assert metrics.topk_recall(scores, targets, 4)[0] == 1.0
    # Ties are broken by the lower attribute index.
    _, per = metrics.topk_recall(np.zeros((1, 3)), [[0, 1, 1]], 1)
    np.testing.assert_array_equal(per, [np.nan, 0.0, 0.0])
    with pytest.raises(ValueError, match="`k`"):
        metrics.topk_recall(scores, targets, 5)
    with pytest.raises(ValueError, match="unknown"):
        metrics.topk_recall(scores, targets * 2, 1)


@pytest.mark.parametrize("k", [1, 3])
def test_topk_recall_matches_brute_force(k):
    rng = np.random.default_rng(k)
    scores = np.round(rng.random((20, 8)), 1)
    targets = rng.choice([1, 0, -1], size=(20, 8), p=[0.3, 0.5, 0.2])
    mean, per = metrics.topk_recall(scores, targets, k)
    want_mean, want_per = brute_topk_recall(scores, targets, k)
    np.testing.assert_allclose(per, want_per)
    assert mean == pytest.approx(want_mean)


def test_multilabel_ap_ignores_unknown():
    scores = np.array([[0.9, 0.2], [0.8, 0.7], [0.1, 0.6]])
    # Attribute 0: the unknown (row 1, score 0.8) is left out, leaving
    # ranking pos(0.9), neg(0.1) -> AP 1. Attribute 1: no positive -> NaN.
    targets = np.array([[1, 0], [-1, 0], [0, -1]])
    mean, per = metrics.multilabel_ap(scores, targets)
    assert per[0] == 1.0 and np.isnan(per[1]) and mean == 1.0


# --- formatting


def test_format_table_layout():
    probs, labels = _hand_example()
    names = ("colour", "pattern", "collar")
    r = metrics.evaluate_predictions(probs, labels, names)
    r["ap"]["collar"] = math.nan
    text = metrics.format_table({"MTCT": r}, names, title="X-Domain-synth")
    lines = text.splitlines()
    assert lines[0] == "**X-Domain-synth**"
    assert lines[2] == (
        "| Method | Colour | Pattern | Collar | mAP_cls | mP_ins | mR_ins |"
    )
    cells = [c.strip() for c in lines[4].strip("|").split("|")]
    assert cells[0] == "MTCT"
    assert cells[2] == "100.00" and cells[3] == "n/a"
    assert cells[5:] == ["44.44", "55.56"]
    single = metrics.format_table(r, names, row_name="MTN")
    assert single.splitlines()[2].startswith("| MTN | ")


# --------------------------------------------------------------------------
# Prediction spread (collapse check).
# --------------------------------------------------------------------------


def test_prediction_spread_flags_a_constant_predictor():
    from mtct_tf import evaluation
    from mtct_tf.attributes import Attribute, AttributeSchema

    rng = np.random.default_rng(0)
    n = 200
    labels = {"colour": rng.integers(0, 4, n), "sleeve": rng.integers(0, 2, n)}
    labels["colour"][:5] = metrics.MISSING
    constant = np.tile([0.1, 0.6, 0.2, 0.1], (n, 1))
    varied = rng.dirichlet(np.ones(2), size=n)
    probs = {"colour": constant, "sleeve": varied}
    spread = metrics.prediction_spread(probs, labels)
    c, s = spread["colour"], spread["sleeve"]
    assert c["collapsed"] and not s["collapsed"]
    assert c["top_prediction"] == 1 and c["top_prediction_share"] == 1.0
    assert c["prediction_entropy"] == 0.0
    # Entropy of the 195 known colour labels, by hand.
    counts = np.bincount(labels["colour"][5:], minlength=4) / 195
    assert c["label_entropy"] == pytest.approx(
        -sum(p * np.log2(p) for p in counts if p > 0))
    predicted = np.bincount(np.argmax(varied, 1), minlength=2) / n
    assert s["prediction_entropy"] == pytest.approx(
        -sum(p * np.log2(p) for p in predicted if p > 0))
    # A constant prediction of a constant label is right, not collapsed.
    same = metrics.prediction_spread(
        {"a": constant}, {"a": np.ones(n, int)})
    assert not same["a"]["collapsed"]

    schema = AttributeSchema("t", [
        Attribute("colour", ("red", "green", "blue", "white")),
        Attribute("sleeve", ("short", "long"))])
    warnings = evaluation.collapse_warnings(spread, schema)
    assert len(warnings) == 1 and "'colour'" in warnings[0]
    assert "'green'" in warnings[0] and "100%" in warnings[0]
    table = evaluation.spread_table(spread, schema)
    assert "| colour |" in table and "**yes**" in table
