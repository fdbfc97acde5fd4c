"""Gradient ratio of the street stage's losses and the weight choice."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from mtct_tf import attributes
from mtct_tf import loss_balance
from mtct_tf import model as model_lib
from mtct_tf import transfer

SCHEMA = attributes.AttributeSchema(
    "t", [attributes.Attribute("colour", ("red", "green", "blue")),
          attributes.Attribute("sleeve", ("short", "long"))])
B, S = 4, 16


def _batch():
    rng = np.random.RandomState(0)
    x = {k: rng.uniform(0, 255, (B, S, S, 3)).astype("float32")
         for k in ("image", "positive", "negative")}
    labels = {"colour": np.array([0, 2, -1, 1], "int32"),
              "sleeve": np.array([1, -1, 0, 0], "int32")}
    return x, {"street": labels, "shop": labels}


def _trainer(weight=1.0):
    keras.utils.set_random_seed(0)
    shop = model_lib.MTN(SCHEMA, preset="tiny", image_size=S, dropout=0.0)
    net = model_lib.MTN.from_config(shop.get_config())
    net.set_weights(shop.get_weights())
    transfer.freeze_trunk(net)
    return transfer.MTNTrainer(
        net, shop, cross_domain={"kind": "tste_poster", "weight": weight})


def test_gradient_norms_match_a_direct_tape():
    trainer, batch = _trainer(), _batch()
    got = loss_balance.gradient_norms(trainer, batch)
    variables = [v for layer in trainer.net.branch_layers()
                 for v in layer.trainable_weights]
    x, y = batch
    with tf.GradientTape(persistent=True) as tape:
        _, ce, cross, _, _, _ = trainer._forward(x, y["street"], y["shop"],
                                                 training=True)
    for key, loss in (("ce", ce), ("cross", cross)):
        # Logit layers do not reach the embedding: no cross gradient.
        grads = [g for g in tape.gradient(loss, variables) if g is not None]
        expected = np.sqrt(sum(float(tf.reduce_sum(g ** 2)) for g in grads))
        assert got[key] == pytest.approx(expected, rel=1e-5)
    assert got["ce"] > 0 and got["cross"] > 0
    # The norms are of the unweighted terms: the trainer's weight is not in.
    heavy = loss_balance.gradient_norms(_trainer(weight=50.0), batch)
    assert heavy["cross"] == pytest.approx(got["cross"], rel=1e-5)
    ds = tf.data.Dataset.from_tensors(batch).repeat(3)
    out = loss_balance.gradient_ratio(trainer, ds, batches=2)
    assert out["batches"] == 2
    assert out["ratio"] == pytest.approx(got["cross"] / got["ce"], rel=1e-5)
    assert out["balancing_weight"] == pytest.approx(1 / out["ratio"])


def test_weight_grid_and_selection():
    assert loss_balance.weight_grid(342.84) == (86.0, 340.0, 1400.0)
    assert loss_balance.weight_grid(0.0123, (1.0, 10.0)) == (0.012, 0.12)
    scores = {86.0: [60.0, 50.0], 340.0: [58.0, 54.0], 1400.0: [40.0, 70.0]}
    assert loss_balance.select_weight(scores) == 340.0
    # A tie goes to the smaller weight; single scores work too.
    assert loss_balance.select_weight({3.0: 0.5, 1.0: 0.5}) == 1.0
    with pytest.raises(ValueError, match="empty"):
        loss_balance.select_weight({})
