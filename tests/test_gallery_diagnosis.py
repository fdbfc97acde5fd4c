"""The retrieval diagnosis: which network embeds the shop gallery."""

import json
import os

import pytest

from mtct_tf.benchmarks import confirm_report, gallery


def _write_eval(run_dir, split, street, shop):
    os.makedirs(os.path.join(run_dir, "eval"), exist_ok=True)
    result = {"retrieval": {"topk_accuracy": {"10": street / 100}},
              "retrieval_shop_gallery": {"topk_accuracy": {"10": shop / 100}}}
    with open(gallery._eval_path(run_dir, split), "w") as f:
        json.dump(result, f)


@pytest.fixture
def workdir(tmp_path):
    # FTT fc: street-net gallery better; MTCT fc: shop-net gallery better.
    values = {"ftt_fc_1": (50, 40), "mtct_fc_1_w1400": (45, 60),
              "ftt_all_1": (70, 50), "mtct_all_1_w1400": (72, 68)}
    for seed in range(3):
        for key, (street, shop) in values.items():
            run_dir = tmp_path / f"seed{seed}" / key
            for split in ("val", "test"):
                _write_eval(str(run_dir), split, street + seed, shop + seed)
    (tmp_path / "seed0" / "no_adapt").mkdir()
    (tmp_path / "render.json").write_text(json.dumps({"seed": 2018}))
    return str(tmp_path)


def test_scan_finds_the_ftt_and_mtct_runs_only(workdir):
    found = gallery.scan(workdir)
    assert len(found) == 12
    assert {(m, mode) for m, mode, *_ in found} == {
        ("FTT", "fc"), ("MTCT", "fc"), ("FTT", "all"), ("MTCT", "all")}


def test_diagnosis_and_choice(workdir, tmp_path):
    out = str(tmp_path / "out")
    data = gallery.run(workdir, out, log=lambda *_: None)
    cells = {(d["mode"], d["fraction"]): d for d in data["diagnosis"]}
    fc = cells[("fc", 1.0)]
    # MTCT - FTT: street-net gallery 45 - 50 = -5, shop-net 60 - 40 = +20.
    assert fc["mtct_minus_ftt"]["street"] == pytest.approx([-5.0] * 3)
    assert fc["mtct_minus_ftt"]["shop"] == pytest.approx([20.0] * 3)
    assert fc["lead_confirmed"]
    # Each with its chosen gallery: MTCT's shop-net 60 - FTT's street-net 50.
    assert fc["mtct_minus_ftt"]["chosen"] == pytest.approx([10.0] * 3)
    # all: +2 vs +18 -> also higher with the shop-net gallery.
    assert cells[("all", 1.0)]["lead_confirmed"]
    assert data["choice"]["MTCT fc"]["gallery"] == "shop"
    assert data["choice"]["FTT fc"]["gallery"] == "street"
    assert data["choice"]["MTCT all"]["gallery"] == "street"
    assert os.path.exists(os.path.join(out, "results", "gallery.json"))
    text = "\n".join(confirm_report.gallery_section(data))
    assert "| fc | 100% | MTCT | 46.00 ± 1.00 | 61.00 ± 1.00 |" in text
    assert "**confirmed**" in text


def test_a_workdir_without_runs_is_refused(tmp_path):
    with pytest.raises(ValueError, match="no finished FTT or MTCT run"):
        gallery.run(str(tmp_path), str(tmp_path / "out"))
