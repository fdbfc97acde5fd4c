"""Stage runners: shop stage, street stage, and the one-stage baselines.

``run(config, model_dir, stage)`` trains what the config's ``method`` asks
for. Each stage writes to ``<model_dir>/<stage>/``:

    model.keras        the MTN with the best validation weights (final)
    schema.json        the attribute schema it was trained with
    best.weights.h5    best-on-validation weights, updated during training
    backup/            resume state after a kill (``Backup``), removed
                       once done.json is written
    logs/              TensorBoard
    history.csv        per-epoch metrics
    done.json          written last: the stage finished (a rerun skips it)

Budgets are counted in optimiser steps. With S1 = shop.epochs x shop steps
per epoch and S2 = street.epochs x street steps per epoch, two-stage methods
(MTCT, FTT) spend S1 then S2; one-stage methods (No-Adapt, UD, end-to-end)
spend S1 + S2 in their single stage, so every method gets the same budget.
"""

import json
import math
import os
import shutil
import time
import sys
import warnings

import keras
import tensorflow as tf

from mtct_tf import attributes as attributes_lib
from mtct_tf import configs as configs_lib
from mtct_tf import distribute
from mtct_tf import model as model_lib
from mtct_tf import progress
from mtct_tf import transfer
from mtct_tf.data import features
from mtct_tf.data import pipeline
from mtct_tf.data import triplets

# Our datasets are shuffled by tf.data; Keras warns that fit can't.
warnings.filterwarnings("ignore", message=".*`shuffle=True` was passed")

# Method -> the stages it runs, in order.
PLANS = {
    "mtct": ("shop", "street"),
    "ftt": ("shop", "street"),
    "no_adapt": ("shop",),
    "ud": ("united",),
    "end_to_end": ("joint",),
}
STAGES = ("shop", "street", "united", "joint")
# Beside each stage's model.keras: the schema it was trained with.
SCHEMA_FILE = "schema.json"


def final_stage(method):
    return PLANS[method][-1]


def stage_dir(model_dir, stage):
    return os.path.join(model_dir, stage)


def is_done(model_dir, stage):
    return os.path.exists(os.path.join(stage_dir(model_dir, stage), "done.json"))


def load_schema(config):
    if config.schema:
        return attributes_lib.get_schema(config.schema)
    return pipeline.load_schema(config.data.shards_dir)


def street_dir(config):
    return config.data.street_shards_dir or config.data.shards_dir


def count_records(files, domain=None):
    """Counts records (of one domain) by parsing only the domain field."""
    spec = {features.DOMAIN: tf.io.FixedLenFeature([], tf.string)}
    ds = tf.data.TFRecordDataset(files, num_parallel_reads=4)
    ds = ds.map(lambda s: tf.io.parse_single_example(s, spec)[features.DOMAIN])
    if domain is not None:
        ds = ds.filter(lambda d: tf.equal(d, domain))
    return int(ds.reduce(0, lambda n, _: n + 1))


def make_optimizer(stage_config, total_steps):
    lr = keras.optimizers.schedules.CosineDecay(
        stage_config.learning_rate, decay_steps=max(1, total_steps), alpha=0.05
    )
    name = stage_config.optimizer
    if name == "adam":
        return keras.optimizers.Adam(lr)
    if name == "adamw":
        return keras.optimizers.AdamW(lr, weight_decay=stage_config.weight_decay)
    if name == "sgd":
        return keras.optimizers.SGD(lr, momentum=0.9)
    raise configs_lib.ConfigError(
        f"optimizer must be adam, adamw or sgd. Received: {name!r}"
    )


def build_mtn(config, schema):
    m = config.model
    return model_lib.MTN(
        schema, preset=m.preset, image_size=config.data.image_size,
        fc_units=m.fc_units or None,
        dropout=None if m.dropout < 0 else m.dropout,
        backbone=m.backbone, weights=m.weights or None,
    )


