"""The fit loop that trains every stage: ``run(config, model_dir, stage)``.

``train_stage`` takes a stage of ``stages.STAGES`` (what data, budget,
trainer and starting point) and runs it: strategy scope, compile, the
callbacks (``callbacks.py``), chief-only writes (``distribute.write_dir``),
the stage's files, then ``done.json``. The run directory layout is
``runs.py``'s. A killed stage resumes from its backup when the same command
runs again; a finished one (``done.json``) is skipped by ``--stage all``.
"""

import os
import shutil
import time
import warnings

import keras
import numpy as np
import tensorflow as tf

from mtct_tf import callbacks as callbacks_lib
from mtct_tf import configs as configs_lib
from mtct_tf import distribute, fileio, runs
from mtct_tf import stages as stages_lib

# The cosine decay ends at this fraction of the initial learning rate.
LR_ALPHA = 0.05
# Our datasets are shuffled by tf.data; Keras warns that fit can't.
warnings.filterwarnings("ignore", message=".*`shuffle=True` was passed")


@keras.saving.register_keras_serializable(package="mtct_tf")
class BudgetCosineDecay(keras.optimizers.schedules.LearningRateSchedule):
    """``CosineDecay`` over whichever is further along: the steps, or the
    wall-clock budget's elapsed share in ``progress`` (set by
    ``callbacks.TimeBudget``)."""

    def __init__(self, initial_learning_rate, decay_steps, alpha, progress):
        self.initial_learning_rate = float(initial_learning_rate)
        self.decay_steps = int(decay_steps)
        self.alpha = float(alpha)
        self.progress = progress

    def __call__(self, step):
        done = tf.cast(step, tf.float32) / self.decay_steps
        done = tf.minimum(1.0, tf.maximum(done, self.progress))
        cosine = 0.5 * (1.0 + tf.cos(np.pi * done))
        return self.initial_learning_rate * (
            (1.0 - self.alpha) * cosine + self.alpha)

    def get_config(self):
        # The variable is the running process's; a reloaded schedule
        # decays on steps only.
        return {"initial_learning_rate": self.initial_learning_rate,
                "decay_steps": self.decay_steps, "alpha": self.alpha}

    @classmethod
    def from_config(cls, config):
        return cls(progress=0.0, **config)


def make_optimizer(stage_config, total_steps, progress=None):
    """The stage's optimiser under a cosine learning-rate decay.

    Args:
        stage_config: a ``StageConfig``.
        total_steps: the steps the decay spans.
        progress: ``None``, or a float32 ``tf.Variable`` with the elapsed
            share of a wall-clock budget (``BudgetCosineDecay``).
    """
    if progress is None:
        lr = keras.optimizers.schedules.CosineDecay(
            stage_config.learning_rate, decay_steps=max(1, total_steps),
            alpha=LR_ALPHA)
    else:
        lr = BudgetCosineDecay(stage_config.learning_rate,
                               max(1, total_steps), LR_ALPHA, progress)
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


