"""The decisive benchmark's statistics: per-arm summaries, paired verdicts.

Methods are compared seed by seed (docs/PROTOCOL.md): ``paired`` takes the
per-seed differences of two arms and their Student-t interval, and calls a
comparison separated only when the interval excludes 0; ``comparisons``
makes every MTCT - FTT and MTCT - No-Adapt cell and the small-data contrast;
``summarize`` gives an arm's mean and sample std over seeds.
"""

import numpy as np

from mtct_tf.benchmarks.ablation_arms import (COLUMNS, FRACTIONS, MODES,
                                              fraction_name)

CONFIDENCE = 0.95


def summarize(results):
    """Mean and std over seeds (in %) of each column, AP and retrieval.

    Args:
        results: an arm's per-seed results (``ablation_arms.run_arm``).

    Returns:
        Dict column -> ``(mean, sample std)``, ``"ap"`` and (when every
        seed has it) ``"retrieval"`` dicts of the same, and ``"n"``.
    """
    def ms(values):
        values = [100 * float(v) for v in values]
        return (float(np.mean(values)),
                float(np.std(values, ddof=1)) if len(values) > 1 else 0.0)

    out = {k: ms([r[k] for r in results]) for k in COLUMNS}
    out["ap"] = {a: ms([r["ap"][a] for r in results])
                 for a in results[0]["ap"]}
    if all("retrieval" in r for r in results):
        out["retrieval"] = {k: ms([r["retrieval"][k] for r in results])
                            for k in results[0]["retrieval"]}
    out["n"] = len(results)
    return out


def paired(a, b, confidence=CONFIDENCE):
    """Paired per-seed differences ``a - b`` (in the units given).

    Args:
        a, b: one value per seed each, in seed order.
        confidence: of the interval.

    Returns:
        A dict with the per-seed ``differences``, their ``mean``, sample
        ``std``, the Student-t ``interval`` (``confidence``, n - 1 degrees
        of freedom; scipy's one-sample t-test of the differences) and the
        ``verdict``: ``"better"`` when the interval lies above 0,
        ``"worse"`` below 0, else ``"not separated"`` (always with fewer
        than 2 seeds: there is no noise estimate).

    Raises:
        ValueError: ``a`` and ``b`` differ in length.
    """
    from scipy import stats

    if len(a) != len(b):
        raise ValueError(f"paired needs one value per seed on both sides; "
                         f"got {len(a)} and {len(b)}")
    d = np.asarray(a, float) - np.asarray(b, float)
    n = len(d)
    mean = float(d.mean())
    if n < 2:
        return {"differences": d.tolist(), "mean": mean, "std": None,
                "interval": None, "verdict": "not separated", "n": n}
    test = stats.ttest_1samp(d, 0)
    interval = test.confidence_interval(confidence)
    low, high = float(interval.low), float(interval.high)
    verdict = ("better" if low > 0 else "worse" if high < 0
               else "not separated")
    return {"differences": d.tolist(), "mean": mean,
            "std": float(d.std(ddof=1)), "interval": [low, high],
            "verdict": verdict, "n": n, "p": float(test.pvalue)}


def holm(pvalues, alpha=1 - CONFIDENCE):
    """Holm's step-down adjustment of a family of p-values.

    Sorted ascending, the i-th smallest (i = 1..m) is multiplied by
    ``m - i + 1``, then made non-decreasing (a running maximum) and capped
    at 1; a comparison is rejected ("separated") when its adjusted p-value
    is below ``alpha``. Controls the family-wise error rate at ``alpha``
    under any dependence between the comparisons.

    Args:
        pvalues: one p-value per comparison (``nan``: no test, e.g. one
            seed; kept as ``nan`` and counted in the family).
        alpha: the family-wise error rate.

    Returns:
        ``(adjusted p-values, rejected flags)``, in the order given.
    """
    p = np.asarray(pvalues, float)
    m = len(p)
    order = np.argsort(np.where(np.isnan(p), np.inf, p), kind="stable")
    adjusted = np.full(m, np.nan)
    running = 0.0
    for rank, i in enumerate(order):
        if np.isnan(p[i]):
            continue
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return adjusted.tolist(), [bool(a < alpha) for a in adjusted]


def comparisons(per, metric=lambda r: 100 * r["mAP_cls"], fractions=FRACTIONS,
                modes=MODES):
    """Paired MTCT - FTT and MTCT - No-Adapt per mode and fraction, and the
    small-data contrast (gain at the smallest fraction minus gain at the
    largest), as a list of ``paired`` dicts with ``mode``, ``fraction``
    (``None`` for the contrast) and ``what``.

    Args:
        per: dict arm label -> list of per-seed results; labels
            ``"No-Adapt"``, ``"FTT <mode> <fraction>"`` and
            ``"MTCT <mode> <fraction>"``.
        metric: result -> number.
        fractions, modes: the cells to compare.

    Returns:
        The list of ``paired`` dicts, per mode: each fraction's two
        comparisons, then the contrast.
    """
    base = [metric(r) for r in per["No-Adapt"]]
    out = []
    for mode in modes:
        gains = {}
        for f in fractions:
            mtct = [metric(r) for r in per[f"MTCT {mode} {f:g}"]]
            ftt = [metric(r) for r in per[f"FTT {mode} {f:g}"]]
            gains[f] = np.subtract(mtct, ftt)
            out.append(dict(paired(mtct, ftt), mode=mode, fraction=f,
                            what="MTCT - FTT"))
            out.append(dict(paired(mtct, base), mode=mode, fraction=f,
                            what="MTCT - No-Adapt"))
        low, high = min(fractions), max(fractions)
        if low != high:
            out.append(dict(
                paired(gains[low], gains[high]), mode=mode, fraction=None,
                what=f"(MTCT - FTT) at {fraction_name(low)} - "
                     f"(MTCT - FTT) at {fraction_name(high)}"))
    return out
