"""The training stages: each one's data, budget, trainer and starting point.

A stage is a ``Stage``, in the shape of Model Garden's ``Task``
(``official/core/base_task.py``: ``build_inputs``, ``build_model``, the
losses and metrics); SimCLR's pretrain / finetune pair
(``official/projects/simclr/tasks/``) is the model for stage 0 and the shop
/ street stages sharing one model config. ``STAGES`` is the table, and
``training.train_stage`` runs any of its rows through one fit loop:

=========  ========================  ==========  ==========================
stage      data                      budget      trainer, start
=========  ========================  ==========  ==========================
pretrain   a TFDS classification     pretrain    softmax classifier on the
           set (``pretrain.py``)                 MTN trunk; fresh
shop       shop records              shop        ``MTNTrainer``; fresh or
                                                 ``init_from`` trunk
street     street records, or        street      ``MTNTrainer`` + cross-
           triplets with shop                    domain loss against the
           images                                frozen shop model; from
                                                 the shop model
united     shop and street records   one-stage   ``MTNTrainer``; as shop
joint      triplets, shop labels     one-stage   ``MTNTrainer`` with the
           supervised too                        cross-domain loss, one
                                                 network for both domains
=========  ========================  ==========  ==========================

Budgets are counted in optimiser steps. With S1 = shop.epochs x shop steps
per epoch and S2 = street.epochs x street steps per epoch, two-stage
methods (MTCT, FTT) spend S1 then S2; one-stage methods (No-Adapt, UD,
end-to-end) spend S1 + S2 in their single stage, so every method gets the
same budget. The optimiser settings (learning rate, optimiser, validation
steps) of a stage come from its config section: ``pretrain``, ``shop``
(shop, united, joint) or ``street``.
"""

import dataclasses
import math

import keras
import tensorflow as tf

from mtct_tf import configs as configs_lib
from mtct_tf import distribute
from mtct_tf import model as model_lib
from mtct_tf import pretrain, transfer
from mtct_tf.data import features, pipeline, shards, triplets

# Method -> the stages it runs, in order.
METHODS = {
    "mtct": ("shop", "street"),
    "ftt": ("shop", "street"),
    "no_adapt": ("shop",),
    "ud": ("united",),
    "end_to_end": ("joint",),
}


def final_stage(method):
    """The stage whose model is a method's result."""
    return METHODS[method][-1]


def build_mtn(config, schema):
    """The MTN of ``config.model`` with ``schema``'s heads (untrained)."""
    m = config.model
    return model_lib.MTN(
        schema, preset=m.preset, image_size=config.data.image_size,
        fc_units=m.fc_units or None,
        dropout=None if m.dropout < 0 else m.dropout,
        backbone=m.backbone, weights=m.weights or None, heads=m.heads,
    )


@dataclasses.dataclass
class Inputs:
    """A stage's data and budget.

    Attributes:
        train, val: ``tf.data`` datasets of global batches, sharded across
            workers by file (``distribute.shard_dataset``).
        steps_per_epoch, epochs: the budget.
        info: facts about the data for ``done.json``.
    """

    train: tf.data.Dataset
    val: tf.data.Dataset
    steps_per_epoch: int
    epochs: int
    info: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Models:
    """What a stage trains.

    Attributes:
        trainer: the ``keras.Model`` that ``fit`` runs.
        best: the model whose best validation weights are kept.
        net: the MTN (whose trunk or whole self the stage saves).
    """

    trainer: keras.Model
    best: keras.Model
    net: keras.Model


