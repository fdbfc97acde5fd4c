"""Ablation report: paired differences, verdicts, summaries, files."""

import json

import numpy as np
import pytest

from mtct_tf.benchmarks import ablation

NAMES = ("colour", "sleeve")


def _result(m, top10=0.5):
    return {"mAP_cls": m, "mP_ins": m / 2, "mR_ins": m / 3,
            "ap": {a: m for a in NAMES}, "chance_mAP_cls": 0.25,
            "num_images": 12,
            "retrieval": {"1": top10 / 4, "5": top10 / 2, "10": top10,
                          "20": min(1.0, 2 * top10)}}


def test_paired_difference_and_its_t_interval():
    p = ablation.paired([3.0, 4.0, 5.0], [1.0, 1.0, 1.0])
    assert p["differences"] == [2.0, 3.0, 4.0]
    assert p["mean"] == pytest.approx(3.0)
    assert p["std"] == pytest.approx(1.0)
    # t(0.975, 2) = 4.303: half-width 4.303 / sqrt(3) = 2.484.
    assert p["interval"] == pytest.approx([3 - 2.4843, 3 + 2.4843], abs=1e-3)
    assert p["verdict"] == "better"


@pytest.mark.parametrize("a, b, verdict", [
    ([2.0, 2.1, 1.9], [1.0, 1.0, 1.0], "better"),
    ([0.0, 0.1, -0.1], [1.0, 1.0, 1.0], "worse"),
    # Means ordered, differences of both signs: within the noise.
    ([1.5, 0.2, 1.9], [1.0, 1.0, 1.0], "not separated"),
    # A large, consistent seed-to-seed spread cancels in the pairs...
    ([30.5, 40.5, 50.5], [30.0, 40.0, 50.0], "better"),
])
def test_paired_verdicts(a, b, verdict):
    assert ablation.paired(a, b)["verdict"] == verdict


def test_one_seed_is_never_separated():
    p = ablation.paired([10.0], [1.0])
    assert p["verdict"] == "not separated" and p["interval"] is None
    assert "(1 seed)" in ablation._diff_cell(p)
    with pytest.raises(ValueError, match="one value per seed"):
        ablation.paired([1.0, 2.0], [1.0])


def test_summary_is_mean_and_sample_std_in_percent():
    s = ablation._summary([_result(0.4), _result(0.6)])
    assert s["mAP_cls"] == pytest.approx((50.0, 100 * np.std([0.4, 0.6],
                                                             ddof=1)))
    assert s["ap"]["colour"][0] == pytest.approx(50.0)
    assert s["retrieval"]["10"] == pytest.approx((50.0, 0.0))
    assert s["n"] == 2


def _per(gain_fc, gain_all, seeds=3, fractions=ablation.FRACTIONS):
    """Per-seed results: FTT at 0.4 + seed noise, MTCT above it by the
    gain of its mode and fraction (a dict), No-Adapt at 0.3."""
    noise = [0.0, 0.03, -0.02][:seeds]
    per = {"No-Adapt": [_result(0.3 + n) for n in noise],
           "Shop model on shop test": [_result(0.9) for _ in noise]}
    for mode, gain in (("fc", gain_fc), ("all", gain_all)):
        for f in fractions:
            per[f"FTT {mode} {f:g}"] = [_result(0.4 + n) for n in noise]
            per[f"MTCT {mode} {f:g}"] = [
                _result(0.4 + n + g) for n, g in zip(noise, gain[f])]
    return per


def test_comparisons_cells_and_small_data_contrast():
    fc = {0.1: [0.05, 0.06, 0.055], 0.25: [0.0, 0.01, -0.01],
          1.0: [0.0, 0.005, -0.005]}
    all_ = {f: [0.02, -0.02, 0.0] for f in ablation.FRACTIONS}
    table = ablation.comparisons(_per(fc, all_))
    cell = {(p["mode"], p["fraction"], p["what"]): p for p in table}
    assert cell[("fc", 0.1, "MTCT - FTT")]["verdict"] == "better"
    assert cell[("fc", 0.1, "MTCT - FTT")]["mean"] == pytest.approx(5.5)
    assert cell[("fc", 1.0, "MTCT - FTT")]["verdict"] == "not separated"
    assert cell[("all", 0.1, "MTCT - FTT")]["verdict"] == "not separated"
    assert cell[("fc", 0.1, "MTCT - No-Adapt")]["verdict"] == "better"
    small = [p for p in table if p["fraction"] is None]
    assert [p["mode"] for p in small] == ["fc", "all"]
    assert small[0]["verdict"] == "better"  # 5.5 points more at 10%.
    assert small[1]["verdict"] == "not separated"
    lines = ablation.verdict_lines(table)
    assert len(lines) == len(table) == 2 * (2 * 3 + 1)
    assert "**MTCT better (separated)**" in lines[0]