def load_mtn(path):
    """Loads a saved MTN in Keras' safe mode (no arbitrary code).

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: naming ``path`` (see ``export_lib.load_keras``).
    """
    from mtct_tf import export_lib

    if not os.path.exists(path):
        raise FileNotFoundError(
            f"{path} does not exist: train the stage that writes it first"
        )
    return export_lib.load_keras(path)


class Backup(keras.callbacks.BackupAndRestore):
    """``BackupAndRestore`` whose backup survives a kill at any instant.

    Keras writes ``latest.weights.h5`` in place; on small models that write
    takes a good part of every step, so a kill often lands in it and leaves
    a truncated file that the rerun cannot open: the stage could then never
    resume. Here the weights, then the metadata, are written under
    temporary names and renamed, so the backup is always a complete earlier
    state (the metadata never claims more progress than the weights hold).
    With a step frequency the backup is also written at every epoch end, so
    a kill between epochs does not repeat the finished epoch. It is kept
    when ``fit`` ends and removed by ``train_stage`` once ``done.json`` is
    written: a kill in between resumes with nothing left to train instead
    of training the stage again from its start.
    """

    def __init__(self, backup_dir, save_freq="epoch"):
        super().__init__(backup_dir, save_freq=save_freq,
                         delete_checkpoint=False)

    def on_train_begin(self, logs=None):
        try:
            super().on_train_begin(logs)
        except (OSError, ValueError, KeyError) as e:
            raise ValueError(
                f"cannot resume from the backup in {self.backup_dir} "
                f"({type(e).__name__}: {e}); it was written for another "
                "model configuration or damaged. Delete that directory to "
                "train this stage again from its start."
            ) from None

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, logs)
        if self.save_freq != "epoch":
            self._save_model()

    def _save_model(self):
        os.makedirs(self.backup_dir, exist_ok=True)
        tmp = os.path.join(self.backup_dir, "latest.tmp.weights.h5")
        self.model.save_weights(tmp, overwrite=True)
        os.replace(tmp, self._weights_path)
        write_json(self._training_metadata_path,
                   {"epoch": self._current_epoch,
                    "batch": self._last_batch_seen})


class BestWeights(keras.callbacks.Callback):
    """Keeps the weights of ``net`` with the lowest ``monitor`` on validation.

    The best value is stored beside the weights, so a resumed run compares
    against the best epoch of the run it resumes.
    """

    def __init__(self, net, path, monitor="val_ce"):
        super().__init__()
        self.net, self.path, self.monitor = net, path, monitor
        self.meta = f"{path}.json"
        self.best = math.inf
        if os.path.exists(self.meta):
            with open(self.meta) as f:
                self.best = json.load(f)["best"]

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None or not value < self.best:
            return
        self.best = float(value)
        tmp = self.path + ".tmp.weights.h5"
        self.net.save_weights(tmp)
        os.replace(tmp, self.path)
        write_json(self.meta, {"best": self.best, "epoch": epoch + 1,
                                "monitor": self.monitor})


class CompactProgbar(keras.callbacks.ProgbarLogger):
    """Keras' progress bar showing the losses and the mean accuracy only.

    The per-attribute losses and accuracies still reach history.csv and
    TensorBoard; on one line they would be unreadable. With ``verbose="auto"``
    and an output that is not a terminal (a log file, a pipe), it writes one
    line per epoch: Keras' redrawn bar would write a line per batch there.
    """

    SHOWN = ("loss", "ce", "cross_domain")

    def set_params(self, params):
        super().set_params(params)
        if params.get("verbose") == "auto" and not progress.is_terminal(
                sys.stdout):
            self.verbose = 2

    def _compact(self, logs):
        logs = logs or {}
        out = {}
        for prefix in ("", "val_"):
            for k in self.SHOWN:
                if prefix + k in logs:
                    out[prefix + k] = logs[prefix + k]
            accs = [v for k, v in logs.items()
                    if k.startswith(prefix) and k.endswith("_acc")
                    and (prefix or not k.startswith("val_"))]
            if accs:
                out[prefix + "acc"] = sum(float(a) for a in accs) / len(accs)
        return out

    def on_train_batch_end(self, batch, logs=None):
        super().on_train_batch_end(batch, self._compact(logs))

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, self._compact(logs))


