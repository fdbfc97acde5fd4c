"""The second protocol's plan, family, budget matching and report."""

import json
import os

import numpy as np
import pytest

from mtct_tf.benchmarks import confirm, confirm_report

WEIGHTS = {"MTCT": 340.0, "DDAN": 52.0, "End-to-end": 9.1}
MATCHED = {0.1: 24, 0.25: 57, 1.0: 183}


def test_every_family_comparison_has_its_arms_in_the_plan():
    labels = [name for name, _ in confirm.plan(WEIGHTS, MATCHED)]
    assert len(labels) == len(set(labels))
    for a, b in confirm.family():
        assert a in labels and b in labels, (a, b)
    # MTCT - UD at each fraction, MTN - JAN once.
    assert ("MTCT 25%", "UD 25%") in confirm.family()
    assert confirm.family()[-1] == ("No-Adapt", "JAN")


def test_arms_are_distinct_runs_with_the_rule_weights():
    arms = dict(confirm.plan(WEIGHTS, MATCHED))
    keys = [a.key for a in arms.values()]
    assert len(keys) == len(set(keys))
    mtct = arms["MTCT 10%"]
    assert "street.cross_domain.weight=340" in mtct.overrides
    assert "street.finetune=all" in mtct.overrides
    ddan = arms["DDAN 100%"]
    assert "street.cross_domain.kind=coral" in ddan.overrides
    assert "street.cross_domain.weight=52" in ddan.overrides
    matched = arms["MTCT matched 25%"]
    assert "street.steps_per_epoch=57" in matched.overrides
    assert "street.epochs=1" in matched.overrides
    assert "street.cross_domain.weight=9.1" in arms[
        "End-to-end 10%"].overrides
    # JAN trains a shop stage of its own (another model), never the MTN's.
    jan = arms["JAN"]
    assert jan.shop_key != arms["No-Adapt"].shop_key
    assert "model.heads=joint" in jan.shop_overrides
    # FTT has no cross-domain term.
    assert not any("cross_domain" in o for o in arms["FTT 25%"].overrides)


def test_matched_steps_are_uds_street_batches(tiny_shards):
    _, shards, summary = tiny_shards
    steps, info = confirm.matched_steps(shards, [
        "model.preset=tiny", "data.batch_size=2", "shop.epochs=2",
        "shop.steps_per_epoch=5", "street.epochs=1",
        "street.steps_per_epoch=2"], 1.0)
    shop = summary["splits"]["train"]["domains"]["shop"]
    street = summary["splits"]["train"]["domains"]["street"]
    assert info["shop_records"] == shop and info["street_records"] == street
    # One-stage budget: (2 x 5 + 1 x 2) steps = 12.
    assert info["ud_steps"] == 12
    assert steps == max(1, round(12 * street / (shop + street)))


def _fake_data():
    fractions = list(confirm.FRACTIONS)
    rng = np.random.default_rng(0)
    per_seed, summary = {}, {}
    for name, _ in confirm.plan(WEIGHTS, MATCHED):
        values = list(50 + rng.normal(size=3))
        per_seed[name] = values
        summary[name] = {"mAP_cls": (float(np.mean(values)),
                                     float(np.std(values, ddof=1)))}
    family = []
    from mtct_tf.benchmarks import ablation_stats

    for a, b in confirm.family():
        family.append(dict(ablation_stats.paired(per_seed[a], per_seed[b]),
                           a=a, b=b))
    adjusted, rejected = ablation_stats.holm([c["p"] for c in family])
    for c, p, r in zip(family, adjusted, rejected):
        c["p_holm"], c["holm"] = p, ("not separated" if not r else "better")
    curves = {"MTCT 10%": {"steps": [100, 200], "seconds": [5.0, 9.0],
                           "score": [40.0, 45.0], "seeds": 3},
              "UD 100%": {"steps": [100, 200], "seconds": [4.0, 8.0],
                          "score": [41.0, 47.0], "seeds": 3}}
    info = {"command": "python -m mtct_tf.benchmark confirm", "minutes": 1.0,
            "machine": "x86_64, 2 CPUs", "seeds": 3, "render_seed": 2019,
            "items": 3400, "fractions": fractions,
            "street_test_images": 240, "chance": 25.0, "budget": "b",
            "weights": WEIGHTS,
            "weight_measurements": {k: {"ratio": 1 / v, "start": "shop model"}
                                    for k, v in WEIGHTS.items()},
            "matched_steps": {f"{f:g}": s for f, s in MATCHED.items()},
            "matched_info": {f"{f:g}": {"ud_steps": 2100,
                                        "shop_records": 2040,
                                        "street_records": 72}
                             for f in MATCHED},
            "seconds": {"MTCT 10%": 60.0}}
    retrieval = {"MTCT 10%": {"retrieval": [{"10": 0.4}] * 3,
                              "retrieval_shop_gallery": [{"10": 0.5}] * 3}}
    return {"summary": summary, "per_seed": per_seed, "family": family,
            "info": info, "curves": curves, "retrieval": retrieval}