def train_stage(config, model_dir, stage, *, verbose="auto", callbacks=(),
                **options):
    """Trains one stage, resuming from its backup if one exists.

    Args:
        config: the ``ExperimentConfig``.
        model_dir: the run directory.
        stage: a name in ``stages.STAGES``.
        verbose: ``Model.fit`` verbosity.
        callbacks: further Keras callbacks (a benchmark's scoring, say),
            run before the best-weights, history and backup callbacks, so
            that values they add to an epoch's logs are recorded.
        **options: passed to the stage's ``build_inputs`` (stage 0:
            ``source``, a ``pretrain.TfdsSource``).

    Returns:
        The stage's ``done.json`` content.
    """
    spec = stages_lib.get(stage)
    out = runs.stage_dir(model_dir, stage)
    os.makedirs(out, exist_ok=True)
    if runs.is_done(model_dir, stage):
        # Training a finished stage again starts it from its start.
        shutil.rmtree(os.path.join(out, runs.BACKUP_DIR), ignore_errors=True)
    schema = spec.schema(config, lambda: runs.data_schema(config))
    strategy = distribute.get_strategy(config.runtime.strategy)
    distribute.set_precision(config.runtime.mixed_precision)
    keras.utils.set_random_seed(config.seed)
    inputs = spec.build_inputs(config, schema, strategy, **options)
    settings = spec.settings(config)
    spe, epochs = inputs.steps_per_epoch, inputs.epochs
    if not spe:
        raise ValueError(
            f"the size of stage {stage!r}'s training data is unknown: set "
            f"its steps_per_epoch (e.g. --override {spec.section}."
            "steps_per_epoch=1000)")

    with strategy.scope():
        previous = None
        if spec.starts_from:
            previous = runs.load_stage(model_dir, spec.starts_from, schema,
                                       f"of {config.data.shards_dir}")
        models = spec.build_models(config, schema, previous, inputs)
        # Batch statistics of the global batch, as on one device.
        distribute.sync_batch_norm(models.net,
                                   strategy.num_replicas_in_sync > 1)
        progress = (tf.Variable(0.0, trainable=False, name="time_progress")
                    if settings.max_seconds else None)
        models.trainer.compile(
            optimizer=make_optimizer(settings, spe * epochs, progress),
            jit_compile=config.runtime.jit_compile,
            **spec.compile_options(models, inputs))
        # The backup restores into built weights and optimiser slots.
        size = config.data.image_size
        models.trainer(tf.zeros((1, size, size, 3)))
        models.trainer.optimizer.build(models.trainer.trainable_variables)

    # Every worker saves (saving may run collective ops that all workers
    # must join); only the chief writes into ``out``, the others into a
    # temporary copy of the state they resume from.
    best_name = runs.BEST_WEIGHTS
    with distribute.write_dir(out, strategy, copy=(
            runs.BACKUP_DIR, best_name, f"{best_name}.json")) as wout:
        best_path = os.path.join(wout, best_name)
        backup = config.runtime.backup_every_steps or "epoch"
        best = callbacks_lib.BestWeights(models.best, best_path,
                                         monitor=spec.monitor)
        # The backup goes last: at an epoch end the best weights and the
        # history row are written before the backup says the epoch is done,
        # so a kill in between repeats the epoch rather than losing them.
        # Further callbacks go before the ones that read an epoch's logs,
        # so that what they add to them reaches history.csv.
        callbacks = [
            callbacks_lib.CompactProgbar(),
            callbacks_lib.EpochSeconds(),
            *callbacks,
            best,
            keras.callbacks.CSVLogger(
                os.path.join(wout, runs.HISTORY_FILE), append=True),
            keras.callbacks.TensorBoard(os.path.join(wout, runs.LOGS_DIR),
                                        update_freq="epoch"),
            callbacks_lib.Backup(os.path.join(wout, runs.BACKUP_DIR),
                                 save_freq=backup),
        ]
        if progress is not None:
            callbacks.insert(0, callbacks_lib.TimeBudget(
                settings.max_seconds, progress))
        start = time.time()
        history = models.trainer.fit(
            inputs.train, epochs=epochs, steps_per_epoch=spe,
            validation_data=inputs.val,
            validation_steps=settings.validation_steps or None,
            callbacks=callbacks, verbose=verbose,
        )
        if os.path.exists(best_path):
            models.best.load_weights(best_path)
        # The saved model is the same whatever trained it.
        distribute.sync_batch_norm(models.net, False)
        info = {"stage": stage, "epochs": epochs, "steps_per_epoch": spe,
                "steps": spe * epochs,
                "seconds": round(time.time() - start, 1),
                f"best_{spec.monitor}": best.best,
                "replicas": strategy.num_replicas_in_sync,
                "history": history.history}
        if progress is not None:
            # Under a wall-clock budget the steps are what it allowed.
            info["steps"] = int(models.trainer.optimizer.iterations.numpy())
            info["max_seconds"] = settings.max_seconds
            info["stopped_by_max_seconds"] = callbacks[0].stopped_early
        files, extra = spec.outputs(models, schema, config, inputs, info)
        info.update(extra)
        for name, write in files:
            path = os.path.join(wout, name)
            with fileio.replacing(path, os.path.splitext(name)[1]) as tmp:
                write(tmp)
        fileio.write_json(os.path.join(wout, runs.DONE_FILE), info)
        # Only now: until done.json exists, a rerun resumes from it.
        shutil.rmtree(os.path.join(wout, runs.BACKUP_DIR), ignore_errors=True)
    # Other workers go on to read what the chief wrote (the shop model).
    distribute.barrier(strategy)
    return info


def run(config, model_dir, stage="all", *, verbose="auto", **options):
    """Trains ``stage`` (or every stage of the config's method for "all").

    Finished stages (``done.json``) are skipped by "all" and by stage 0, so
    rerunning the same command after a kill resumes where it stopped.

    Args:
        config: the ``ExperimentConfig``.
        model_dir: the run directory.
        stage: "all", a stage of the config's method, or "pretrain".
        verbose: ``Model.fit`` verbosity.
        **options: see ``train_stage``.

    Returns:
        Dict stage -> its ``done.json`` content.

    Raises:
        ConfigError: ``stage`` is not one the method runs.
    """
    os.makedirs(model_dir, exist_ok=True)
    if distribute.is_chief(config.runtime.strategy):
        configs_lib.save(config, os.path.join(model_dir, runs.CONFIG_FILE))
    plan = stages_lib.METHODS[config.method]
    if stage == "all":
        stages = plan
    elif stage in plan or stage == stages_lib.PretrainStage.name:
        stages = (stage,)
    else:
        raise configs_lib.ConfigError(
            f"method {config.method!r} runs stages {plan}; --stage {stage} "
            "is not one of them"
        )
    results = {}
    for s in stages:
        skip = stage == "all" or stages_lib.get(s).rerun_skips
        if runs.is_done(model_dir, s) and skip:
            results[s] = runs.read_done(model_dir, s)
            print(f"[{s}] already trained ({runs.done_path(model_dir, s)}); "
                  "skipping")
            continue
        print(f"[{s}] training ({config.method})")
        results[s] = train_stage(config, model_dir, s, verbose=verbose,
                                 **options)
    return results