def write_json(path, obj):
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


def _datasets(config, schema, stage, strategy=None):
    """(train, val, steps per epoch, epochs, stage config) for a stage.

    Batches are global (``data.batch_size`` examples per optimiser step,
    split across the strategy's replicas); every dataset is sharded across
    workers by file (``distribute.shard_dataset``).
    """
    strategy = strategy or tf.distribute.get_strategy()
    d = config.data
    shop_train = pipeline.shard_files(d.shards_dir, "train")
    shop_val = pipeline.shard_files(d.shards_dir, "val")
    street_train = pipeline.shard_files(street_dir(config), "train")
    street_val = pipeline.shard_files(street_dir(config), "val")
    common = dict(image_size=d.image_size, batch_size=d.batch_size,
                  margin=d.margin, seed=config.seed)
    n_shop = count_records(shop_train, "shop")
    n_street = count_records(street_train, "street")
    shop_spe = config.shop.steps_per_epoch or math.ceil(n_shop / d.batch_size)
    street_spe = config.street.steps_per_epoch or math.ceil(
        n_street * d.street_label_fraction / d.batch_size)
    s1 = config.shop.epochs * shop_spe
    s2 = config.street.epochs * street_spe
    one_stage_epochs = config.shop.epochs + config.street.epochs
    one_stage_spe = math.ceil((s1 + s2) / one_stage_epochs)

    def plain(files, training, domain, fraction=1.0):
        return distribute.shard_dataset(pipeline.make_dataset(
            files, schema, training=training, domain=domain,
            shuffle_buffer=d.shuffle_buffer, label_fraction=fraction,
            cache=d.cache and not training, **common), len(files), strategy)

    def triplet(training, fraction):
        split = "train" if training else "val"
        anchors = street_train if training else street_val
        # Sharded by the street (anchor) files; every worker holds the
        # whole shop table.
        return distribute.shard_dataset(triplets.make_triplet_dataset(
            anchors, pipeline.shard_files(d.shards_dir, split), schema,
            training=training, negatives=d.negatives,
            label_fraction=fraction, shuffle_buffer=d.shuffle_buffer,
            **common), len(anchors), strategy)

    fraction = d.street_label_fraction
    if stage == "shop":
        if config.method == "no_adapt":
            return (plain(shop_train, True, "shop"),
                    plain(shop_val, False, "shop"),
                    one_stage_spe, one_stage_epochs, config.shop)
        return (plain(shop_train, True, "shop"),
                plain(shop_val, False, "shop"),
                shop_spe, config.shop.epochs, config.shop)
    if stage == "street":
        train = (plain(street_train, True, "street", fraction)
                 if config.street.cross_domain.kind == "none"
                 else triplet(True, fraction))
        return (train, plain(street_val, False, "street"),
                street_spe, config.street.epochs, config.street)
    if stage == "united":
        files = sorted(set(shop_train) | set(street_train))
        if fraction < 1:
            # Shop records are kept whole; only street items are thinned.
            train = plain(shop_train, True, "shop").unbatch().concatenate(
                plain(street_train, True, "street", fraction).unbatch())
            train = distribute.shard_dataset(
                train.shuffle(d.shuffle_buffer).batch(d.batch_size),
                len(files), strategy)
        else:
            train = plain(files, True, None)
        val = plain(sorted(set(shop_val) | set(street_val)), False, None)
        return train, val, one_stage_spe, one_stage_epochs, config.shop
    if stage == "joint":
        return (triplet(True, fraction), plain(street_val, False, "street"),
                one_stage_spe, one_stage_epochs, config.shop)
    raise ValueError(f"unknown stage {stage!r}; expected one of {STAGES}")


