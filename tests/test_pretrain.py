"""Stage 0: pre-training on mocked TFDS imagenet2012 and restoring the trunk.

No download: ``tfds.testing.mock_data`` with ``MockPolicy.USE_CODE`` builds
imagenet2012's info from its code (1,000 classes, no split sizes) and serves
random JPEGs; ``download_and_prepare`` becomes a no-op, so the manual
directory is never read. Every split of a mock serves the same examples.
"""

import json
import os
import random
import signal
import subprocess
import sys
import types

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from mtct_tf import configs, pretrain, stages, training
from mtct_tf import model as model_lib

from conftest import history_epochs, run_and_kill

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
S = 32
SCHEMA = {"colour": 4, "sleeve": 2}


def _config(**overrides):
    base = {"model.preset": "tiny", "data.image_size": S,
            "data.batch_size": 4, "data.shuffle_buffer": 8,
            "shop.epochs": 1, "shop.steps_per_epoch": 2,
            "shop.validation_steps": 1,
            "pretrain.epochs": 1, "pretrain.steps_per_epoch": 2,
            "pretrain.validation_steps": 1}
    base.update(overrides)
    return configs.build("smoke", overrides=[f"{k}={v}"
                                            for k, v in base.items()])


def _mock():
    return tfds.testing.mock_data(
        num_examples=8, policy=tfds.testing.MockPolicy.USE_CODE)


def _arrays(variables):
    return [np.array(v) for v in variables]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """(config, model_dir, done.json): stage 0, 2 steps on mocked ImageNet."""
    model_dir = str(tmp_path_factory.mktemp("pretrain_run"))
    config = _config()
    with _mock():
        info = training.run(config, model_dir, "pretrain", verbose=0,
                            source=pretrain.TfdsSource(
                                "imagenet2012",
                                manual_dir=os.path.join(model_dir, "manual"),
                                val_split="validation"))["pretrain"]
    return config, model_dir, info


def test_stage0_writes_its_outputs(pretrained):
    config, model_dir, info = pretrained
    out = os.path.join(model_dir, "pretrain")
    assert info["num_classes"] == 1000
    assert info["steps"] == 2 and info["epochs"] == 1
    assert np.isfinite(info["best_val_loss"])
    with open(os.path.join(out, "done.json")) as f:
        assert json.load(f) == json.loads(json.dumps(info))
    for name in ("trunk.weights.h5", "best.weights.h5", "history.csv",
                 "config.yaml"):
        assert os.path.isfile(os.path.join(out, name)), name
    assert os.listdir(os.path.join(out, "logs"))
    with open(os.path.join(out, "history.csv")) as f:
        assert len(f.read().strip().splitlines()) == 2  # Header + 1 epoch.
    # The trunk file holds the trunk only: no head, no branch.
    weights, metadata = pretrain.load_trunk(out)
    assert "conv1" in weights and "conv5_2_bn" in weights
    assert not [k for k in weights if k.startswith(("pretrain", "colour"))]
    assert metadata["num_classes"] == 1000
    assert metadata["model"]["width"] == model_lib.PRESETS["tiny"]["width"]
    # A finished stage is not trained again.
    with _mock():
        again = training.run(config, model_dir, "pretrain", verbose=0,
                             source=pretrain.TfdsSource(
                                 "imagenet2012",
                                 val_split="validation"))["pretrain"]
    assert again == json.loads(json.dumps(info))