def _data(per, fractions=ablation.FRACTIONS, core=False, weight=None):
    summary = {k: ablation._summary(v) for k, v in per.items()}
    info = {"command": "cmd", "minutes": 1.0, "compute_minutes": 2.0,
            "machine": "m", "seeds": 3, "control_seeds": 0, "controls": [],
            "core": core, "fractions": list(fractions), "items": 10,
            "render_seed": 2017, "street_test_images": 12, "chance": 25.0,
            "budget": "b",
            "weight": weight or {"chosen": 340.0,
                                 "scores": {"86": [1, 2, 3],
                                            "340": [2, 3, 4],
                                            "1400": [1, 1, 1]}}}
    return {"summary": summary, "info": info,
            "verdicts": {
                "mAP_cls": ablation.comparisons(per, fractions=fractions),
                "retrieval top-10": ablation.comparisons(
                    per, metric=lambda r: 100 * r["retrieval"]["10"],
                    fractions=(fractions[0], fractions[-1]))},
            "per_seed": {k: [{"mAP_cls": r["mAP_cls"]} for r in v]
                         for k, v in per.items()}}


def test_report_files_and_a_replication_beside_it(tmp_path):
    zero = {f: [0.0, 0.0, 0.0] for f in ablation.FRACTIONS}
    up = {f: [0.05, 0.06, 0.055] for f in ablation.FRACTIONS}
    per = _per(up, zero)
    per["Oracle fc"] = [_result(0.7) for _ in range(3)]
    replication = _data(_per(zero, zero, fractions=(0.1, 1.0)),
                        fractions=(0.1, 1.0), core=True,
                        weight={"chosen": 340.0})
    data = _data(per)
    data["replication"] = replication
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "notes.md").write_text("- read me\n")
    path = ablation.write_report(data, str(tmp_path))
    text = open(path).read()
    assert "| fc | 10% | 40.33 ± 2.52 |" in text
    assert "6 cells (2 modes × 3 label fractions): 3 MTCT better" in text
    assert "Label-copy oracle (`fc`): 70.00 ± 0.00" in text
    assert "→ **340**, frozen" in text
    # The replication disagrees on the two fc MTCT - FTT cells it has
    # (10% and 100%); the other 8 cells agree.
    assert "| fc | 10%: MTCT - FTT |" in text
    assert "8 of 10 verdicts agree." in text
    assert "(not run: `--losses` adds them)" in text
    assert "## Reading the numbers (by hand, `results/notes.md`)\n\n- read me" in text
    for name in ("ablation", "ablation_small_data", "ablation_paired"):
        assert (tmp_path / "images" / f"{name}.png").stat().st_size > 1000
    saved = json.loads((tmp_path / "results" / "ablation.json").read_text())
    assert saved["summary"]["Oracle fc"]["mAP_cls"][0] == pytest.approx(70.0)
    # A replication-only report (no oracle, 2 fractions) renders too.
    path = ablation.write_report(replication, str(tmp_path / "r"))
    assert "| all | 100% |" in open(path).read()


def test_arms_share_runs_only_when_they_are_the_same_run():
    assert ablation.street_arm("ftt", "fc", 0.1).key == "ftt_fc_0.1"
    mtct = ablation.street_arm("mtct", "all", 1.0, 340.0)
    assert mtct.key == "mtct_all_1_w340"
    assert "street.cross_domain.weight=340" in mtct.overrides
    assert "street.finetune=all" in mtct.overrides
    # The seed-0 grid run at the chosen weight is the MTCT fc arm itself.
    assert (ablation.street_arm("mtct", "fc", 0.25, 86.0).key
            == "mtct_fc_0.25_w86")
    oracle = ablation.oracle_arm("fc")
    assert "data.street_labels=pair" in oracle.overrides
    assert ablation.control_arm("ud", 340.0).key == "ud"


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