def train_stage(config, model_dir, stage, *, verbose="auto"):
    """Trains one stage, resuming from its backup if one exists.

    Returns:
        The stage's ``done.json`` content.
    """
    out = stage_dir(model_dir, stage)
    os.makedirs(out, exist_ok=True)
    if os.path.exists(os.path.join(out, "done.json")):
        # Training a finished stage again starts it from its start.
        shutil.rmtree(os.path.join(out, "backup"), ignore_errors=True)
    schema = load_schema(config)
    strategy = distribute.get_strategy(config.runtime.strategy)
    distribute.set_precision(config.runtime.mixed_precision)
    keras.utils.set_random_seed(config.seed)
    train_ds, val_ds, spe, epochs, stage_cfg = _datasets(config, schema, stage,
                                                         strategy)
    cross = config.street.cross_domain

    with strategy.scope():
        if stage == "street":
            shop_net = load_mtn(os.path.join(stage_dir(model_dir, "shop"),
                                             "model.keras"))
            check_schema(shop_net, schema, config.data.shards_dir,
                         trained_schema(stage_dir(model_dir, "shop")))
            net = model_lib.MTN.from_config(shop_net.get_config())
            net.set_weights(shop_net.get_weights())
            if config.street.finetune == "fc":
                transfer.freeze_trunk(net)
            trainer = transfer.CrossDomainModel(
                net, shop_net, kind=cross.kind, weight=cross.weight,
                alpha=cross.alpha, beta=cross.beta, margin=cross.margin,
                normalize=cross.normalize)
        else:
            net = build_mtn(config, schema)
            if config.init_from and stage in ("shop", "united", "joint"):
                from mtct_tf import pretrain
                pretrain.restore_trunk(net, config.init_from)
            kind = cross.kind if stage == "joint" else "none"
            trainer = transfer.CrossDomainModel(
                net, None, kind=kind, weight=cross.weight, alpha=cross.alpha,
                beta=cross.beta, margin=cross.margin,
                normalize=cross.normalize,
                shop_loss_weight=1.0 if stage == "joint" else 0.0)
        # Batch statistics of the global batch, as on one device.
        distribute.sync_batch_norm(net, strategy.num_replicas_in_sync > 1)
        trainer.compile(optimizer=make_optimizer(stage_cfg, spe * epochs),
                        jit_compile=config.runtime.jit_compile)
        # BackupAndRestore restores into built weights and optimiser slots.
        size = config.data.image_size
        trainer(tf.zeros((1, size, size, 3)))
        trainer.optimizer.build(trainer.trainable_variables)

    # Every worker saves (saving may run collective ops that all workers
    # must join); only the chief writes into ``out``, the others into a
    # temporary copy of the state they resume from.
    best_name = "best.weights.h5"
    with distribute.write_dir(out, strategy, copy=(
            "backup", best_name, f"{best_name}.json")) as wout:
        best_path = os.path.join(wout, best_name)
        backup = config.runtime.backup_every_steps or "epoch"
        best = BestWeights(net, best_path)
        # The backup goes last: at an epoch end the best weights and the
        # history row are written before the backup says the epoch is done,
        # so a kill in between repeats the epoch rather than losing them.
        callbacks = [
            CompactProgbar(),
            best,
            keras.callbacks.CSVLogger(os.path.join(wout, "history.csv"),
                                      append=True),
            keras.callbacks.TensorBoard(os.path.join(wout, "logs"),
                                        update_freq="epoch"),
            Backup(os.path.join(wout, "backup"), save_freq=backup),
        ]
        start = time.time()
        trainer.fit(
            train_ds, epochs=epochs, steps_per_epoch=spe,
            validation_data=val_ds,
            validation_steps=stage_cfg.validation_steps or None,
            callbacks=callbacks, verbose=verbose,
        )
        if os.path.exists(best_path):
            net.load_weights(best_path)
        # The saved model is the same whatever trained it.
        distribute.sync_batch_norm(net, False)
        schema.save(os.path.join(wout, SCHEMA_FILE))
        tmp = os.path.join(wout, "model.tmp.keras")
        net.save(tmp)
        os.replace(tmp, os.path.join(wout, "model.keras"))
        info = {"stage": stage, "method": config.method, "epochs": epochs,
                "steps_per_epoch": spe, "steps": spe * epochs,
                "seconds": round(time.time() - start, 1),
                "best_val_ce": best.best,
                "replicas": strategy.num_replicas_in_sync}
        write_json(os.path.join(wout, "done.json"), info)
        # Only now: until done.json exists, a rerun resumes from it.
        shutil.rmtree(os.path.join(wout, "backup"), ignore_errors=True)
    # Other workers go on to read what the chief wrote (the shop model).
    distribute.barrier(strategy)
    return info


