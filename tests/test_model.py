"""MTN: outputs, presets, serialisation, FLOP counting, trunk/branch split."""

import keras
import numpy as np
import pytest

from mtct_tf import attributes
from mtct_tf import model as model_lib

SCHEMA = attributes.AttributeSchema(
    "t", [attributes.Attribute("colour", ("red", "green", "blue")),
          attributes.Attribute("sleeve", ("short", "long"))])


def _net(**kwargs):
    kwargs = {"preset": "tiny", "image_size": 16, **kwargs}
    return model_lib.MTN(SCHEMA, **kwargs)


def test_outputs_are_named_softmax_dicts():
    net = _net()
    x = np.random.RandomState(0).uniform(0, 255, (3, 16, 16, 3))
    out = net(x.astype("float32"))
    assert set(out) == {"colour", "sleeve", "embedding"}
    assert out["colour"].shape == (3, 3) and out["sleeve"].shape == (3, 2)
    np.testing.assert_allclose(np.sum(out["colour"], -1), 1.0, rtol=1e-5)
    # Embedding = concat of the two branches' second FC layers.
    assert out["embedding"].shape == (3, 2 * net.fc_units)
    assert net.get_layer("colour").name == "colour"


def test_keras_file_round_trip(tmp_path):
    net = _net()
    x = np.random.RandomState(1).uniform(0, 255, (2, 16, 16, 3))
    x = x.astype("float32")
    path = str(tmp_path / "m.keras")
    net.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert isinstance(loaded, model_lib.MTN)
    assert loaded.num_values == net.num_values
    a, b = net(x), loaded(x)
    for k in a:
        np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]))


def test_trunk_and_branches_partition_the_weights():
    net = _net()
    branch = net.branch_layers()
    trunk = net.trunk_layers()
    names = {layer.name for layer in branch}
    assert {"colour_fc1", "colour_fc2", "colour_logits", "sleeve_fc1"} <= names
    assert not names & {layer.name for layer in trunk}
    n_weights = sum(len(layer.weights) for layer in branch + trunk)
    assert n_weights == len(net.weights)


def test_flops_of_a_known_net():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same")(inputs)  # 2*9*3*4*64
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(5)(x)  # 2*4*5
    m = keras.Model(inputs, x)
    assert model_lib.count_flops(m) == 2 * 9 * 3 * 4 * 64 + 2 * 4 * 5


def test_paper_preset_matches_the_poster_table():
    net = model_lib.MTN(SCHEMA, preset="paper")
    assert net.image_size == 224
    channels = {layer.name: layer.filters for layer in net.layers
                if isinstance(layer, keras.layers.Conv2D)}
    assert channels["conv1"] == 96 and channels["conv4"] == 1024
    assert channels["conv4_3"] == 384 and channels["conv5_2"] == 512
    assert net.get_layer("conv2").kernel_size == (5, 5)
    assert net.get_layer("colour_fc1").units == 1024


@pytest.mark.parametrize("bad, match", [
    ({"preset": "huge"}, "preset"),
    ({"backbone": "vgg"}, "backbone"),
    ({"weights": "imagenet"}, "NIN trunk"),
])
def test_bad_arguments(bad, match):
    with pytest.raises(ValueError, match=match):
        _net(**bad)


def test_application_backbone_shares_the_heads():
    net = model_lib.MTN(SCHEMA, preset="tiny", image_size=32,
                        backbone="mobilenetv3small")
    out = net(np.zeros((1, 32, 32, 3), "float32"))
    assert out["sleeve"].shape == (1, 2)
    assert net.get_layer("backbone") in net.trunk_layers()


@pytest.mark.parametrize("policy,elementwise", [
    ("mixed_bfloat16", "float32"), ("mixed_float16", "float16"),
    ("float32", "float32")])
def test_trunk_dtypes_under_mixed_precision(policy, elementwise, tmp_path):
    """Under mixed_bfloat16 only the convolutions compute in bfloat16."""
    keras.config.set_dtype_policy(policy)
    try:
        net = _net()
    finally:
        keras.config.set_dtype_policy("float32")
    conv = net.get_layer("conv1")
    compute = "float32" if policy == "float32" else policy.split("_")[1]
    assert conv.compute_dtype == compute
    for name in ("conv1_bn", "conv1_relu", "pool1"):
        assert net.get_layer(name).compute_dtype == elementwise, name
    x = np.random.RandomState(2).uniform(0, 255, (2, 16, 16, 3))
    out = net(x.astype("float32"))
    assert np.all(np.isfinite(np.asarray(out["colour"], "float32")))
    # A model trained this way saves and loads as .keras.
    path = str(tmp_path / "m.keras")
    net.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    out = loaded(x.astype("float32"))
    assert np.all(np.isfinite(np.asarray(out["colour"], "float32")))


def test_embedding_is_taken_before_dropout():
    """With the trunk frozen (batch norm in inference mode), dropout is the
    only layer that differs between training and inference: the embedding
    must not see it, the attribute outputs must."""
    from mtct_tf import transfer

    keras.utils.set_random_seed(0)
    net = _net(dropout=0.5)
    transfer.freeze_trunk(net)
    x = np.random.RandomState(0).uniform(0, 255, (4, 16, 16, 3)).astype(
        "float32")
    train, infer = net(x, training=True), net(x, training=False)
    np.testing.assert_allclose(np.asarray(train["embedding"]),
                               np.asarray(infer["embedding"]), rtol=1e-6)
    assert np.abs(np.asarray(infer["embedding"])).max() > 0
    assert not np.allclose(np.asarray(train["colour"]),
                           np.asarray(infer["colour"]))


def test_joint_head_is_one_branch_with_a_softmax_per_attribute(tmp_path):
    """JAN: one shared branch, one Dense over every value, each
    attribute's slice under its own softmax; loads in safe mode."""
    net = _net(heads="joint")
    x = np.random.RandomState(2).uniform(0, 255, (3, 16, 16, 3))
    x = x.astype("float32")
    out = net(x)
    assert set(out) == {"colour", "sleeve", "embedding"}
    assert out["embedding"].shape == (3, net.fc_units)
    logits = keras.Model(net.input, net.get_layer("joint_logits").output)
    assert logits.output.shape[-1] == 5
    z = np.asarray(logits(x))
    for name, (a, b) in (("colour", (0, 3)), ("sleeve", (3, 5))):
        e = np.exp(z[:, a:b] - z[:, a:b].max(1, keepdims=True))
        np.testing.assert_allclose(np.asarray(out[name]),
                                   e / e.sum(1, keepdims=True), rtol=1e-5)
    names = {layer.name for layer in net.branch_layers()}
    assert {"joint_fc1", "joint_fc2", "joint_logits", "joint_colour",
            "colour", "sleeve"} <= names
    assert not any(n.startswith("colour_fc") for n in names)
    # Fewer head weights than the MTN's two branches.
    mtn = _net()
    assert net.count_params() < mtn.count_params()
    path = str(tmp_path / "jan.keras")
    net.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert loaded.heads == "joint"
    for k, v in net(x).items():
        np.testing.assert_array_equal(np.asarray(v), np.asarray(loaded(x)[k]))
    # An MTN's config has no heads entry (files from before load as is).
    assert "heads" not in mtn.get_config()
    with pytest.raises(ValueError, match="heads"):
        _net(heads="shared")