def test_shop_net_starts_from_the_pretrained_trunk(pretrained, capsys):
    config, model_dir, _ = pretrained
    # The reference, independent of our trunk file: the best classifier,
    # reloaded through Keras' own weights format.
    reference_net = stages.build_mtn(config, {"unused": 2})
    classifier = pretrain.build_classifier(reference_net, 1000)
    classifier.load_weights(
        os.path.join(model_dir, "pretrain", "best.weights.h5"))
    # NIN "tiny": conv5_2 has max(4, 512 * 0.0625) = 32 channels.
    assert classifier.get_layer("pretrain_logits").kernel.shape == (32, 1000)

    keras.utils.set_random_seed(1)
    net = stages.build_mtn(config, SCHEMA)
    fresh_branches = {layer.name: _arrays(layer.weights)
                      for layer in net.branch_layers() if layer.weights}
    initial_trunk = {k: _arrays(v)
                     for k, v in pretrain.trunk_variables(net).items()}
    report = pretrain.restore_trunk(net, os.path.join(model_dir, "pretrain"))

    expected = pretrain.trunk_variables(reference_net)
    assert report["restored"] == list(expected)
    assert not report["missing"] and not report["mismatched"]
    assert not report["unexpected"]
    for key, variables in pretrain.trunk_variables(net).items():
        for got, want, init in zip(variables, expected[key],
                                   initial_trunk[key]):
            np.testing.assert_array_equal(np.array(got), np.array(want))
            if "moving_variance" not in got.path:
                assert not np.array_equal(np.array(got), init), got.path
    # Heads: untouched by the restore (fresh), and nothing like the
    # classifier's 1000-way head.
    for layer in net.branch_layers():
        for got, init in zip(layer.weights, fresh_branches.get(layer.name,
                                                               [])):
            np.testing.assert_array_equal(np.array(got), init)
    assert not [layer for layer in net.layers
                if layer.name.startswith("pretrain")]
    n = len(expected)
    assert n == 2 * 16  # 16 convs, each with its batch norm.
    assert f"restored {n} of {n} trunk layers" in capsys.readouterr().out


def test_width_mismatch_raises_naming_the_layers(pretrained):
    _, model_dir, _ = pretrained
    net = model_lib.MTN(SCHEMA, preset="tiny", image_size=S, width=0.125)
    before = _arrays(net.weights)
    with pytest.raises(ValueError, match="No trunk weight"):
        pretrain.restore_trunk(net, os.path.join(model_dir, "pretrain"),
                               verbose=False)
    with pytest.raises(ValueError, match="No trunk weight") as e:
        pretrain.restore_trunk(net, os.path.join(model_dir, "pretrain"),
                               strict=False, verbose=False)
    message = str(e.value)
    for layer in ("SHAPE MISMATCH conv1:", "SHAPE MISMATCH conv1_bn:",
                  "SHAPE MISMATCH conv5_2:"):
        assert layer in message
    assert "(7, 7, 3, 12)" in message and "(7, 7, 3, 6)" in message
    for got, want in zip(net.weights, before):  # Nothing assigned.
        np.testing.assert_array_equal(np.array(got), want)


def test_missing_and_unexpected_layers_are_reported(pretrained, tmp_path,
                                                    capsys):
    config, model_dir, _ = pretrained
    path = str(tmp_path / "edited.weights.h5")
    with open(pretrain.resolve_path(os.path.join(model_dir, "pretrain")),
              "rb") as src, open(path, "wb") as dst:
        dst.write(src.read())
    with h5py.File(path, "a") as f:
        keys = json.loads(f.attrs["layer_keys"])
        del f["conv3_1_bn"]
        keys.remove("conv3_1_bn")
        f.create_group("extra").attrs["weight_names"] = "[]"
        keys.append("extra")
        f.attrs["layer_keys"] = json.dumps(keys)

    net = stages.build_mtn(config, SCHEMA)
    before = _arrays(net.get_layer("conv3_1_bn").weights)
    untouched = _arrays(net.get_layer("conv1").weights)
    with pytest.raises(ValueError, match=r"missing \['conv3_1_bn'\]"):
        pretrain.restore_trunk(net, path)
    for got, want in zip(net.get_layer("conv1").weights, untouched):
        np.testing.assert_array_equal(np.array(got), want)
    capsys.readouterr()

    report = pretrain.restore_trunk(net, path, strict=False)
    printed = capsys.readouterr().out
    assert report["missing"] == ["conv3_1_bn"]
    assert report["unexpected"] == ["extra"]
    assert len(report["restored"]) == 2 * 16 - 1
    assert "MISSING from the file (1): conv3_1_bn" in printed
    assert "UNEXPECTED in the file, ignored (1): extra" in printed
    for got, want in zip(net.get_layer("conv3_1_bn").weights, before):
        np.testing.assert_array_equal(np.array(got), want)