class Stage:
    """One training stage (see the module docstring).

    Attributes:
        name: the stage's directory name under the run directory.
        section: the config section with its optimiser settings.
        starts_from: the stage whose saved model initialises this one.
        monitor: the validation value that picks the best weights.
        rerun_skips: rerunning this stage by name returns its
            ``done.json`` instead of training it again.
    """

    name = ""
    section = "shop"
    starts_from = None
    monitor = "val_ce"
    rerun_skips = False

    def settings(self, config):
        """The stage's optimiser settings (a ``StageConfig``)."""
        return getattr(config, self.section)

    def schema(self, config, data_schema):
        """The schema of the heads the stage trains."""
        return data_schema()

    def build_inputs(self, config, schema, strategy, **options):
        raise NotImplementedError

    def build_models(self, config, schema, previous, inputs):
        """Builds the models; called in the strategy's scope.

        Args:
            config: the ``ExperimentConfig``.
            schema: the stage's ``AttributeSchema``.
            previous: the ``starts_from`` stage's MTN, or ``None``.
            inputs: the stage's ``Inputs``.

        Returns:
            ``Models``.
        """
        raise NotImplementedError

    def compile_options(self, models, inputs):
        """Extra ``compile`` arguments (losses, metrics)."""
        return {}

    def outputs(self, models, schema, config, inputs, done):
        """What the stage writes into its directory and ``done.json``.

        Args:
            models: the trained ``Models`` (best weights loaded).
            schema: the stage's schema.
            config: the ``ExperimentConfig``.
            inputs: the stage's ``Inputs``.
            done: the ``done.json`` content so far, with ``"history"``
                (``fit``'s history dict) that must not stay in it.

        Returns:
            ``(files, info)``: ``files`` a list of ``(name, writer)``,
            ``writer(path)`` writing the file (atomically published by the
            caller); ``info`` is merged into ``done.json``.
        """
        raise NotImplementedError


# --------------------------------------------------------------------------
# Stages on the project's own records.


def budget(config):
    """Steps per epoch: (shop, street, one-stage) and one-stage epochs."""
    d = config.data
    n_shop = shards.count_records(
        shards.shard_files(d.shards_dir, "train"), "shop")
    n_street = shards.count_records(
        shards.shard_files(street_dir(config), "train"), "street")
    shop_spe = config.shop.steps_per_epoch or math.ceil(n_shop / d.batch_size)
    street_spe = config.street.steps_per_epoch or math.ceil(
        n_street * d.street_label_fraction / d.batch_size)
    s1 = config.shop.epochs * shop_spe
    s2 = config.street.epochs * street_spe
    one_stage_epochs = config.shop.epochs + config.street.epochs
    return (shop_spe, street_spe, math.ceil((s1 + s2) / one_stage_epochs),
            one_stage_epochs)


def street_dir(config):
    """The street records' shard directory (``shards_dir`` by default)."""
    return config.data.street_shards_dir or config.data.shards_dir


class _Records:
    """The project's shards as a stage's datasets."""

    def __init__(self, config, schema, strategy):
        d = self.d = config.data
        self.config, self.schema, self.strategy = config, schema, strategy
        self.shop = {s: shards.shard_files(d.shards_dir, s)
                     for s in ("train", "val")}
        self.street = {s: shards.shard_files(street_dir(config), s)
                       for s in ("train", "val")}
        self.common = dict(image_size=d.image_size, batch_size=d.batch_size,
                           margin=d.margin, seed=config.seed,
                           augment=d.augment, min_area=d.crop_min_area)

    def plain(self, files, training, domain, fraction=1.0):
        d = self.d
        ds = pipeline.make_dataset(
            files, self.schema, training=training, domain=domain,
            shuffle_buffer=d.shuffle_buffer, label_fraction=fraction,
            cache=d.cache and not training, decode_cache=d.decode_cache,
            **self.common)
        if not training and fraction == 1.0:
            # The domain filter hides the number of batches from Keras,
            # which then learns it by running out of data and warns
            # "Your input ran out of data; interrupting training" after
            # every validation pass. It is known: state it.
            n = shards.count_records(files, domain)
            ds = ds.apply(tf.data.experimental.assert_cardinality(
                math.ceil(n / d.batch_size)))
        return distribute.shard_dataset(ds, len(files), self.strategy)

    def triplet(self, training, fraction):
        split = "train" if training else "val"
        anchors = self.street[split]
        # Sharded by the street (anchor) files; every worker holds the
        # whole shop table.
        return distribute.shard_dataset(triplets.make_triplet_dataset(
            anchors, self.shop[split], self.schema, training=training,
            negatives=self.d.negatives, label_fraction=fraction,
            shuffle_buffer=self.d.shuffle_buffer, **self.common),
            len(anchors), self.strategy)

    def label_copy(self, split, training):
        """Street images of ``split`` with their paired shop item's labels
        (the label-copy oracle); images of items without a shop image
        drop."""
        ds = triplets.make_triplet_dataset(
            self.street[split], self.shop[split], self.schema,
            training=training, negatives="random", label_fraction=1.0,
            shuffle_buffer=self.d.shuffle_buffer, **self.common)
        ds = ds.map(lambda x, y: (x["image"], y["shop"]),
                    num_parallel_calls=tf.data.AUTOTUNE)
        return distribute.shard_dataset(ds, len(self.street[split]),
                                        self.strategy)


