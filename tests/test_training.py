"""The fit loop: wall-clock budgets, epoch times, no spurious warnings."""

import csv
import os
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

from mtct_tf import callbacks, configs, training


def _config(shards_dir, *extra):
    return configs.build("smoke", None, [
        f"data.shards_dir={shards_dir}", "model.preset=tiny",
        "data.image_size=16", "data.batch_size=2", "data.shuffle_buffer=8",
        "shop.epochs=2", "shop.steps_per_epoch=3", "street.epochs=1",
        "street.steps_per_epoch=1", *extra])


def _history(stage_dir):
    with open(os.path.join(stage_dir, "history.csv")) as f:
        return list(csv.DictReader(f))


def test_budget_cosine_decay_follows_the_further_of_steps_and_time():
    progress = tf.Variable(0.0)
    lr = training.BudgetCosineDecay(1.0, 100, 0.05, progress)
    reference = keras.optimizers.schedules.CosineDecay(1.0, 100, alpha=0.05)
    for step in (0, 10, 50, 100, 150):
        assert float(lr(step)) == pytest.approx(float(reference(step)))
    progress.assign(0.5)
    assert float(lr(10)) == pytest.approx(float(reference(50)))
    assert float(lr(80)) == pytest.approx(float(reference(80)))
    progress.assign(1.0)
    assert float(lr(0)) == pytest.approx(0.05)
    again = training.BudgetCosineDecay.from_config(lr.get_config())
    assert float(again(50)) == pytest.approx(float(reference(50)))


def test_time_budget_stops_the_stage_after_its_seconds(
        tiny_shards, tmp_path, monkeypatch):
    _, shards, _ = tiny_shards
    # A clock that moves 0.25 s per reading: the budget's two readings
    # per step make a step 0.5 s, so 2 s allow 4 of the 200 steps.
    ticks = iter(np.arange(0, 1e6, 0.25))

    class Clock:
        perf_counter = staticmethod(lambda: float(next(ticks)))

    monkeypatch.setattr(callbacks, "time", Clock)
    config = _config(shards, "shop.epochs=2", "shop.steps_per_epoch=100",
                     "shop.max_seconds=2", "shop.validation_steps=1")
    done = training.run(config, str(tmp_path / "run"), "shop",
                        verbose=0)["shop"]
    assert done["stopped_by_max_seconds"] is True
    assert done["max_seconds"] == 2
    assert done["steps"] == 4
    rows = _history(str(tmp_path / "run" / "shop"))
    # The epoch the budget ended was validated, and it was the last.
    assert len(rows) == 1 and float(rows[0]["val_ce"]) > 0


def test_without_a_budget_every_step_runs(tiny_shards, tmp_path):
    _, shards, _ = tiny_shards
    config = _config(shards, "shop.validation_steps=1")
    done = training.run(config, str(tmp_path / "run"), "shop",
                        verbose=0)["shop"]
    assert done["steps"] == 6 and "max_seconds" not in done
    rows = _history(str(tmp_path / "run" / "shop"))
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    seconds = [float(r["epoch_seconds"]) for r in rows]
    assert all(0 < s < 120 for s in seconds)


def test_validation_over_the_whole_split_warns_of_nothing(tiny_shards,
                                                          tmp_path):
    """The domain filter hides the validation set's size from Keras, which
    then warned "Your input ran out of data" after every validation."""
    _, shards, _ = tiny_shards
    config = _config(shards)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        training.run(config, str(tmp_path / "run"), "all", verbose=0)
    messages = [str(w.message) for w in caught]
    assert not [m for m in messages if "ran out of data" in m], messages
    # The street stage validated every street val record: its val_ce is
    # the mean over all of them, as the evaluation pipeline computes it.
    rows = _history(str(tmp_path / "run" / "street"))
    assert np.isfinite(float(rows[-1]["val_ce"]))
