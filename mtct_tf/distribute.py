"""tf.distribute strategies and precision policies for training.

``--strategy default|mirrored|multi_worker|tpu``. ``multi_worker`` reads the
cluster from the ``TF_CONFIG`` environment variable; ``tpu`` from
``TPU_NAME`` (or a local TPU). Batch sizes in configs are global: each of
the strategy's replicas gets ``batch_size / num_replicas_in_sync``.
"""

import json
import os

import keras
import tensorflow as tf

_STRATEGIES = {}


def get_strategy(name="default"):
    """Returns (and caches: a process may create one of each) a strategy."""
    if name in _STRATEGIES:
        return _STRATEGIES[name]
    if name == "default":
        strategy = tf.distribute.get_strategy()
    elif name == "mirrored":
        strategy = tf.distribute.MirroredStrategy()
    elif name == "multi_worker":
        if "TF_CONFIG" not in os.environ:
            raise ValueError(
                "--strategy multi_worker needs TF_CONFIG (see docs/SCALING.md)"
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
            "strategy must be default, mirrored, multi_worker or tpu. "
            f"Received: {name!r}"
        )
    _STRATEGIES[name] = strategy
    return strategy


def set_precision(policy=""):
    """Sets Keras' global dtype policy ("" = float32)."""
    keras.mixed_precision.set_global_policy(policy or "float32")


def task():
    """(task type, task index) from TF_CONFIG, or ("chief", 0)."""
    spec = json.loads(os.environ.get("TF_CONFIG", "{}")).get("task", {})
    return spec.get("type", "chief"), int(spec.get("index", 0))


def is_chief():
    """True where checkpoints and exports are written.

    With MultiWorkerMirroredStrategy and no "chief" in the cluster, worker 0
    is the chief.
    """
    kind, index = task()
    return kind == "chief" or (kind == "worker" and index == 0)
