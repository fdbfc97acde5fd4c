"""Ablation report: summaries over seeds, verdicts, files written."""

import json

import pytest

from mtct_tf.benchmarks import ablation

NAMES = ("colour", "sleeve")


def _result(m):
    return {"mAP_cls": m, "mP_ins": m / 2, "mR_ins": m / 3,
            "ap": {a: m for a in NAMES}}


def _summary(methods, ftt_curve, mtct_curve):
    def s(values):
        return ablation._summary([_result(v) for v in values])
    return {
        "methods": {k: s(v) for k, v in methods.items()},
        "losses": {"none (FTT)": s(methods["FTT"]),
                   "t-STE poster (MTCT)": s(methods["MTCT"])},
        "curve": {"FTT": {str(f): s(v) for f, v in ftt_curve.items()},
                  "MTCT": {str(f): s(v) for f, v in mtct_curve.items()}},
    }


def test_summary_is_mean_and_std_in_percent():
    s = ablation._summary([_result(0.4), _result(0.6)])
    assert s["mAP_cls"] == pytest.approx((50.0, 10.0))
    assert s["ap"]["colour"] == pytest.approx((50.0, 10.0))
    assert s["mR_ins"] == pytest.approx((50.0 / 3, 10.0 / 3))


def test_verdicts_follow_the_numbers():
    methods = {"No-Adapt": [0.3, 0.32], "UD": [0.4, 0.42],
               "FTT": [0.5, 0.5], "End-to-end": [0.45, 0.45],
               "MTCT": [0.55, 0.57]}
    good = _summary(methods, {0.1: [0.3], 0.25: [0.4], 1.0: [0.5]},
                    {0.1: [0.4], 0.25: [0.45], 1.0: [0.52]})
    lines = ablation._verdicts(good)
    assert "**holds**" in lines[0] and "**holds**" in lines[1]
    assert "10%: +10.00" in lines[1]
    methods["UD"] = [0.6, 0.6]  # UD above FTT breaks the ordering.
    bad = _summary(methods, {0.1: [0.3], 0.25: [0.4], 1.0: [0.5]},
                   {0.1: [0.31], 0.25: [0.45], 1.0: [0.52]})
    lines = ablation._verdicts(bad)
    assert "**does not hold**" in lines[0]
    assert "**does not hold**" in lines[1]  # Largest gain at 25%, not 10%.


def test_gaps_within_noise_read_not_separated():
    """Means in the claimed order but within one std over seeds: neither
    claim holds, neither is refuted."""
    methods = {"No-Adapt": [0.30, 0.40], "UD": [0.32, 0.42],
               "FTT": [0.34, 0.44], "End-to-end": [0.45, 0.45],
               "MTCT": [0.36, 0.46]}
    noisy = _summary(methods, {0.1: [0.30, 0.40], 0.25: [0.32, 0.42],
                               1.0: [0.34, 0.44]},
                     {0.1: [0.32, 0.42], 0.25: [0.33, 0.43],
                      1.0: [0.34, 0.44]})
    lines = ablation._verdicts(noisy)
    assert "**not separated**" in lines[0]
    assert "No-Adapt vs UD" in lines[0]
    assert "**not separated**" in lines[1]
    assert "within one std" in lines[1]


def test_report_files(tmp_path):
    methods = {k: [0.3 + 0.05 * i] for i, k in enumerate(ablation.METHODS)}
    summary = _summary(methods, {0.1: [0.3], 0.25: [0.4], 1.0: [0.5]},
                       {0.1: [0.35], 0.25: [0.42], 1.0: [0.51]})
    info = {"command": "cmd", "minutes": 1.0, "machine": "m", "seeds": 1,
            "items": 10, "street_test_images": 5, "chance": 25.0,
            "budget": "b"}
    path = ablation.write_report(summary, info, str(tmp_path))
    text = open(path).read()
    assert "| MTCT | 50.00 ± 0.00" in text
    assert (tmp_path / "images" / "ablation.png").stat().st_size > 1000
    assert (tmp_path / "images" / "ablation_small_data.png").exists()
    saved = json.loads((tmp_path / "results" / "ablation.json").read_text())
    assert saved["summary"]["methods"]["UD"]["mAP_cls"][0] == pytest.approx(
        35.0)


def test_prepare_data_records_the_render_seed(tmp_path):
    from mtct_tf.data import pipeline

    shards = ablation.prepare_data(str(tmp_path), items=34, render_seed=3)
    with open(tmp_path / "render.json") as f:
        settings = json.load(f)
    assert settings["seed"] == 3 and settings["street_items"] == 4
    summary = pipeline.load_summary(shards)
    assert summary["splits"]["test"]["domains"]["street"] == 3
    assert ablation.prepare_data(str(tmp_path), items=34,
                                 render_seed=3) == shards
    with pytest.raises(ValueError, match="another --workdir"):
        ablation.prepare_data(str(tmp_path), items=34, render_seed=4)
