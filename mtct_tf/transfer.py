"""``MTNTrainer``: the multi-task and curriculum-transfer training step.

One ``keras.Model`` subclass trains the MTN in every stage and baseline
(``stages.py`` builds it):

* shop stage, UD, FTT: ``MTNTrainer(net)`` with no cross-domain loss;
  batches are ``(images, {attribute: labels})``.
* MTCT street stage: ``MTNTrainer(street_net, shop_net, cross_domain=
  config.street.cross_domain)``; ``shop_net`` is the frozen stage-1 network
  ``f_s``, ``street_net`` the network ``f_t`` being fine-tuned (initialised
  from it). Batches are triplets ``({"image", "positive", "negative"},
  {"street": labels, "shop": labels})``: street anchor, shop image of the
  same item, shop image of another item.
* end-to-end: ``MTNTrainer(net, None, cross_domain=..., shop_loss_weight=1)``:
  ``f_s = f_t = net``, all trainable, shop labels supervised in the same
  step.

The loss is the masked multi-task cross-entropy on the anchors' labels plus
``weight`` x the mean cross-domain loss over the batch's triplets (SPEC §4):

    anchor = f_t(I_i)["embedding"],  positive = f_s(I_p)["embedding"],
    neg_shop = f_s(I_n)["embedding"], neg_street = f_t(I_n)["embedding"].

Every component and the total are tracked by our own metrics (Keras 3's
``compute_loss`` would not update its ``loss`` tracker from a custom step):
``<attribute>_loss`` and, for a softmax head, ``<attribute>_acc`` (top-1
accuracy over labelled images) or, for a multilabel head,
``<attribute>_top3_recall`` (the fraction of positive labels ranked among the
head's 3 highest scores of their image; binary accuracy would be swamped by
the negatives). A multilabel head of 3 values or fewer ranks every value
among its 3 best, so its recall would be 1 by construction: it tracks
``<attribute>_binary_acc`` (known labels predicted at the 0.5 threshold)
instead.

Under a ``tf.distribute`` strategy each replica holds a share of the global
batch and the optimiser sums the replicas' gradients. Each masked mean is
therefore divided by the *global* count of its labels (all-reduced across
replicas, one small all-reduce per step; ``distribute.global_counts`` and
``losses.global_shares``) and the triplet mean by the global number of
triplets: the replicas' losses add up to exactly the loss of the
global batch, and so do their gradients, even when replicas hold different
numbers of labels. (Dividing each replica's own mean by the number of
replicas would weight a label on a sparsely labelled replica more than one
on a densely labelled replica.) The tracked metrics report global values.
"""

import dataclasses

import keras
import tensorflow as tf

from mtct_tf import attributes as attributes_lib
from mtct_tf import configs as configs_lib
from mtct_tf import distribute
from mtct_tf import losses as losses_lib

# Training-time recall of multilabel heads counts the k best of each image.
TRACKED_TOP_K = 3


def _mean_loss(value):
    return keras.metrics.Mean(name=value)


