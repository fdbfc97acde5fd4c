"""Keras callbacks of the fit loop (``training.train_stage``).

``Backup``        resume state that a kill at any instant leaves usable.
``BestWeights``   the weights with the best validation value, kept across
                  resumes.
``CompactProgbar`` the progress bar with the losses and mean accuracy only.
``EpochSeconds``  each epoch's wall time (with its validation) in the logs.
``TimeBudget``    stops a stage after a wall-clock budget, publishing the
                  elapsed share of it to the learning-rate decay.
"""

import json
import math
import os
import sys
import time

import keras

from mtct_tf import fileio, progress


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
        with fileio.replacing(self._weights_path, ".weights.h5") as tmp:
            self.model.save_weights(tmp, overwrite=True)
        fileio.write_json(self._training_metadata_path,
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
        with fileio.replacing(self.path, ".weights.h5") as tmp:
            self.net.save_weights(tmp)
        fileio.write_json(self.meta, {"best": self.best, "epoch": epoch + 1,
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


class EpochSeconds(keras.callbacks.Callback):
    """Adds ``epoch_seconds``, the epoch's wall time, to the epoch's logs.

    Placed before ``CSVLogger``, it becomes a column of history.csv, from
    which accuracy-against-time curves are drawn (the cumulative sum is the
    stage's training time; an epoch interrupted by a kill and repeated after
    the resume is counted once, as the repeat).
    """

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["epoch_seconds"] = round(time.perf_counter() - self._start,
                                          3)


class TimeBudget(keras.callbacks.Callback):
    """Stops training once ``seconds`` have passed since it began.

    Before every batch the elapsed share of the budget (0 to 1) is written
    into ``progress`` (a float32 ``tf.Variable``), which the learning-rate
    schedule reads (``training.make_optimizer``), so the decay completes
    when the budget does. The epoch in which the budget runs out ends after
    its current batch and is validated as usual.
    """

    def __init__(self, seconds, progress):
        super().__init__()
        self.seconds, self.progress = float(seconds), progress
        self.stopped_early = False

    def _elapsed(self):
        return time.perf_counter() - self._start

    def on_train_begin(self, logs=None):
        self._start = time.perf_counter()

    def on_train_batch_begin(self, batch, logs=None):
        self.progress.assign(min(1.0, self._elapsed() / self.seconds))

    def on_train_batch_end(self, batch, logs=None):
        if self._elapsed() >= self.seconds:
            self.model.stop_training = True
            self.stopped_early = True
