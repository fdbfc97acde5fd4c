"""tf.distribute strategies, data sharding and chief-only writes for training.

``--strategy default|mirrored|multi_worker|tpu`` (``runtime.strategy``):

* ``default``: one device.
* ``mirrored``: every local GPU (or the CPU) of one host, one replica each.
* ``multi_worker``: ``MultiWorkerMirroredStrategy``; the cluster and this
  process's task come from the ``TF_CONFIG`` environment variable.
* ``tpu``: ``TPUStrategy``; the TPU from ``TPU_NAME`` (``local`` on a TPU
  VM).

Batch sizes in configs are *global*: one optimiser step consumes
``batch_size`` examples in all, and each of the ``num_replicas_in_sync``
replicas gets ``batch_size / num_replicas_in_sync`` of them (Keras splits
each global batch). Losses are normalised by global counts (the
cross-replica reductions ``global_counts`` / ``global_sum`` here, used by
``MTNTrainer``) and batch statistics are synchronised (``sync_batch_norm``),
so a step computes the same gradient whatever the number of replicas.

Training datasets are sharded across workers by file
(``AutoShardPolicy.FILE``; see ``shard_dataset``). Every worker writes
checkpoints and models, because saving can involve collective ops that all
workers must join, but only the chief writes into the model directory; the
others write into a temporary directory that is deleted (``write_dir``), as
Keras' multi-worker guide recommends. docs/SCALING.md has the recipes.
"""

import contextlib
import json
import os
import shutil
import tempfile
import warnings

import keras
import tensorflow as tf

STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")
_STRATEGIES = {}


def get_strategy(name="default"):
    """Returns (and caches) the strategy called ``name``.

    A process makes at most one strategy of each kind: a
    ``MultiWorkerMirroredStrategy`` must be created once, before other
    TensorFlow ops run.

    Args:
        name: one of ``STRATEGIES``.

    Returns:
        A ``tf.distribute.Strategy``.

    Raises:
        ValueError: an unknown name, or ``multi_worker`` without
            ``TF_CONFIG``.
    """
    if name in _STRATEGIES:
        return _STRATEGIES[name]
    if name == "default":
        strategy = tf.distribute.get_strategy()
    elif name == "mirrored":
        strategy = tf.distribute.MirroredStrategy()
    elif name == "multi_worker":
        if "TF_CONFIG" not in os.environ:
            raise ValueError(
                "--strategy multi_worker needs the TF_CONFIG environment "
                "variable (see docs/SCALING.md)"
            )
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    elif name == "tpu":
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(
            tpu=os.environ.get("TPU_NAME", "")
        )
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        strategy = tf.distribute.TPUStrategy(resolver)
    else:
        raise ValueError(
            f"strategy must be one of {STRATEGIES}. Received: {name!r}"
        )
    _STRATEGIES[name] = strategy
    return strategy


def set_precision(policy=""):
    """Sets Keras' global dtype policy ("" = float32).

    Call it before building models. With ``"mixed_float16"`` (GPUs),
    ``Model.compile`` wraps the optimiser in a ``LossScaleOptimizer``, whose
    ``scale_loss`` and ``apply`` ``MTNTrainer.train_step`` calls;
    ``"mixed_bfloat16"`` (TPUs, recent GPUs) needs no loss scaling.
    """
    keras.mixed_precision.set_global_policy(policy or "float32")


# === Workers ===


def _is_multi_worker(strategy):
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def task():
    """(task type, task index) from ``TF_CONFIG``, or ``("chief", 0)``."""
    spec = json.loads(os.environ.get("TF_CONFIG", "{}")).get("task", {})
    return spec.get("type", "chief"), int(spec.get("index", 0))


def _cluster():
    return json.loads(os.environ.get("TF_CONFIG", "{}")).get("cluster", {})


def is_chief(strategy=None):
    """True where checkpoints and exports go into the model directory.

    Args:
        strategy: a strategy, a strategy name, or ``None`` to read
            ``TF_CONFIG`` alone. Only a multi-worker strategy has non-chief
            workers.

    With ``MultiWorkerMirroredStrategy`` the ``chief`` task is the chief, or
    worker 0 when the cluster has no ``chief`` task.
    """
    if isinstance(strategy, str):
        if strategy != "multi_worker":
            return True
    elif strategy is not None and not _is_multi_worker(strategy):
        return True
    kind, index = task()
    if kind == "chief":
        return True
    return kind == "worker" and index == 0 and not _cluster().get("chief")


def num_workers(strategy):
    """Number of input pipelines: hosts that read data for ``strategy``."""
    if _is_multi_worker(strategy):
        spec = strategy.cluster_resolver.cluster_spec().as_dict()
        return max(1, len(spec.get("worker", ())) + len(spec.get("chief", ())))
    if isinstance(strategy, tf.distribute.TPUStrategy):
        return max(1, strategy.extended.num_hosts)
    return 1