def trained_schema(path):
    """The schema a stage's model was trained with, or ``None``.

    ``train_stage`` saves it as ``<stage dir>/schema.json`` beside
    ``model.keras``; runs older than that file have none.
    """
    path = os.path.join(path, SCHEMA_FILE)
    if not os.path.isfile(path):
        return None
    return attributes_lib.AttributeSchema.load(path)


def check_schema(net, schema, where, trained=None):
    """Raises ``ValueError`` unless ``net``'s heads match ``schema``.

    Args:
        net: the model.
        schema: the ``AttributeSchema`` of the data it is about to see.
        where: the data's location, for the message.
        trained: the schema the model was trained with
            (``trained_schema``), when known. Then the value names must
            match too: heads of the same sizes whose values mean other
            things would give silently wrong labels.
    """
    if trained is not None:
        ok = trained.attributes == schema.attributes
        model_side = f"schema {trained.name!r} {trained.num_values}"
    else:
        ok = tuple(net.num_values.items()) == tuple(schema.num_values.items())
        model_side = f"attributes {net.num_values}"
    if ok:
        return
    detail = ""
    if trained is not None:
        for a in trained:
            if a.name in schema and schema[a.name].values != a.values:
                detail = (f" (attribute {a.name!r}: values {a.values} in the "
                          f"model, {schema[a.name].values} in the data)")
                break
    raise ValueError(
        f"the model was trained with {model_side}, but the schema "
        f"{schema.name!r} of {where} has {schema.num_values}{detail}; use "
        "data with the schema the model was trained with, or train again"
    )


def run(config, model_dir, stage="all", *, verbose="auto"):
    """Trains ``stage`` (or every stage of the config's method for "all").

    Finished stages (``done.json``) are skipped, so rerunning the same
    command after a kill resumes where it stopped.

    Returns:
        Dict stage -> its ``done.json`` content.
    """
    os.makedirs(model_dir, exist_ok=True)
    if distribute.is_chief(config.runtime.strategy):
        configs_lib.save(config, os.path.join(model_dir, "config.yaml"))
    plan = PLANS[config.method]
    if stage == "all":
        stages = plan
    elif stage in plan:
        stages = (stage,)
    else:
        raise configs_lib.ConfigError(
            f"method {config.method!r} runs stages {plan}; --stage {stage} "
            "is not one of them"
        )
    results = {}
    for s in stages:
        done = os.path.join(stage_dir(model_dir, s), "done.json")
        if os.path.exists(done) and stage == "all":
            with open(done) as f:
                results[s] = json.load(f)
            print(f"[{s}] already trained ({done}); skipping")
            continue
        print(f"[{s}] training ({config.method})")
        results[s] = train_stage(config, model_dir, s, verbose=verbose)
    return results