@keras.saving.register_keras_serializable(package="mtct_tf")
class MTNTrainer(keras.Model):
    """Trains an ``MTN`` with multi-task and cross-domain losses.

    Args:
        net: the ``MTN`` being trained (``f_t``).
        shop_net: the frozen stage-1 ``MTN`` (``f_s``), or ``None`` to use
            ``net`` for both (end-to-end training).
        cross_domain: a ``configs.CrossDomainConfig`` (kind, weight and the
            loss's parameters: ``beta=0`` means the canonical
            ``-(alpha + 1) / 2``, ``margin=0`` the loss's default), a dict
            of its fields, or ``None``: no cross-domain loss.
        attribute_weights: dict attribute -> weight of its cross-entropy
            (default 1 each).
        shop_loss_weight: weight of the cross-entropy on the positives' shop
            labels (end-to-end training); 0 leaves shop labels unused.
        label_smoothing: of every softmax head's cross-entropy target
            (``losses.masked_sparse_categorical_crossentropy``).
    """

    def __init__(self, net, shop_net=None, cross_domain=None,
                 attribute_weights=None, shop_loss_weight=0.0,
                 label_smoothing=0.0, **kwargs):
        super().__init__(**kwargs)
        if cross_domain is None:
            cross_domain = configs_lib.CrossDomainConfig(kind="none")
        elif isinstance(cross_domain, dict):
            cross_domain = configs_lib.CrossDomainConfig(**cross_domain)
        kind = cross_domain.kind
        if kind not in configs_lib.CROSS_DOMAIN_KINDS:
            raise ValueError(
                f"`kind` must be one of {configs_lib.CROSS_DOMAIN_KINDS}. "
                f"Received: kind={kind!r}"
            )
        self.net = net
        self.shop_net = shop_net
        if shop_net is not None:
            shop_net.trainable = False
        self.cross_domain = dataclasses.replace(cross_domain)
        self.kind = kind
        self.weight = float(cross_domain.weight)
        self.alpha = float(cross_domain.alpha)
        self.beta = float(cross_domain.beta)
        self.margin = float(cross_domain.margin)
        self.normalize = bool(cross_domain.normalize)
        self.attribute_names = tuple(net.num_values)
        kinds = getattr(net, "kinds", None) or {}
        self.kinds = {a: kinds.get(a, attributes_lib.SOFTMAX)
                      for a in self.attribute_names}
        self.attribute_weights = dict(attribute_weights or {})
        unknown = set(self.attribute_weights) - set(self.attribute_names)
        if unknown:
            raise ValueError(
                f"`attribute_weights` names unknown attributes {sorted(unknown)}"
                f"; the model has {self.attribute_names}"
            )
        self.shop_loss_weight = float(shop_loss_weight)
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError("`label_smoothing` must be in [0, 1). "
                             f"Received: label_smoothing={label_smoothing}")
        self.label_smoothing = float(label_smoothing)

        self.loss_tracker = _mean_loss("loss")
        self.ce_tracker = _mean_loss("ce")
        self.cross_tracker = _mean_loss("cross_domain")
        self.attr_loss = {a: _mean_loss(f"{a}_loss")
                          for a in self.attribute_names}
        self.attr_acc = {
            a: _mean_loss(f"{a}_acc") for a in self.attribute_names
            if self.kinds[a] == attributes_lib.SOFTMAX}
        self.attr_recall = {
            a: _mean_loss(f"{a}_top{TRACKED_TOP_K}_recall"
                          if net.num_values[a] > TRACKED_TOP_K
                          else f"{a}_binary_acc")
            for a in self.attribute_names
            if self.kinds[a] == attributes_lib.MULTILABEL}

    @property
    def metrics(self):
        out = [self.loss_tracker, self.ce_tracker]
        if self.kind != "none":
            out.append(self.cross_tracker)
        for a in self.attribute_names:
            out += [self.attr_loss[a],
                    self.attr_acc[a] if a in self.attr_acc
                    else self.attr_recall[a]]
        return out

    def call(self, inputs, training=False):
        if isinstance(inputs, dict):
            inputs = inputs["image"]
        return self.net(inputs, training=training)

    def _unpack(self, data):
        x, y = data[0], data[1]
        if isinstance(x, dict):
            street_labels = y["street"] if "street" in y else y
            return x, street_labels, y.get("shop")
        return {"image": x}, y, None

    def _forward(self, x, street_labels, shop_labels, training):
        """The losses of a batch.

        Under a strategy with several replicas the losses are this
        replica's shares of the global-batch losses
        (``losses.global_shares``): they add up over the replicas to the
        global values.

        Returns:
            ``(total, ce, cross, per-attribute ce, street outputs,
            labelled)``, ``labelled`` the global count of street labels of
            each attribute.
        """
        names = self.attribute_names
        use_triplets = self.kind != "none" and "positive" in x
        use_shop = bool(self.shop_loss_weight) and shop_labels is not None
        counts = [losses_lib.label_count(street_labels[a]) for a in names]
        if use_triplets:
            counts.append(tf.cast(tf.shape(x["image"])[0], tf.float32))
        if use_shop:
            counts += [losses_lib.label_count(shop_labels[a]) for a in names]
        local, total_counts = distribute.global_counts(counts)

        outputs = self.net(x["image"], training=training)
        preds = {a: outputs[a] for a in names}
        _, per_attr = losses_lib.multitask_loss(
            street_labels, preds, self.attribute_weights, kinds=self.kinds,
            label_smoothing=self.label_smoothing,
        )
        means = [per_attr[a] for a in names]
        if use_triplets or use_shop:
            f_s = self.shop_net if self.shop_net is not None else self.net
            s_training = training and self.shop_net is None
            pos_out = f_s(x["positive"], training=s_training)
        if use_triplets:
            neg_shop = f_s(x["negative"], training=s_training)["embedding"]
            neg_street = self.net(x["negative"], training=training)
            per_triplet = losses_lib.cross_domain_loss(
                self.kind, outputs["embedding"], pos_out["embedding"],
                neg_shop, neg_street["embedding"], alpha=self.alpha,
                beta=self.beta or None, margin=self.margin or None,
                normalize=self.normalize,
            )
            # Not reduce_mean: a replica's share of a last partial batch
            # may be empty.
            means.append(tf.reduce_sum(per_triplet)
                         / tf.maximum(local[len(names)], 1.0))
        if use_shop:
            _, shop_attr = losses_lib.multitask_loss(
                shop_labels, {a: pos_out[a] for a in names},
                self.attribute_weights, kinds=self.kinds,
                label_smoothing=self.label_smoothing,
            )
            means += [shop_attr[a] for a in names]
        shares = losses_lib.global_shares(means, local, total_counts)
        k = len(names)
        per_attr = dict(zip(names, shares[:k]))
        ce = self._weighted(per_attr)
        total = ce
        cross = tf.constant(0.0)
        if use_triplets:
            cross = shares[k]
            total = total + self.weight * cross
        if use_shop:
            total = total + self.shop_loss_weight * self._weighted(
                dict(zip(names, shares[-k:])))
        labelled = dict(zip(names, tf.unstack(total_counts[:k])))
        return total, ce, cross, per_attr, preds, labelled

    def _weighted(self, per_attr):
        """``sum_a w_a * L_a``, as ``losses.multitask_loss`` sums."""
        total = None
        for a in self.attribute_names:
            term = per_attr[a] * self.attribute_weights.get(a, 1.0)
            total = term if total is None else total + term
        return total

    def _track(self, total, ce, cross, per_attr, preds, labels, labelled):
        # Replica shares times the number of replicas: the metrics' mean
        # over replicas (and their cross-replica reads) is the global value.
        replicas = distribute.num_replicas()
        if replicas > 1:
            total, ce, cross = (v * replicas for v in (total, ce, cross))
            per_attr = {a: v * replicas for a, v in per_attr.items()}
        self.loss_tracker.update_state(total)
        self.ce_tracker.update_state(ce)
        if self.kind != "none":
            self.cross_tracker.update_state(cross)
        for a in self.attribute_names:
            if a in self.attr_recall:
                self._track_multilabel(a, per_attr[a], preds[a], labels[a],
                                       labelled[a])
                continue
            y = tf.cast(tf.reshape(labels[a], [-1]), tf.int32)
            mask = tf.cast(y >= 0, tf.float32)
            hit = tf.cast(
                tf.equal(tf.argmax(preds[a], -1, output_type=tf.int32), y),
                tf.float32,
            )
            # Mean of per-attribute losses over (global) batches with labels
            # only.
            self.attr_loss[a].update_state(
                per_attr[a], sample_weight=tf.minimum(labelled[a], 1.)
            )
            self.attr_acc[a].update_state(hit, sample_weight=mask)
        logs = {m.name: m.result() for m in self.metrics}
        if isinstance(tf.distribute.get_strategy(),
                      tf.distribute.MultiWorkerMirroredStrategy):
            # Keras 3 averages a step's outputs over the workers with
            # strategy.reduce(..., axis=0), which needs rank >= 1
            # (keras-team/keras#20585); the mean of [1]-vectors is a scalar.
            logs = {k: tf.reshape(v, [1]) for k, v in logs.items()}
        return logs

    def _track_multilabel(self, a, loss, pred, labels, known):
        y = tf.cast(labels, tf.int32)
        self.attr_loss[a].update_state(
            loss, sample_weight=tf.minimum(known, 1.0))
        if pred.shape[-1] <= TRACKED_TOP_K:
            hit = tf.cast(tf.equal(tf.cast(pred >= 0.5, tf.int32), y),
                          tf.float32)
            known = tf.cast(y >= 0, tf.float32)
            self.attr_recall[a].update_state(hit, sample_weight=known)
            return
        top = tf.math.top_k(pred, k=TRACKED_TOP_K).indices
        in_top = tf.reduce_max(tf.one_hot(top, pred.shape[-1]), axis=-2)
        positive = tf.cast(tf.equal(y, 1), tf.float32)
        self.attr_recall[a].update_state(in_top, sample_weight=positive)

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Under a strategy Keras 3 first pulls one batch and reduces it with
        # strategy.reduce to build compiled losses and metrics symbolically.
        # MultiWorkerMirroredStrategy cannot reduce a nested batch
        # (keras-team/keras#20585), and the batch is lost to training. This
        # model compiles no loss or metric: once it and its optimiser are
        # built (train_stage builds both), there is nothing to build.
        built = (
            self.built and all(layer.built for layer in self._flatten_layers())
            and (self.optimizer is None or self.optimizer.built)
            and getattr(self, "_compile_metrics", None) is None
            and getattr(self, "_compile_loss", None) is None
        )
        if not built:
            super()._maybe_symbolic_build(iterator=iterator,
                                          data_batch=data_batch)

    def train_step(self, data):
        x, street_labels, shop_labels = self._unpack(data)
        with tf.GradientTape() as tape:
            # ``total`` is this replica's share of the global-batch loss
            # (``_forward``); the optimiser sums the replicas' gradients.
            total, ce, cross, per_attr, preds, labelled = self._forward(
                x, street_labels, shop_labels, training=True
            )
            # Multiplies by the dynamic loss scale under mixed_float16
            # (compile wraps the optimiser in a LossScaleOptimizer, whose
            # apply() unscales the gradients and skips non-finite steps).
            scaled = self.optimizer.scale_loss(total)
        variables = self.trainable_variables
        grads = tape.gradient(scaled, variables)
        self.optimizer.apply_gradients(zip(grads, variables))
        return self._track(total, ce, cross, per_attr, preds, street_labels,
                           labelled)

    def test_step(self, data):
        x, street_labels, shop_labels = self._unpack(data)
        total, ce, cross, per_attr, preds, labelled = self._forward(
            x, street_labels, shop_labels, training=False
        )
        return self._track(total, ce, cross, per_attr, preds, street_labels,
                           labelled)

    def get_config(self):
        return {
            **super().get_config(),
            "net": keras.saving.serialize_keras_object(self.net),
            "shop_net": (None if self.shop_net is None
                         else keras.saving.serialize_keras_object(
                             self.shop_net)),
            "cross_domain": dataclasses.asdict(self.cross_domain),
            "attribute_weights": self.attribute_weights,
            "shop_loss_weight": self.shop_loss_weight,
            "label_smoothing": self.label_smoothing,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for key in ("net", "shop_net"):
            if config.get(key) is not None:
                config[key] = keras.saving.deserialize_keras_object(
                    config[key])
        return cls(**config)


def freeze_trunk(net):
    """Makes only the FC branches of ``net`` trainable (``finetune: fc``).

    Frozen batch-norm layers then run in inference mode (Keras 3), so the
    trunk computes exactly what the shop network computes. Compile after
    calling this: Keras fixes the trainable set at compile time.
    """
    for layer in net.trunk_layers():
        layer.trainable = False
    return net