class _MTNStage(Stage):
    """A stage training the MTN on the project's records."""

    # The trainer's cross-domain loss: None, or the street config's.
    cross_domain = False
    shop_loss_weight = 0.0

    def data(self, records, fraction):
        raise NotImplementedError

    def build_inputs(self, config, schema, strategy, **options):
        shop_spe, street_spe, one_spe, one_epochs = budget(config)
        if len(METHODS[config.method]) == 1:
            spe, epochs = one_spe, one_epochs
        elif self.section == "street":
            spe, epochs = street_spe, config.street.epochs
        else:
            spe, epochs = shop_spe, config.shop.epochs
        records = _Records(config, schema, strategy)
        train, val = self.data(records, config.data.street_label_fraction)
        return Inputs(train, val, spe, epochs)

    def build_models(self, config, schema, previous, inputs):
        net = build_mtn(config, schema)
        if config.init_from:
            pretrain.restore_trunk(net, config.init_from)
        cross = (config.street.cross_domain if self.cross_domain else None)
        trainer = transfer.MTNTrainer(
            net, None, cross_domain=cross,
            shop_loss_weight=self.shop_loss_weight,
            attribute_weights=config.attribute_weights,
            label_smoothing=config.label_smoothing)
        return Models(trainer, net, net)

    def outputs(self, models, schema, config, inputs, done):
        done.pop("history")
        return [("model.keras", models.net.save),
                (features.SCHEMA_FILE, schema.save)], {"method": config.method}


class ShopStage(_MTNStage):
    name = "shop"

    def data(self, records, fraction):
        return (records.plain(records.shop["train"], True, "shop"),
                records.plain(records.shop["val"], False, "shop"))


class StreetStage(_MTNStage):
    """Fine-tunes the shop model on street data (SPEC §2.3)."""

    name = "street"
    section = "street"
    starts_from = "shop"

    def data(self, records, fraction):
        if records.d.street_labels == "pair":
            train = records.label_copy("train", True)
        elif records.config.street.cross_domain.kind == "none":
            train = records.plain(records.street["train"], True, "street",
                                  fraction)
        else:
            train = records.triplet(True, fraction)
        return train, records.plain(records.street["val"], False, "street")

    def build_models(self, config, schema, previous, inputs):
        net = model_lib.MTN.from_config(previous.get_config())
        net.set_weights(previous.get_weights())
        if config.street.finetune == "fc":
            transfer.freeze_trunk(net)
        trainer = transfer.MTNTrainer(
            net, previous, cross_domain=config.street.cross_domain,
            attribute_weights=config.attribute_weights,
            label_smoothing=config.label_smoothing)
        return Models(trainer, net, net)