def test_applications_backbone_round_trip_by_nested_name(tmp_path):
    kwargs = dict(preset="tiny", image_size=S, backbone="mobilenetv3small")
    keras.utils.set_random_seed(0)
    source = model_lib.MTN(SCHEMA, **kwargs)
    classifier = pretrain.build_classifier(source, 10)
    assert classifier(np.zeros((2, S, S, 3), "float32")).shape == (2, 10)
    path = str(tmp_path / "trunk.weights.h5")
    pretrain.save_trunk(source, path)
    keras.utils.set_random_seed(1)
    target = model_lib.MTN({"other": 3}, **kwargs)
    report = pretrain.restore_trunk(target, path, verbose=False)
    assert "backbone/conv" in report["restored"]
    assert len(report["restored"]) == len(pretrain.trunk_variables(source))
    for got, want in zip(target.get_layer("backbone").weights,
                         source.get_layer("backbone").weights):
        np.testing.assert_array_equal(np.array(got), np.array(want))


def test_preprocessing_is_the_eval_crop_of_the_whole_image():
    with _mock():
        builder = pretrain.get_builder("imagenet2012", prepare=False)
        ds = pretrain.make_dataset(builder, "validation", image_size=S,
                                   batch_size=3, training=False)
        images, labels = next(iter(ds))
        raw = list(builder.as_dataset(
            split="validation",
            decoders={"image": tfds.decode.SkipDecoding()}).take(3))
        train = pretrain.make_dataset(builder, "train", image_size=S,
                                      batch_size=3, training=True, seed=0)
        augmented, _ = next(iter(train))
    assert images.dtype == tf.float32 and images.shape == (3, S, S, 3)
    for i, example in enumerate(raw):
        # The whole image, decoded and resized with no antialiasing.
        decoded = tf.io.decode_jpeg(example["image"], channels=3)
        want = tf.image.resize(decoded, [S, S], antialias=False)
        np.testing.assert_allclose(images[i], want, atol=1e-3)
        assert int(labels[i]) == int(example["label"])
    assert augmented.shape == (3, S, S, 3)
    assert 0.0 <= float(tf.reduce_min(augmented)) <= float(
        tf.reduce_max(augmented)) <= 255.0


def test_split_resolution_and_bad_arguments(tmp_path):
    def fake(splits):
        return types.SimpleNamespace(
            name="x", info=types.SimpleNamespace(splits=splits))

    assert pretrain.resolve_splits(fake({"train": 1, "validation": 1})) == (
        "train", "validation")
    assert pretrain.resolve_splits(fake({"train": 1, "test": 1})) == (
        "train", "test")
    assert pretrain.resolve_splits(fake({"train": 1})) == (
        "train[2%:]", "train[:2%]")
    assert pretrain.resolve_splits(fake({}), "train", "val") == (
        "train", "val")
    with pytest.raises(ValueError, match="pass val_split"):
        pretrain.resolve_splits(fake({}))
    with pytest.raises(ValueError, match="--tfds_name"):
        training.run(_config(), str(tmp_path), "pretrain",
                     source=pretrain.TfdsSource(None))
    with pytest.raises(FileNotFoundError, match="--stage pretrain"):
        pretrain.restore_trunk(None, str(tmp_path / "nothing.weights.h5"))
    with pytest.raises(FileNotFoundError, match="run --stage pretrain"):
        pretrain.restore_trunk(None, str(tmp_path))
    text = types.SimpleNamespace(
        name="text_ds", info=types.SimpleNamespace(
            supervised_keys=("text", "label"),
            features=tfds.features.FeaturesDict({
                "text": tfds.features.Text(),
                "label": tfds.features.ClassLabel(num_classes=2)})))
    with pytest.raises(ValueError, match="not an image-classification"):
        pretrain.dataset_keys(text)


