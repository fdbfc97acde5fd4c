"""Training, evaluating and exporting the detector: Model Garden's train_lib.

``train`` / ``evaluate`` run ``train_lib.run_experiment`` (orbit) with the
COCO evaluator; ``export`` uses ``export_saved_model_lib`` with a
``DetectionModule`` serving ``image_tensor`` and ``image_bytes``.
``official.*`` is imported inside the functions.
"""

import glob
import json
import os
import time

import numpy as np

from mtct_tf import fileio
from mtct_tf.data import shards
from mtct_tf.detector.config import CLASS_NAMES

_METRIC_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "ARmax1",
                "ARmax10", "ARmax100", "ARs", "ARm", "ARl")


def _run(params, model_dir, mode):
    """``train_lib.run_experiment`` on one CPU/GPU; returns the eval logs."""
    import tensorflow as tf
    from official.common import distribute_utils
    from official.core import task_factory, train_lib, train_utils

    os.makedirs(model_dir, exist_ok=True)
    if "train" in mode:
        train_utils.serialize_config(params, model_dir)
    num_gpus = len(tf.config.list_physical_devices("GPU"))
    strategy = distribute_utils.get_distribution_strategy(
        distribution_strategy="one_device", num_gpus=min(num_gpus, 1))
    with strategy.scope():
        task = task_factory.get_task(params.task, logging_dir=model_dir)
    logs = {}

    def keep(output):
        logs.clear()
        logs.update(output)

    train_lib.run_experiment(
        distribution_strategy=strategy, task=task, mode=mode, params=params,
        model_dir=model_dir, eval_actions=[keep] if "eval" in mode else None)
    return {k: float(np.asarray(v)) for k, v in logs.items()
            if k in _METRIC_KEYS or k.startswith(("AP", "AR"))}


def _write_metrics(model_dir, metrics):
    path = os.path.join(model_dir, "eval_metrics.json")
    fileio.write_json(path, metrics)
    return path


def _latest_step(model_dir):
    import tensorflow as tf

    ckpt = tf.train.latest_checkpoint(model_dir)
    return int(ckpt.rsplit("-", 1)[-1]) if ckpt else 0


def train(params, model_dir, *, evaluate=True):
    """Trains with Model Garden's orbit loop, then evaluates once.

    Resumes from the latest checkpoint in ``model_dir``. With ``evaluate``
    (mode ``train_and_eval``), the COCO metrics of the final checkpoint on
    the eval records are written to ``<model_dir>/eval_metrics.json``.

    Returns:
        Dict with ``minutes`` (wall time of this call), ``steps`` and, with
        ``evaluate``, the COCO metrics (``AP``, ``AP50``, ...).
    """
    start = time.time()
    evaluate = evaluate and bool(params.task.validation_data.input_path)
    logs = _run(params, model_dir, "train_and_eval" if evaluate else "train")
    out = {"minutes": (time.time() - start) / 60,
           "steps": _latest_step(model_dir)}
    if evaluate:
        out.update(logs)
        _write_metrics(model_dir, _metric_record(params, model_dir, logs))
    return out


def _metric_record(params, model_dir, logs):
    return {
        "AP": logs.get("AP"), "AP50": logs.get("AP50"),
        "metrics": logs, "step": _latest_step(model_dir),
        "eval_pattern": params.task.validation_data.input_path,
        "num_images": shards.count_records(
            sorted(glob.glob(params.task.validation_data.input_path))),
    }


def evaluate(params, model_dir):
    """COCO evaluation of the latest checkpoint in ``model_dir``.

    Writes ``<model_dir>/eval_metrics.json`` and returns it as a dict
    (``AP`` and ``AP50`` at the top, all COCO metrics under ``metrics``).
    """
    if not params.task.validation_data.input_path:
        raise ValueError("evaluate needs eval records: pass records= or "
                         "eval_pattern= to detector_config.")
    if not _latest_step(model_dir):
        raise FileNotFoundError(f"No checkpoint in {model_dir}")
    logs = _run(params, model_dir, "eval")
    record = _metric_record(params, model_dir, logs)
    _write_metrics(model_dir, record)
    return record


def export(params, model_dir, export_dir, *, checkpoint=None, batch_size=None):
    """Exports a SavedModel with ``image_tensor`` / ``image_bytes`` signatures.

    Uses ``export_saved_model_lib.export_inference_graph`` with a
    ``DetectionModule`` whose signature map also names ``image_tensor`` as
    ``serving_default``. Inputs: ``inputs`` (uint8 ``[B, H, W, 3]`` or a
    ``[B]`` string of encoded JPEG/PNG, all of one size per batch). Outputs:
    ``detection_boxes`` (``[B, N, 4]`` as ymin, xmin, ymax, xmax in
    resized-input pixels: rescale with ``image_info``, see
    ``rescale_boxes``), ``detection_scores``, ``detection_classes``,
    ``num_detections``, ``image_info``.

    Args:
        params: the experiment config (``load_config`` of the training run).
        model_dir: where the checkpoints are.
        export_dir: gets ``saved_model/``, ``params.yaml`` and
            ``detector.json``.
        checkpoint: a checkpoint path (default: the latest in ``model_dir``).
        batch_size: a fixed batch size, or ``None`` for any.

    Returns:
        The SavedModel directory.
    """
    import tensorflow as tf
    from official.vision.serving import detection, export_saved_model_lib

    checkpoint = checkpoint or tf.train.latest_checkpoint(model_dir)
    if not checkpoint:
        raise FileNotFoundError(f"No checkpoint in {model_dir}")
    size = list(params.task.model.input_size[:2])

    class _Module(detection.DetectionModule):
        def get_inference_signatures(self, function_keys):
            sigs = super().get_inference_signatures(function_keys)
            sigs["serving_default"] = sigs["image_tensor"]
            return sigs

    module = _Module(params=params, batch_size=batch_size,
                     input_image_size=size, input_type="image_tensor")
    export_saved_model_lib.export_inference_graph(
        input_type="image_tensor", batch_size=batch_size,
        input_image_size=size, params=params, checkpoint_path=checkpoint,
        export_dir=export_dir, export_module=module,
        export_saved_model_subdir="saved_model",
        function_keys={"image_tensor": "image_tensor",
                       "image_bytes": "image_bytes"})
    with open(os.path.join(export_dir, "detector.json"), "w") as f:
        json.dump({"classes": list(CLASS_NAMES), "input_size": size,
                   "checkpoint": checkpoint, "box_format":
                   "ymin,xmin,ymax,xmax in resized-input pixels"}, f, indent=1)
    return os.path.join(export_dir, "saved_model")

