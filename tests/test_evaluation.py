"""Evaluation options: where the street-test crops come from."""

import os

import pytest

from mtct_tf import configs, evaluate, evaluation, metrics, runs, training
from mtct_tf.data import pipeline

from conftest import TINY_SCHEMA


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_shards):
    """A one-stage tiny run whose "detector crops" are a second shards dir.

    The stand-in crops directory holds the same records, so the
    ``detector`` source must score exactly what ``gt`` scores.
    """
    _, shards, _ = tiny_shards
    config = configs.build("smoke", None, [
        "method=no_adapt", f"data.shards_dir={shards}", f"data.street_shards_dir={shards}",
        "model.preset=tiny", "data.image_size=16", "data.batch_size=2",
        "data.shuffle_buffer=4", "shop.epochs=1", "shop.steps_per_epoch=1",
        "shop.validation_steps=1"])
    model_dir = str(tmp_path_factory.mktemp("eval") / "run")
    training.run(config, model_dir, verbose=0)
    return model_dir, shards


def _independent(model_dir, shards, crop_to_bbox):
    net = runs.load_mtn(os.path.join(model_dir, "shop", "model.keras"))
    ds = pipeline.make_dataset(
        pipeline.shard_files(shards, "train"), TINY_SCHEMA, image_size=16,
        batch_size=64, training=False, domain="street", margin=0.1,
        repeat=False, crop_to_bbox=crop_to_bbox)
    probs, labels, _ = evaluation.predict(net, ds)
    return metrics.evaluate_predictions(probs, labels)


def test_box_sources_score_what_they_say(run):
    model_dir, shards = run
    got = {box: evaluation.evaluate(model_dir, split="train",
                                    box_source=box, batch_size=4)
           for box in evaluation.BOX_SOURCES}
    for box, crop in (("gt", True), ("none", False)):
        want = _independent(model_dir, shards, crop)
        for a in want["ap"]:
            assert got[box]["ap"][a] == pytest.approx(want["ap"][a])
    assert got["detector"]["ap"] == pytest.approx(got["gt"]["ap"])
    # Street-to-shop retrieval of the same street images, in the report.
    for box in evaluation.BOX_SOURCES:
        r = got[box]["retrieval"]
        assert r["num_queries"] == 4 and r["num_gallery_items"] == 4
        assert r["topk_accuracy"]["20"] == 1.0  # Only 4 items to rank.
    assert got["detector"]["retrieval"] == got["gt"]["retrieval"]
    eval_dir = os.path.join(model_dir, "eval")
    for box in evaluation.BOX_SOURCES:
        assert os.path.isfile(os.path.join(
            eval_dir, f"shop_street_train_{box}.md"))
    with pytest.raises(ValueError, match="box_source must be one of"):
        evaluation.evaluate(model_dir, split="train", box_source="crop")


def test_cli_compares_box_sources_in_one_table(run, capsys):
    model_dir, _ = run
    assert evaluate.main(["--model_dir", model_dir, "--split", "train",
                          "--box_source", "gt", "--box_source", "none"]) == 0
    out = capsys.readouterr().out
    assert "| final model, annotated boxes |" in out
    assert "| final model, whole photos |" in out
    assert "Prediction spread" in out
    assert "Street-to-shop retrieval: 4 street queries" in out


def test_cli_puts_named_runs_in_one_table(run, capsys):
    model_dir, _ = run
    assert evaluate.main(["--split", "train",
                          "--row", f"No-Adapt={model_dir}@shop",
                          "--row", f"Last={model_dir}"]) == 0
    out = capsys.readouterr().out
    assert "| No-Adapt |" in out and "| Last |" in out
    for bad in (["--row", "nodir"], ["--row", "A="],
                ["--model_dir", model_dir, "--row", f"A={model_dir}"], []):
        with pytest.raises(SystemExit):
            evaluate.main(bad)