def barrier(strategy):
    """Blocks until every worker of ``strategy`` reaches this point.

    Used after the chief writes a file that the other workers read next
    (the shop model the street stage starts from).
    """
    if num_workers(strategy) > 1:

        @tf.function
        def all_reduce():
            ones = strategy.run(lambda: tf.ones([]))
            return strategy.reduce(tf.distribute.ReduceOp.SUM, ones,
                                   axis=None)

        all_reduce()


@contextlib.contextmanager
def write_dir(path, strategy=None, copy=()):
    """Yields the directory this worker writes ``path``'s files into.

    The chief writes into ``path`` itself. Another worker gets a fresh
    temporary directory, deleted on exit, holding copies of the chief's
    files named in ``copy`` (when they exist): the state to resume from
    (``BackupAndRestore``, best weights), so that every worker restores the
    same state. Resuming a multi-worker run therefore needs a model
    directory every worker can read (NFS, GCS).

    Args:
        path: the model directory of a stage (created).
        strategy: the training strategy (see ``is_chief``).
        copy: names of files or directories in ``path`` to copy.
    """
    os.makedirs(path, exist_ok=True)
    if is_chief(strategy):
        yield path
        return
    kind, index = task()
    tmp = tempfile.mkdtemp(prefix=f"mtct-{kind}{index}-")
    try:
        for name in copy:
            src = os.path.join(path, name)
            if os.path.isdir(src):
                shutil.copytree(src, os.path.join(tmp, name))
            elif os.path.isfile(src):
                shutil.copy2(src, os.path.join(tmp, name))
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# === Data ===


def shard_policy(num_files, workers):
    """The ``AutoShardPolicy`` for a dataset of ``num_files`` files.

    ``FILE`` (each worker reads its own files: no wasted reading) when there
    are at least as many files as workers, else ``DATA`` (every worker reads
    every file and keeps every ``workers``-th element; needs a
    deterministic element order, which a seeded pipeline has). FILE
    sharding with a number of files that is not a multiple of ``workers``
    gives some workers more files, so their examples are seen more often;
    a warning says so.
    """
    policy = tf.data.experimental.AutoShardPolicy
    if workers <= 1:
        return policy.FILE
    if num_files < workers:
        return policy.DATA
    if num_files % workers:
        warnings.warn(
            f"{num_files} files over {workers} workers: some workers read "
            "more files than others, so their examples are seen more often; "
            "convert with --num_shards a multiple of the number of workers",
            stacklevel=2,
        )
    return policy.FILE


def shard_dataset(dataset, num_files, strategy):
    """Sets the auto-shard policy of ``dataset`` for ``strategy``'s workers.

    The sharding itself happens when Keras distributes the dataset
    (``experimental_distribute_dataset``); one worker is left as is.

    Args:
        dataset: a ``tf.data.Dataset`` built with the *global* batch size
            from ``num_files`` TFRecord files.
        num_files: number of files it reads.
        strategy: the training strategy.

    Returns:
        The dataset with options set.
    """
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = shard_policy(
        num_files, num_workers(strategy)
    )
    return dataset.with_options(options)


# === Cross-replica reductions of the training step ===
#
# Under a strategy each replica holds a share of the global batch and the
# optimiser sums the replicas' gradients. A masked mean must then be divided
# by the *global* count of labels (one small all-reduce), so that the
# replicas' losses add up to exactly the loss of the global batch even when
# replicas hold different numbers of labels (``losses.global_shares`` and
# ``transfer.MTNTrainer``).


def num_replicas():
    """Replicas in sync in the current replica context (1 outside one).

    Other backends than TensorFlow have no strategy: 1.
    """
    if keras.backend.backend() != "tensorflow":
        return 1
    context = tf.distribute.get_replica_context()
    return 1 if context is None else context.num_replicas_in_sync


def global_sum(value):
    """``value`` summed over the replicas (itself with one replica)."""
    if num_replicas() == 1:
        return value
    return tf.distribute.get_replica_context().all_reduce(
        tf.distribute.ReduceOp.SUM, value)


def global_counts(counts):
    """(local, global) float32 vectors of label counts: one all-reduce.

    The counts depend on the labels only, so the all-reduce can run before
    the forward pass and does not wait for it.

    Args:
        counts: float32 scalars (``losses.label_count``), one per mean.

    Returns:
        ``(local, total)``: the counts stacked, and their sums over the
        replicas (a constant for the gradient).
    """
    local = keras.ops.stack(counts)
    return local, keras.ops.stop_gradient(global_sum(local))


# === Model ===


def sync_batch_norm(model, enabled=True):
    """Sets ``synchronized`` on every ``BatchNormalization`` of ``model``.

    Synchronised batch norm computes training-mode statistics over the
    global batch (all replicas) instead of each replica's share, so that
    the step is the same computation as on one device with the global
    batch (at the cost of three small all-reduces per layer and step). The
    flag only matters under a strategy with several replicas.

    Returns:
        The number of layers changed.
    """
    changed = 0
    for layer in _layers(model):
        if isinstance(layer, keras.layers.BatchNormalization):
            if layer.synchronized != bool(enabled):
                layer.synchronized = bool(enabled)
                changed += 1
    return changed


def _layers(model):
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers"):
            yield from _layers(layer)
