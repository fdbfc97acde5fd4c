"""MTNTrainer: losses logged right, FC-only fine-tuning, serialisation."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from mtct_tf import attributes
from mtct_tf import losses
from mtct_tf import model as model_lib
from mtct_tf import transfer
from mtct_tf.configs import CrossDomainConfig

SCHEMA = attributes.AttributeSchema(
    "t", [attributes.Attribute("colour", ("red", "green", "blue")),
          attributes.Attribute("sleeve", ("short", "long"))])
B, S = 4, 16


def _net(seed=0):
    keras.utils.set_random_seed(seed)
    return model_lib.MTN(SCHEMA, preset="tiny", image_size=S, dropout=0.0)


def _images(seed, n=B):
    return np.random.RandomState(seed).uniform(0, 255, (n, S, S, 3)).astype(
        "float32")


LABELS = {"colour": np.array([0, 2, -1, 1], "int32"),
          "sleeve": np.array([1, -1, -1, 0], "int32")}


def _triplets():
    x = {"image": _images(1), "positive": _images(2), "negative": _images(3)}
    y = {"street": LABELS, "shop": {"colour": np.array([0, 2, 1, 1], "int32"),
                                    "sleeve": np.array([1, 0, 0, 0], "int32")}}
    return tf.data.Dataset.from_tensors((x, y))


def test_shop_stage_logs_the_masked_multitask_loss():
    net = _net()
    trainer = transfer.MTNTrainer(net)
    trainer.compile(optimizer=keras.optimizers.SGD(0.0))
    x = _images(0)
    logs = trainer.evaluate(x, LABELS, batch_size=B, verbose=0,
                            return_dict=True)
    out = net(x)
    expected, per = losses.multitask_loss(
        LABELS, {a: out[a] for a in SCHEMA.names})
    assert logs["loss"] == pytest.approx(float(expected), rel=1e-5)
    assert logs["ce"] == pytest.approx(float(expected), rel=1e-5)
    assert logs["loss"] > 0
    assert logs["sleeve_loss"] == pytest.approx(float(per["sleeve"]),
                                                rel=1e-5)
    hits = np.argmax(np.asarray(out["colour"]), -1)[[0, 1, 3]] == [0, 2, 1]
    assert logs["colour_acc"] == pytest.approx(hits.mean())
    # fit's logged loss is ours too (Keras 3's built-in tracker would say 0);
    # in training mode batch norm uses the batch's statistics.
    out = net(x, training=True)
    expected, _ = losses.multitask_loss(
        LABELS, {a: out[a] for a in SCHEMA.names})
    hist = trainer.fit(x, LABELS, batch_size=B, epochs=1, verbose=0)
    assert hist.history["loss"][0] == pytest.approx(float(expected), rel=1e-5)


def test_street_stage_trains_only_the_branches():
    shop = _net(0)
    street = model_lib.MTN.from_config(shop.get_config())
    street.set_weights(shop.get_weights())
    transfer.freeze_trunk(street)
    trainer = transfer.MTNTrainer(street, shop, cross_domain=CrossDomainConfig(
        kind="tste_poster", weight=0.5))
    trainer.compile(optimizer=keras.optimizers.Adam(1e-2))
    before_shop = [w.copy() for w in shop.get_weights()]
    trunk_before = {v.path: np.array(v) for layer in street.trunk_layers()
                    for v in layer.weights}
    branch_before = {v.path: np.array(v) for layer in street.branch_layers()
                     for v in layer.weights}
    logs = trainer.evaluate(_triplets(), verbose=0, return_dict=True)
    assert logs["loss"] == pytest.approx(
        logs["ce"] + 0.5 * logs["cross_domain"], rel=1e-5)
    assert logs["cross_domain"] != 0
    trainer.fit(_triplets().repeat(3), epochs=1, verbose=0)
    for a, b in zip(before_shop, shop.get_weights()):
        np.testing.assert_array_equal(a, b)  # f_s is frozen.
    for layer in street.trunk_layers():
        for v in layer.weights:
            np.testing.assert_array_equal(trunk_before[v.path], np.array(v))
    moved = [not np.array_equal(branch_before[v.path], np.array(v))
             for layer in street.branch_layers() for v in layer.trainable_weights]
    assert moved and all(moved)


def test_cross_domain_loss_moves_the_embedding():
    """Training on the t-STE term alone lowers it (the sign is right)."""
    shop = _net(0)
    street = model_lib.MTN.from_config(shop.get_config())
    street.set_weights(shop.get_weights())
    trainer = transfer.MTNTrainer(street, shop, cross_domain=CrossDomainConfig(
        kind="tste_canonical", weight=1.0))
    trainer.compile(optimizer=keras.optimizers.Adam(1e-2))
    first = trainer.evaluate(_triplets(), verbose=0, return_dict=True)
    trainer.fit(_triplets().repeat(30), epochs=1, verbose=0)
    last = trainer.evaluate(_triplets(), verbose=0, return_dict=True)
    assert last["cross_domain"] < first["cross_domain"]


def test_end_to_end_uses_shop_labels_through_one_network():
    net = _net()
    trainer = transfer.MTNTrainer(
        net, None, cross_domain=CrossDomainConfig(kind="triplet"),
        shop_loss_weight=1.0)
    trainer.compile(optimizer=keras.optimizers.SGD(0.0))
    logs = trainer.evaluate(_triplets(), verbose=0, return_dict=True)
    (x, y), = _triplets().as_numpy_iterator()
    pos = net(x["positive"])
    shop_ce, _ = losses.multitask_loss(
        y["shop"], {a: pos[a] for a in SCHEMA.names})
    assert logs["loss"] == pytest.approx(
        logs["ce"] + logs["cross_domain"] + float(shop_ce), rel=1e-4)


def test_serialisation_round_trip(tmp_path):
    shop = _net(0)
    street = model_lib.MTN.from_config(shop.get_config())
    trainer = transfer.MTNTrainer(street, shop, cross_domain=CrossDomainConfig(
        kind="contrastive", weight=0.3, alpha=2.0))
    config = trainer.get_config()
    again = transfer.MTNTrainer.from_config(config)
    assert again.kind == "contrastive" and again.weight == 0.3
    assert again.shop_net is not None and not again.shop_net.trainable


def test_unknown_kind_and_weights_are_errors():
    with pytest.raises(ValueError, match="kind"):
        transfer.MTNTrainer(_net(), cross_domain={"kind": "magic"})
    with pytest.raises(ValueError, match="unknown attributes"):
        transfer.MTNTrainer(_net(), attribute_weights={"hat": 1.0})