class UnitedStage(_MTNStage):
    """UD: one network on the union of shop and street records."""

    name = "united"

    def data(self, records, fraction):
        d = records.d
        shop, street = records.shop, records.street
        files = sorted(set(shop["train"]) | set(street["train"]))
        if fraction < 1:
            # Shop records are kept whole; only street items are thinned.
            train = records.plain(shop["train"], True, "shop").unbatch()
            train = train.concatenate(records.plain(
                street["train"], True, "street", fraction).unbatch())
            train = distribute.shard_dataset(
                train.shuffle(d.shuffle_buffer).batch(d.batch_size),
                len(files), records.strategy)
        else:
            train = records.plain(files, True, None)
        val = records.plain(sorted(set(shop["val"]) | set(street["val"])),
                            False, None)
        return train, val


class JointStage(_MTNStage):
    """End-to-end: triplets and both domains' labels in every step."""

    name = "joint"
    cross_domain = True
    shop_loss_weight = 1.0

    def data(self, records, fraction):
        return (records.triplet(True, fraction),
                records.plain(records.street["val"], False, "street"))


# --------------------------------------------------------------------------
# Stage 0.


class PretrainStage(Stage):
    """Stage 0: the MTN trunk under a softmax head on a TFDS dataset.

    Its result is ``trunk.weights.h5`` (``pretrain.save_trunk``), which
    ``init_from`` restores into the other stages' MTN.
    """

    name = pretrain.STAGE
    section = "pretrain"
    monitor = "val_loss"
    rerun_skips = True

    def schema(self, config, data_schema):
        return pretrain.PLACEHOLDER_SCHEMA

    def build_inputs(self, config, schema, strategy, *, source=None,
                     **options):
        if source is None or not source.name:
            raise ValueError(
                "--stage pretrain needs --tfds_name (e.g. imagenet2012 with "
                "--manual_dir, or imagenette). Received: tfds_name="
                f"{getattr(source, 'name', None)!r}")
        train, val, spe, info = pretrain.build_inputs(config, source)
        print(f"[{self.name}] {source.name} ({info['num_classes']} classes):"
              f" {info['split']} -> {config.pretrain.epochs} epochs x {spe} "
              f"steps, validation {info['val_split']}")
        return Inputs(train, val, spe, config.pretrain.epochs, info)

    def build_models(self, config, schema, previous, inputs):
        net = build_mtn(config, schema)
        classifier = pretrain.build_classifier(
            net, inputs.info["num_classes"])
        return Models(classifier, classifier, net)

    def compile_options(self, models, inputs):
        k = min(5, inputs.info["num_classes"])
        return dict(
            loss="sparse_categorical_crossentropy",
            metrics=[keras.metrics.SparseCategoricalAccuracy(name="acc"),
                     keras.metrics.SparseTopKCategoricalAccuracy(
                         k=k, name="top5")])

    def outputs(self, models, schema, config, inputs, done):
        model = pretrain.model_metadata(config, models.net)
        metadata = {"tfds_name": inputs.info["tfds_name"],
                    "num_classes": inputs.info["num_classes"],
                    "model": model, "best_val_loss": done["best_val_loss"]}
        files = [
            (pretrain.TRUNK_FILE,
             lambda path: pretrain.save_trunk(models.net, path, metadata)),
            ("config.yaml", lambda path: configs_lib.save(config, path)),
        ]
        history = done.pop("history")
        return files, {
            **inputs.info,
            "last_epoch": {k: float(v[-1]) for k, v in history.items() if v},
            "model": model}


STAGES = {s.name: s for s in (PretrainStage(), ShopStage(), StreetStage(),
                              UnitedStage(), JointStage())}


def get(name):
    """The ``Stage`` called ``name``.

    Raises:
        ValueError: no such stage.
    """
    if name not in STAGES:
        raise ValueError(
            f"unknown stage {name!r}; expected one of {tuple(STAGES)}")
    return STAGES[name]