def test_show_prints_the_table_and_verdicts_of_a_finished_run(tmp_path,
                                                              capsys):
    from mtct_tf import benchmark

    zero = {f: [0.0, 0.0, 0.0] for f in ablation.FRACTIONS}
    ablation.write_report(_data(_per(zero, zero)), str(tmp_path))
    assert benchmark.main(["ablation", "--show", "--out",
                           str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "No-Adapt 30.33 ± 2.52" in out
    assert "| all | 100% | 40.33 ± 2.52 | 40.33 ± 2.52 |" in out
    assert "6 not separated" in out
    assert benchmark.main(["ablation", "--show", "--out",
                           str(tmp_path / "none")]) == 2


def test_wall_times_of_the_invocations_that_trained_runs(tmp_path):
    first = ablation.record_invocation(str(tmp_path), "cmd a", 41.5, 70)
    assert [d["trained_runs"] for d in first] == [70]
    # A report regenerated from finished runs adds no invocation...
    again = ablation.record_invocation(str(tmp_path), "cmd a", 0.1, 0)
    assert again == first
    # ...and keeps the wall time of the one that trained them.
    info = {"minutes": 0.1, "compute_minutes": 40.0, "invocations": again}
    text = ablation._wall_times(info)
    assert "`cmd a`: **41.5 min** (70 runs" in text


def test_controls_plan_and_their_arms():
    plan = ablation.parse_controls("ud:3:0.1/1,end_to_end", 1)
    assert plan == {"ud": (3, (0.1, 1.0)), "end_to_end": (1, (1.0,))}
    with pytest.raises(ValueError, match="NAME"):
        ablation.parse_controls("mtct:3", 1)
    # UD at 100% keeps its cached run's name; other fractions get theirs.
    assert ablation.control_arm("ud", 1400.0).key == "ud"
    assert ablation.control_arm("ud", 1400.0, 0.1).key == "ud_0.1"
    assert ablation.control_arm("end_to_end", 1400.0).key == (
        "end_to_end_1_w1400")
    assert ablation.control_label("UD", 0.1) == "UD 0.1"


def test_headline_compares_mtct_with_a_control_seed_by_seed():
    zero = {f: [0.0, 0.0, 0.0] for f in ablation.FRACTIONS}
    per = _per(zero, zero)
    per["UD 0.1"] = [_result(0.3 + n) for n in (0.0, 0.03, -0.02)]
    per["UD"] = [_result(0.9)]
    lines = ablation._headline(_data(per))
    ud10 = next(line for line in lines if line.startswith("UD (one-stage, 10%"))
    assert "MTCT − UD +10.00 ± 0.00" in ud10 and "exploratory" in ud10
    ud = next(line for line in lines if line.startswith("UD (one-stage, 100%"))
    assert ud.endswith("(no verdict).")


def test_holm_adjustment_by_hand():
    from mtct_tf.benchmarks import ablation_stats

    # m = 4: sorted 0.01, 0.02, 0.03, 0.2 -> x4, x3, x2, x1 = 0.04, 0.06,
    # 0.06, 0.2, made non-decreasing.
    adjusted, rejected = ablation_stats.holm([0.03, 0.01, 0.2, 0.02])
    assert adjusted == pytest.approx([0.06, 0.04, 0.2, 0.06])
    assert rejected == [False, True, False, False]
    # A family of one is not adjusted; nan stays nan but counts in m.
    assert ablation_stats.holm([0.04])[0] == pytest.approx([0.04])
    adjusted, rejected = ablation_stats.holm([0.01, float("nan")])
    assert adjusted[0] == pytest.approx(0.02) and np.isnan(adjusted[1])
    assert rejected == [True, False]
    # Capped at 1.
    assert ablation_stats.holm([0.6, 0.7])[0] == pytest.approx([1.0, 1.0])


def test_paired_p_value_is_the_t_test_of_the_differences():
    from scipy import stats

    p = ablation.paired([3.0, 4.5, 5.0], [1.0, 1.0, 1.0])
    assert p["p"] == pytest.approx(
        stats.ttest_1samp([2.0, 3.5, 4.0], 0).pvalue)