def test_report_files_and_the_summary_on_top_of_results(tmp_path):
    out = str(tmp_path)
    with open(os.path.join(out, "RESULTS.md"), "w") as f:
        f.write("# Results: is MTCT worth it?\n\nfirst protocol\n\n## V\n")
    path = confirm_report.write_report(_fake_data(), out)
    text = open(path).read()
    assert "Holm-adjusted over the family of 15" in text
    assert "| MTCT 10% − UD 10% |" in text
    assert "MTCT **340**" in text
    assert "10%: 24 steps" in text
    assert "| MTCT 10% | 40.00 ± 0.00 | 50.00 ± 0.00 |" in text
    assert os.path.exists(os.path.join(out, "images", confirm_report.FIGURE))
    data = json.load(open(os.path.join(out, "results", "confirm.json")))
    assert len(data["family"]) == 15
    results = open(os.path.join(out, "RESULTS.md")).read()
    assert results.startswith("# Results: is MTCT worth it?\n\n<!-- begin "
                              "protocol-2 -->\n## Second protocol")
    assert "first protocol" in results
    # Written again, the section is replaced, not repeated.
    confirm_report.write_report(_fake_data(), out)
    again = open(os.path.join(out, "RESULTS.md")).read()
    assert again.count("<!-- begin protocol-2 -->") == 1


def test_the_core_family_is_the_two_ends_without_end_to_end_or_jan():
    core = confirm.family(confirm.CORE_FRACTIONS, (), jan=False)
    assert len(core) == 8
    assert ("MTCT 10%", "UD 10%") in core and ("MTCT 100%", "DDAN 100%") in core
    assert not any("25%" in a + b or "End-to-end" in b or b == "JAN"
                   for a, b in core)
    labels = [name for name, _ in confirm.plan(
        WEIGHTS, MATCHED, confirm.CORE_FRACTIONS, (), jan=False)]
    assert "JAN" not in labels and "MTCT 25%" not in labels
    assert all(a in labels and b in labels for a, b in core)
    # The extension's family holds the core's.
    assert set(core) < set(confirm.family())


def test_comparisons_without_their_arms_are_not_run_and_stay_in_holm():
    per_seed = {"MTCT 10%": [50.0, 52.0, 51.0], "UD 10%": [40.0, 41.0, 39.5],
                "MTCT 100%": [60.0, 61.0, 60.5]}
    pairs = [("MTCT 10%", "UD 10%"), ("MTCT 100%", "UD 100%")]
    out = confirm._compare(pairs, per_seed)
    assert out[1]["holm"] == "not run" and out[1]["mean"] is None
    alone = confirm._compare(pairs[:1], per_seed)[0]
    # The missing comparison still counts: Holm's factor is 2, not 1.
    assert out[0]["p_holm"] == pytest.approx(min(1.0, 2 * alone["p"]))
    table = confirm_report.family_table(out)
    assert "| MTCT 100% − UD 100% | - |" in table
    assert "not run" in table


def test_reused_arms_come_from_the_earlier_results(tmp_path):
    prior = _fake_data()
    prior["info"]["seeds"] = 3
    path = tmp_path / "confirm.json"
    path.write_text(json.dumps(prior))
    loaded = confirm.load_reuse(str(path), 3, 2019, 3400)
    reused = {n for n, v in loaded["per_seed"].items() if len(v) == 3}
    data = confirm._assemble({}, loaded, reused, 3)
    assert data["per_seed"]["MTCT 10%"] == prior["per_seed"]["MTCT 10%"]
    assert data["retrieval"]["MTCT 10%"] == prior["retrieval"]["MTCT 10%"]
    with pytest.raises(ValueError, match="render_seed=2019.*2020"):
        confirm.load_reuse(str(path), 3, 2020, 3400)


def test_the_extension_report_keeps_the_core_verdicts_beside_its_own(
        tmp_path):
    data = _fake_data()
    core = [c for c in data["family"]
            if (c["a"], c["b"]) in confirm.family(confirm.CORE_FRACTIONS, (),
                                                  jan=False)]
    data["extension_family"] = data["family"]
    data["family"] = core
    data["invocations"] = [
        {"command": "python -m mtct_tf.benchmark confirm", "minutes": 68.5,
         "arms": ["MTCT 10%"]},
        {"command": "python -m mtct_tf.benchmark confirm --extension "
                    "--reuse docs/results/confirm.json", "minutes": 50.0,
         "arms": ["JAN"]}]
    os.makedirs(tmp_path / "results")
    (tmp_path / "results" / confirm_report.NOTES).write_text("A reading.\n")
    path = confirm_report.write_report(data, str(tmp_path))
    text = open(path).read()
    assert "Holm-adjusted over the family of 8" in text
    assert "## Reading the numbers (by hand" in text and "A reading." in text
    assert "### Extension family (Holm over 15)" in text
    assert "--reuse docs/results/confirm.json`: 50.0 min, JAN" in text
    summary = open(tmp_path / "RESULTS.md").read()
    assert "Extension family (Holm over 15" in summary
    assert "No-Adapt − JAN" in summary