def test_shop_stage_init_from_restores_the_trunk(pretrained, tiny_shards,
                                                 tmp_path, monkeypatch):
    config, model_dir, _ = pretrained
    _, shards, _ = tiny_shards
    config = _config(**{"data.shards_dir": shards,
                        "init_from": os.path.join(model_dir, "pretrain",
                                                  "trunk.weights.h5"),
                        "shop.steps_per_epoch": 1})
    seen = {}
    real = pretrain.restore_trunk

    def spy(net, path, **kwargs):
        branches = [_arrays(layer.weights) for layer in net.branch_layers()]
        report = real(net, path, **kwargs)
        seen["trunk"] = {k: _arrays(v)
                         for k, v in pretrain.trunk_variables(net).items()}
        seen["branches_changed"] = any(
            not np.array_equal(a, b)
            for layer, before in zip(net.branch_layers(), branches)
            for a, b in zip(_arrays(layer.weights), before))
        return report

    monkeypatch.setattr(pretrain, "restore_trunk", spy)
    training.train_stage(config, str(tmp_path / "run"), "shop", verbose=0)
    saved, _ = pretrain.load_trunk(config.init_from)
    assert set(seen["trunk"]) == set(saved)
    for key, arrays in seen["trunk"].items():
        for got, (_, want) in zip(arrays, saved[key]):
            np.testing.assert_array_equal(got, want)
    assert not seen["branches_changed"]
    assert os.path.isfile(str(tmp_path / "run" / "shop" / "done.json"))


# --------------------------------------------------------------------------
# Stage 0 killed with SIGKILL, then rerun: it resumes like the other stages.

_KILL_EPOCHS, _KILL_STEPS = 2, 3
_STAGE0_SCRIPT = """
import os, sys
import tensorflow_datasets as tfds
from mtct_tf import configs, pretrain, training
model_dir = sys.argv[1]
config = configs.build("smoke", overrides=sys.argv[2:])
with tfds.testing.mock_data(num_examples=8,
                            policy=tfds.testing.MockPolicy.USE_CODE):
    training.run(config, model_dir, "pretrain", verbose=0,
                 source=pretrain.TfdsSource(
                     "imagenet2012", val_split="validation",
                     manual_dir=os.path.join(model_dir, "manual")))
"""


def _stage0_command(model_dir):
    overrides = {"model.preset": "tiny", "data.image_size": S,
                 "data.batch_size": 4, "data.shuffle_buffer": 8,
                 "pretrain.epochs": _KILL_EPOCHS,
                 "pretrain.steps_per_epoch": _KILL_STEPS,
                 "pretrain.validation_steps": 1,
                 "runtime.backup_every_steps": 1}
    return [sys.executable, "-c", _STAGE0_SCRIPT, model_dir,
            *(f"{k}={v}" for k, v in overrides.items())]


def test_stage0_killed_mid_epoch_resumes_from_its_backup(tmp_path):
    """SIGKILL at a random step of stage 0's second epoch: the rerun
    resumes in that epoch (epoch 0 is not trained again), through the same
    fit loop, backup and write directory as the other stages."""
    model_dir = str(tmp_path / "run")
    folder = os.path.join(model_dir, "pretrain")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="",
               PYTHONPATH=REPO)
    returncode, out, where = run_and_kill(
        _stage0_command(model_dir), env, folder, _KILL_STEPS,
        random.Random())
    assert returncode == -signal.SIGKILL, (where, out[-3000:])
    assert not os.path.exists(os.path.join(folder, "done.json"))
    assert history_epochs(folder) == [0], where

    again = subprocess.run(_stage0_command(model_dir), env=env,
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-3000:]
    assert "Traceback" not in again.stderr, again.stderr[-3000:]
    # Resumed in epoch 1, not started again from epoch 0.
    assert history_epochs(folder) == [0, 1], where
    with open(os.path.join(folder, "done.json")) as f:
        info = json.load(f)
    assert info["steps"] == _KILL_EPOCHS * _KILL_STEPS
    assert np.isfinite(info["best_val_loss"])
    assert not os.path.exists(os.path.join(folder, "backup"))
    weights, _ = pretrain.load_trunk(folder)
    assert "conv1" in weights
