"""The garment detector: TF Model Garden Faster R-CNN, trained, exported, used.

SPEC §2.1: a Faster R-CNN finds the garment on street photos and its crop feeds
the attribute network; shop photos are clean and used whole. Everything here
wraps Model Garden (``official.vision``) rather than re-implementing it:

* ``detector_config``: the registered ``fasterrcnn_resnetfpn_coco`` experiment
  with a ``small`` (CPU) or ``paper`` preset, 2 classes (background, garment),
  and everything that reaches the network (GCS init checkpoint, COCO
  annotation file) switched off.
* ``write_detection_records``: manifest entries with boxes -> sharded
  tf.Examples in Model Garden's detection format.
* ``train`` / ``evaluate`` / ``export``: ``train_lib.run_experiment`` (orbit)
  with the COCO evaluator; ``export_saved_model_lib`` with a
  ``DetectionModule`` serving ``image_tensor`` and ``image_bytes``.
* ``rescale_boxes`` / ``choose_box`` / ``expand_box``: the box maths.
* ``crop_with_detector``: runs the exported SavedModel over street images and
  writes attribute shards of the crops.

``official.*`` is imported inside functions so that ``import mtct_tf`` stays
light.
"""

import dataclasses
import glob
import io
import json
import math
import os
import time

import numpy as np

from mtct_tf.data import features

PRESETS = ("small", "demo", "paper")
CLASS_NAMES = ("background", "garment")
GARMENT_CLASS = 1
# Model Garden's COCO evaluator casts image/source_id to an integer, so the
# detection records carry a numeric source id and keep the manifest id here.
DET_IMAGE_ID = "image/filename"
RECORDS_INFO = "detection_records.json"
# Provenance of a crop record (added by ``crop_with_detector``).
CROP_BBOX = "image/crop/bbox"
CROP_SOURCE = "image/crop/source"
CROP_SCORE = "image/crop/score"
EXPERIMENT = "fasterrcnn_resnetfpn_coco"


# --------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------


def _split_pattern(records, split):
    return os.path.join(records, f"{split}-*-of-*.tfrecord")


def count_records(pattern):
    """Number of records in the TFRecord files matching ``pattern``."""
    import tensorflow as tf

    return sum(
        1 for f in sorted(glob.glob(pattern))
        for _ in tf.data.TFRecordDataset(f)
    )


def detector_config(preset="small", *, records=None, eval_split="val",
                    train_pattern=None, eval_pattern=None, steps=None,
                    train_batch_size=None, eval_batch_size=None,
                    input_size=None, learning_rate=None, init_checkpoint=None,
                    params_override=None):
    """Builds the Faster R-CNN ``ExperimentConfig`` for the garment detector.

    Starts from Model Garden's registered ``fasterrcnn_resnetfpn_coco`` and
    changes only what the preset and the overrides say.

    * ``small`` (CPU): ResNet-18, 128-filter FPN and RPN head, a box head of
      2 FC layers of 256 (no convs), 256 px input (sensible range 256-384),
      256 train / 100 test proposals, 64 sampled RoIs, batch 8, SGD lr
      0.02, 1500 steps. On X-Domain-synth street scenes (540 training
      photos) it reached AP50 0.989 / AP 0.623 on the test split from
      scratch (docs/DETECTOR.md).
    * ``demo``: ``small`` cut to the 128 px photos of X-Domain-synth (garments
      of 30-90 px): ResNet-10, FPN levels 3-5 with anchors of 32, 64 and 128
      px, 128 px input, 500 -> 128 train / 300 -> 50 test proposals, 700
      steps. On the demo's test split it reached AP50 0.955-0.972 / AP
      0.47-0.50, at about a sixth of the CPU time per step of ``small``
      at 256 px (docs/DETECTOR.md).
    * ``paper``: ResNet-50 FPN with Model Garden's COCO heads, 640 px input
      (range 640-1024; COCO uses 1024), batch 64, SGD lr 0.12, 22500 steps.

    Both: 2 classes (background + garment), float32 on CPU, no sync BN, no
    network access (the COCO config's GCS backbone checkpoint and annotation
    file are cleared: the evaluator builds its ground truth from the eval
    records). The learning rate warms up linearly then steps down by 10x at
    2/3 and 8/9 of training, Model Garden's COCO schedule scaled to ``steps``.

    Args:
        preset: ``"small"``, ``"demo"`` or ``"paper"``.
        records: a detection records directory (``write_detection_records``);
            sets the train pattern to ``train-*`` and the eval pattern to
            ``<eval_split>-*`` inside it.
        eval_split: the split evaluated (``"val"`` or ``"test"``).
        train_pattern, eval_pattern: explicit file patterns (win over
            ``records``).
        steps: training steps.
        train_batch_size, eval_batch_size: global batch sizes.
        input_size: square input side in pixels (a multiple of
            ``2 ** max_level``: 64, or 32 for ``demo``).
        learning_rate: peak learning rate.
        init_checkpoint: a backbone checkpoint (ImageNet / COCO) to start from;
            restored into ``task.init_checkpoint`` with modules ``backbone``.
        params_override: a dict or YAML string applied last
            (Model Garden's ``--params_override``).

    Returns:
        An ``official.core.config_definitions.ExperimentConfig``.

    Raises:
        ValueError: unknown preset or an input size that is not a multiple
            of ``2 ** max_level``.
    """
    from official.core import exp_factory
    from official.modeling import hyperparams
    from official.vision import registry_imports  # noqa: F401 (registers)

    if preset not in PRESETS:
        raise ValueError(
            f"Unknown detector preset. Expected one of {PRESETS}. "
            f"Received: preset={preset!r}"
        )
    demo = preset == "demo"
    small = preset == "small" or demo  # demo is small, resized.
    size = input_size or (128 if demo else 256 if small else 640)
    max_level = 5 if demo else 6
    if size % 2 ** max_level:
        raise ValueError(
            f"input_size must be a multiple of {2 ** max_level} "
            f"(2 ** max_level). Received: input_size={size}"
        )
    steps = steps or (700 if demo else 1500 if small else 22500)
    train_bs = train_batch_size or (8 if small else 64)
    eval_bs = eval_batch_size or 8
    lr = learning_rate or (0.02 if small else 0.12)

    params = exp_factory.get_exp_config(EXPERIMENT)
    task = params.task
    model = task.model
    model.num_classes = len(CLASS_NAMES)
    model.input_size = [size, size, 3]
    model.norm_activation.use_sync_bn = False
    task.init_checkpoint = init_checkpoint or None
    task.init_checkpoint_modules = "backbone"
    task.annotation_file = None
    params.runtime.mixed_precision_dtype = "float32"
    params.runtime.distribution_strategy = "one_device"
    params.runtime.num_gpus = 0
    if small:
        model.backbone.resnet.model_id = 18
        model.decoder.fpn.num_filters = 128
        model.rpn_head.num_filters = 128
        # The box head runs on every RoI: Model Garden's 4 convs of 256
        # filters per RoI cost more than the backbone on CPU. Two narrow FCs
        # (the original Faster R-CNN head, 256 wide) measured ~3x faster.
        model.detection_head.num_convs = 0
        model.detection_head.num_fcs = 2
        model.detection_head.fc_dims = 256
        model.roi_generator.pre_nms_top_k = 1000
        model.roi_generator.num_proposals = 256
        model.roi_generator.test_pre_nms_top_k = 500
        model.roi_generator.test_num_proposals = 100
        model.roi_sampler.num_sampled_rois = 64
        model.detection_generator.max_num_detections = 20
    if demo:
        # The demo photos are 128 px with garments of 30-90 px (up to 112
        # with the scale jitter): anchors of 32, 64 and 128 px on levels
        # 3-5 cover them; level 2 (a 32 x 32 map) and level 6 (2 x 2, 256
        # px anchors) only cost time. 128 px is the photos' own size: more
        # pixels carry no information. At this size ResNet-10 reached about
        # the AP50 of ResNet-18 (0.955 vs 0.965 at 700 steps) at about 1.4
        # times its steps/s. About 1,000 anchors per image, so 500 pre-NMS
        # proposals keep the likely half.
        model.backbone.resnet.model_id = 10
        model.min_level, model.max_level = 3, max_level
        model.anchor.anchor_size = 4.0
        model.roi_generator.pre_nms_top_k = 500
        model.roi_generator.num_proposals = 128
        model.roi_generator.test_pre_nms_top_k = 300
        model.roi_generator.test_num_proposals = 50
    elif not small:
        model.backbone.resnet.model_id = 50

    for data, pattern, bs in (
        (task.train_data, train_pattern, train_bs),
        (task.validation_data, eval_pattern, eval_bs),
    ):
        data.dtype = "float32"
        data.global_batch_size = bs
        data.shuffle_buffer_size = 1000
        data.input_path = pattern or ""
    if records:
        task.train_data.input_path = (
            train_pattern or _split_pattern(records, "train"))
        task.validation_data.input_path = (
            eval_pattern or _split_pattern(records, eval_split))

    trainer = params.trainer
    trainer.train_steps = steps
    trainer.validation_steps = -1  # The whole eval split.
    trainer.validation_interval = steps  # One evaluation, at the end.
    loop = max(1, min(100, steps))
    trainer.steps_per_loop = loop
    trainer.summary_interval = loop
    trainer.checkpoint_interval = max(loop, min(500, steps))
    trainer.max_to_keep = 3
    warmup = max(1, min(500, steps // 10))
    trainer.optimizer_config.learning_rate.stepwise.boundaries = [
        max(warmup + 1, int(steps * 2 / 3)), max(warmup + 2, int(steps * 8 / 9))
    ]
    trainer.optimizer_config.learning_rate.stepwise.values = [
        lr, lr / 10, lr / 100
    ]
    trainer.optimizer_config.warmup.linear.warmup_steps = warmup
    trainer.optimizer_config.warmup.linear.warmup_learning_rate = lr / 20

    if params_override:
        params = hyperparams.override_params_dict(
            params, params_override, is_strict=True)
    params.validate()
    return params


def load_config(path):
    """Reads a ``params.yaml`` written by ``train`` or ``export``."""
    from official.core import exp_factory
    from official.modeling import hyperparams
    from official.vision import registry_imports  # noqa: F401

    params = exp_factory.get_exp_config(EXPERIMENT)
    params.task.init_checkpoint = None
    params.task.annotation_file = None
    return hyperparams.override_params_dict(params, path, is_strict=True)


def with_eval_pattern(params, pattern):
    """Points the evaluator at other records (e.g. the test split)."""
    params.task.validation_data.input_path = pattern
    return params


# --------------------------------------------------------------------------
# Detection records
# --------------------------------------------------------------------------


def _bytes(v):
    import tensorflow as tf

    return tf.train.Feature(bytes_list=tf.train.BytesList(value=v))


def _ints(v):
    import tensorflow as tf

    return tf.train.Feature(int64_list=tf.train.Int64List(value=v))


def _floats(v):
    import tensorflow as tf

    return tf.train.Feature(float_list=tf.train.FloatList(value=v))


def detection_example(encoded, fmt, width, height, boxes, *, source_id,
                      image_id, classes=None):
    """One tf.Example in Model Garden's detection format.

    Args:
        encoded, fmt, width, height: the image (bytes, ``"jpeg"``/``"png"``,
            pixels).
        boxes: ``[(xmin, ymin, xmax, ymax), ...]`` in pixels.
        source_id: an integer, unique within the split (the COCO evaluator
            needs integer image ids).
        image_id: the manifest id, kept under ``image/filename``.
        classes: class labels (default: all ``GARMENT_CLASS``).

    Returns:
        A ``tf.train.Example``.
    """
    import tensorflow as tf

    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    classes = [GARMENT_CLASS] * len(boxes) if classes is None else classes
    f = {
        features.ENCODED: _bytes([encoded]),
        features.FORMAT: _bytes([fmt.encode()]),
        features.SOURCE_ID: _bytes([str(int(source_id)).encode()]),
        DET_IMAGE_ID: _bytes([image_id.encode()]),
        features.HEIGHT: _ints([height]),
        features.WIDTH: _ints([width]),
        features.BBOX_XMIN: _floats(boxes[:, 0] / width),
        features.BBOX_YMIN: _floats(boxes[:, 1] / height),
        features.BBOX_XMAX: _floats(boxes[:, 2] / width),
        features.BBOX_YMAX: _floats(boxes[:, 3] / height),
        features.CLASS_LABEL: _ints(classes),
        features.CLASS_TEXT: _bytes(
            [CLASS_NAMES[c].encode() for c in classes]),
        features.IS_CROWD: _ints([0] * len(boxes)),
        features.AREA: _floats(
            (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])),
    }
    return tf.train.Example(features=tf.train.Features(feature=f))


def write_shards(out_dir, split, serialized, num_shards):
    """Writes serialized records as ``<split>-NNNNN-of-NNNNN.tfrecord``.

    Each shard is written as ``.<name>.tmp`` and renamed when complete (the
    converter's convention, which ``mtct_tf.data.pipeline`` recognises);
    shards of ``split`` left by an earlier run are removed first. Records are
    dealt out in contiguous blocks, so file order is record order.

    Returns:
        The list of shard paths.
    """
    import tensorflow as tf

    from mtct_tf.data import convert

    serialized = list(serialized)
    num_shards = max(1, min(num_shards, len(serialized)))
    for old in glob.glob(_split_pattern(glob.escape(out_dir), split)):
        os.remove(old)
    per = math.ceil(len(serialized) / num_shards)
    names = []
    for i in range(num_shards):
        name = convert.shard_name(split, i, num_shards)
        tmp = os.path.join(out_dir, f".{name}.tmp")
        with tf.io.TFRecordWriter(tmp) as w:
            for s in serialized[i * per:(i + 1) * per]:
                w.write(s)
        names.append(os.path.join(out_dir, name))
        os.replace(tmp, names[-1])
    return names


def write_detection_records(entries, out_dir, *, domain=None,
                            records_per_shard=500, manifest_path="manifest"):
    """Writes manifest entries that have a box as detection records.

    Args:
        entries: ``mtct_tf.data.manifest.Entry`` objects.
        out_dir: created if missing; gets ``<split>-0000k-of-0000n.tfrecord``
            and ``detection_records.json`` (counts per split).
        domain: keep only this domain (e.g. ``"street"``); ``None`` = all.
        records_per_shard: shard size.
        manifest_path: named in image errors.

    Returns:
        The info dict written to ``detection_records.json``: images per split
        and the number of entries skipped for having no box or another
        domain.
    """
    from mtct_tf.data import convert

    os.makedirs(out_dir, exist_ok=True)
    by_split = {}
    skipped = {"no_box": 0, "other_domain": 0}
    for e in entries:
        if domain is not None and e.domain != domain:
            skipped["other_domain"] += 1
        elif e.bbox is None:
            skipped["no_box"] += 1
        else:
            by_split.setdefault(e.split, []).append(e)
    counts = {}
    for split, items in sorted(by_split.items()):
        serialized = []
        for i, e in enumerate(items, start=1):
            # The converter's checks; non-RGB images come back as RGB JPEG.
            e, data, fmt, height, width, _ = convert.load_image(
                e, manifest_path=manifest_path)
            ex = detection_example(
                data, fmt, width, height, [e.bbox], source_id=i,
                image_id=e.id)
            serialized.append(ex.SerializeToString())
        n = math.ceil(len(serialized) / records_per_shard)
        write_shards(out_dir, split, serialized, n)
        counts[split] = len(serialized)
    info = {"classes": list(CLASS_NAMES), "domain": domain,
            "images": counts, "skipped": skipped}
    tmp = os.path.join(out_dir, RECORDS_INFO + ".tmp")
    with open(tmp, "w") as f:
        json.dump(info, f, indent=1)
    os.replace(tmp, os.path.join(out_dir, RECORDS_INFO))
    return info


# --------------------------------------------------------------------------
# Train / evaluate / export
# --------------------------------------------------------------------------

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
    with open(path + ".tmp", "w") as f:
        json.dump(metrics, f, indent=1)
    os.replace(path + ".tmp", path)
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
        "num_images": count_records(params.task.validation_data.input_path),
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


# --------------------------------------------------------------------------
# Boxes
# --------------------------------------------------------------------------


def rescale_boxes(boxes, image_info):
    """Maps detector boxes back to original-image pixels.

    Model Garden resizes an image by ``scale`` (keeping its aspect ratio),
    crops at ``offset`` and pads; its boxes live in that resized input.
    ``image_info`` is ``[[orig_h, orig_w], [input_h, input_w],
    [y_scale, x_scale], [y_offset, x_offset]]``, so
    ``original = (box + offset) / scale``, clipped to the original image.

    Args:
        boxes: ``[..., N, 4]`` as ``(ymin, xmin, ymax, xmax)`` in resized-input
            pixels.
        image_info: ``[..., 4, 2]`` matching the leading dimensions.

    Returns:
        ``[..., N, 4]`` float64 ``(ymin, xmin, ymax, xmax)`` in original pixels.
    """
    boxes = np.asarray(boxes, np.float64)
    info = np.asarray(image_info, np.float64)
    scale = np.tile(info[..., 2:3, :], 2)  # [..., 1, 4]: ys, xs, ys, xs
    offset = np.tile(info[..., 3:4, :], 2)
    size = np.tile(info[..., 0:1, :], 2)
    out = (boxes + offset) / scale
    return np.clip(out, 0.0, size)


def normalize_boxes(boxes, height, width):
    """``(ymin, xmin, ymax, xmax)`` pixels -> the same normalised to [0, 1]."""
    return np.asarray(boxes, np.float64) / np.array(
        [height, width, height, width], np.float64)


def expand_box(box, margin, height, width):
    """Grows a pixel box by ``margin`` x its size per side, clipped, integer.

    Args:
        box: ``(ymin, xmin, ymax, xmax)`` pixels.
        margin: fraction of the box height / width added on each side.
        height, width: the image size.

    Returns:
        Integer ``(top, left, bottom, right)`` with at least one pixel.
    """
    ymin, xmin, ymax, xmax = (float(v) for v in box)
    dy, dx = (ymax - ymin) * margin, (xmax - xmin) * margin
    # Float32 round trips through the detector's resizing leave edges like
    # 30.000002: within EPS of an integer, an edge is that integer.
    eps = 1e-3
    top = int(np.clip(math.floor(ymin - dy + eps), 0, height - 1))
    left = int(np.clip(math.floor(xmin - dx + eps), 0, width - 1))
    bottom = int(np.clip(math.ceil(ymax + dy - eps), top + 1, height))
    right = int(np.clip(math.ceil(xmax + dx - eps), left + 1, width))
    return top, left, bottom, right


def choose_box(boxes, scores, classes, num, *, min_score=0.5,
               class_id=GARMENT_CLASS):
    """Index of the highest-scoring detection that passes the filters.

    Args:
        boxes, scores, classes: one image's detector outputs.
        num: ``num_detections``.
        min_score: detections below are ignored.
        class_id: keep only this class (``None`` = any).

    Returns:
        The index, or ``None`` when no detection passes.
    """
    num = int(num)
    scores = np.asarray(scores)[:num]
    ok = scores >= min_score
    if class_id is not None:
        ok &= np.asarray(classes)[:num].astype(int) == int(class_id)
    ok &= np.all(np.isfinite(np.asarray(boxes)[:num]), axis=-1)
    if not ok.any():
        return None
    return int(np.argmax(np.where(ok, scores, -np.inf)))


def box_iou(a, b):
    """IoU of two ``(ymin, xmin, ymax, xmax)`` boxes."""
    y0, x0 = max(a[0], b[0]), max(a[1], b[1])
    y1, x1 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, y1 - y0) * max(0.0, x1 - x0)
    union = ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1])
             - inter)
    return inter / union if union > 0 else 0.0


# --------------------------------------------------------------------------
# Crops
# --------------------------------------------------------------------------


@dataclasses.dataclass
class CropStats:
    """What ``crop_with_detector`` did.

    Attributes:
        detector: street images cropped at a detection.
        ground_truth: fell back to the record's ground-truth box.
        whole_image: fell back to the whole image (no detection, no box).
        passed_through: non-street records copied unchanged.
        seconds: wall time of reading, detecting and cropping (the shop
            records read on the way included, writing the shards not).
        mean_iou: mean IoU of the chosen detection (before margin) with the
            ground-truth box, over street images that have one.
        per_split: records written per split.
    """

    detector: int = 0
    ground_truth: int = 0
    whole_image: int = 0
    passed_through: int = 0
    seconds: float = 0.0
    mean_iou: float = None
    per_split: dict = dataclasses.field(default_factory=dict)

    @property
    def street(self):
        return self.detector + self.ground_truth + self.whole_image

    @property
    def images_per_second(self):
        return self.street / self.seconds if self.seconds else 0.0

    def to_dict(self):
        d = dataclasses.asdict(self)
        d.update(street=self.street,
                 images_per_second=self.images_per_second)
        return d


def _feature_value(ex, key, default=None):
    if key not in ex.features.feature:
        return default
    f = ex.features.feature[key]
    kind = f.WhichOneof("kind")
    values = list(getattr(f, kind).value) if kind else []
    return values if values else default


def _read_source(source, schema=None):
    """The attribute records to crop, from shards or a manifest.

    Returns:
        ``(records, schema, total)``: an iterator of ``(split, serialized,
        tf.train.Example)`` in file order, the ``AttributeSchema`` and the
        number of records.
    """
    import tensorflow as tf

    from mtct_tf import attributes
    from mtct_tf.data import convert, manifest, pipeline

    if os.path.isdir(source):
        splits = sorted({m["split"] for m in map(
            convert.SHARD_RE.match, os.listdir(source)) if m})
        if not splits:
            raise FileNotFoundError(
                f"No <split>-NNNNN-of-NNNNN.tfrecord shards in {source}")
        files = [(split, f) for split in splits
                 for f in pipeline.shard_files(source, split)]
        schema = (attributes.get_schema(schema) if schema
                  else pipeline.load_schema(source))
        total = sum(1 for _, f in files for _ in tf.data.TFRecordDataset(f))

        def records():
            for split, f in files:
                for raw in tf.data.TFRecordDataset(f):
                    raw = raw.numpy()
                    yield split, raw, tf.train.Example.FromString(raw)

        return records(), schema, total

    schema = attributes.get_schema(schema or os.path.join(
        os.path.dirname(os.path.abspath(source)), convert.SCHEMA))
    entries, _ = manifest.read_manifest(source, schema)

    def records():
        for e in entries:
            e, data, fmt, h, w, _ = convert.load_image(e, manifest_path=source)
            ex = convert.make_example(e, data, fmt, h, w, schema)
            yield e.split, ex.SerializeToString(), ex

    return records(), schema, len(entries)


def _decode(ex):
    from PIL import Image

    data = _feature_value(ex, features.ENCODED)[0]
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


def _crop_example(ex, image, box, how, score):
    """Rewrites ``ex`` in place to hold ``image[box]``, bbox = whole crop."""
    from PIL import Image

    top, left, bottom, right = box
    h, w = image.shape[:2]
    crop = image[top:bottom, left:right]
    fmt = _feature_value(ex, features.FORMAT, [b"jpeg"])[0].decode().lower()
    fmt = "png" if fmt == "png" else "jpeg"  # PNG stays lossless.
    buf = io.BytesIO()
    Image.fromarray(crop).save(
        buf, format=fmt.upper(), **({"quality": 95} if fmt == "jpeg" else {}))
    ch, cw = crop.shape[:2]
    feat = ex.features.feature
    for key, value in (
            (features.ENCODED, _bytes([buf.getvalue()])),
            (features.FORMAT, _bytes([fmt.encode()])),
            (features.HEIGHT, _ints([ch])), (features.WIDTH, _ints([cw])),
            (features.BBOX_XMIN, _floats([0.0])),
            (features.BBOX_YMIN, _floats([0.0])),
            (features.BBOX_XMAX, _floats([1.0])),
            (features.BBOX_YMAX, _floats([1.0])),
            (features.CLASS_LABEL, _ints([GARMENT_CLASS])),
            (features.CLASS_TEXT, _bytes([CLASS_NAMES[1].encode()])),
            (features.IS_CROWD, _ints([0])),
            (features.AREA, _floats([float(ch * cw)])),
            # Where the crop came from, normalised in the original image.
            (CROP_BBOX, _floats([left / w, top / h, right / w, bottom / h])),
            (CROP_SOURCE, _bytes([how.encode()])),
            (CROP_SCORE, _floats([score]))):
        feat[key].CopyFrom(value)
    return ex


def _gt_box(ex, height, width):
    """The record's first box as ``(ymin, xmin, ymax, xmax)`` pixels or None."""
    v = [_feature_value(ex, k) for k in (
        features.BBOX_YMIN, features.BBOX_XMIN, features.BBOX_YMAX,
        features.BBOX_XMAX)]
    if any(x is None for x in v):
        return None
    box = (v[0][0] * height, v[1][0] * width, v[2][0] * height,
           v[3][0] * width)
    return box if box[0] < box[2] and box[1] < box[3] else None


def load_detector(path):
    """Loads an exported detector; returns its ``image_tensor`` function."""
    import tensorflow as tf

    sub = os.path.join(path, "saved_model")
    loaded = tf.saved_model.load(sub if os.path.isdir(sub) else path)
    fn = loaded.signatures["image_tensor"]
    fn._loaded = loaded  # Keeps the variables alive as long as the function.
    return fn


def _write_crop_shards(out_dir, by_split, schema, stats, records_per_shard):
    """Publishes the shards, ``schema.json`` and ``summary.json`` (last)."""
    import tensorflow as tf

    from mtct_tf.data import convert

    os.makedirs(out_dir, exist_ok=True)
    for path in [os.path.join(out_dir, convert.SUMMARY)] + glob.glob(
            os.path.join(glob.escape(out_dir), "*-of-*.tfrecord")):
        if convert.SHARD_RE.match(os.path.basename(path)) or path.endswith(
                convert.SUMMARY):
            if os.path.exists(path):
                os.remove(path)
    splits, written = {}, []
    for split, records in sorted(by_split.items()):
        count = max(1, math.ceil(len(records) / records_per_shard))
        per = math.ceil(len(records) / count)
        s = splits[split] = {
            "records": len(records), "shards": [],
            "domains": {d: 0 for d in features.DOMAINS}, "items": set(),
            "with_bbox": len(records)}
        for index in range(count):
            name = convert.shard_name(split, index, count)
            tmp = os.path.join(out_dir, f".{name}.tmp")
            with tf.io.TFRecordWriter(tmp) as w:
                for domain, item, raw in records[index * per:(index + 1) * per]:
                    w.write(raw)
                    s["domains"][domain] = s["domains"].get(domain, 0) + 1
                    s["items"].add(item)
            written.append((tmp, os.path.join(out_dir, name)))
            s["shards"].append(name)
        s["items"] = len(s["items"])
    for tmp, final in written:
        os.replace(tmp, final)
    schema.save(os.path.join(out_dir, convert.SCHEMA))
    summary = {"schema": schema.name, "attributes": list(schema.names),
               "records": sum(s["records"] for s in splits.values()),
               "splits": splits, "crop": stats.to_dict()}
    tmp = os.path.join(out_dir, convert.SUMMARY + ".tmp")
    with open(tmp, "w") as f:
        json.dump(summary, f, indent=1)
    os.replace(tmp, os.path.join(out_dir, convert.SUMMARY))
    return summary


def crop_with_detector(detector_savedmodel, source, out_dir, *, min_score=0.5,
                       margin=0.05, class_id=GARMENT_CLASS, batch_size=8,
                       domains=("street",), records_per_shard=1000,
                       schema=None, progress=True):
    """Crops the garment out of street images with an exported detector.

    Records whose ``image/domain`` is in ``domains`` are decoded, grouped in
    batches of equal-sized images and run through the SavedModel's
    ``image_tensor`` signature; the highest-scoring box of ``class_id`` with
    score >= ``min_score`` is mapped back to the original image
    (``image_info``), grown by ``margin`` and cropped. With no such box the
    record's ground-truth box is cropped instead, else the whole image is
    kept; both fallbacks are counted. Other records (shop photos) pass
    through unchanged.

    Output records keep every key of the input (attributes, item id, domain,
    split, source id, ...); the image, its size and the box (now the whole
    crop, ``[0, 0, 1, 1]``) are replaced, and ``image/crop/bbox`` (the crop in
    the original image, normalised xmin, ymin, xmax, ymax),
    ``image/crop/source`` (``detector`` / ``ground_truth`` / ``whole_image``)
    and ``image/crop/score`` are added. They are written like the converter's
    shards (``<split>-NNNNN-of-NNNNN.tfrecord``, ``schema.json``,
    ``summary.json`` with the crop statistics under ``crop``), so
    ``mtct_tf.data.pipeline`` reads them like any shard set.

    Args:
        detector_savedmodel: an ``export`` directory or its ``saved_model``,
            or a function with the same call (``fn(inputs=uint8 [B, H, W,
            3])`` -> dict of the detector outputs as tensors).
        source: an attribute shards directory (converter output) or a JSONL
            manifest (``schema.json`` beside it).
        out_dir: the output shards directory (its old shards are replaced).
        min_score: lowest detection score accepted.
        margin: fraction of the box height / width added on each side.
        class_id: the detection class to keep (``None`` = any).
        batch_size: images per detector call.
        domains: the domains that are cropped.
        records_per_shard: output shard size.
        schema: schema name or path (default: the source's ``schema.json``).
        progress: show a tqdm bar with images/s and fallbacks.

    Returns:
        A ``CropStats``.
    """
    import tensorflow as tf

    from mtct_tf import progress as progress_lib

    if not 0.0 <= margin < 1.0 or batch_size < 1:
        raise ValueError(
            "Need 0 <= margin < 1 and batch_size >= 1. Received: "
            f"margin={margin}, batch_size={batch_size}")
    detect = (detector_savedmodel if callable(detector_savedmodel)
              else load_detector(detector_savedmodel))
    records, schema, total = _read_source(source, schema)
    stats, by_split, ious, pending = CropStats(), {}, [], []
    bar = progress_lib.bar(total=total, disable=not progress, unit="img",
                           desc="crop", mininterval=1.0)

    def keep(split, ex, raw=None):
        # Records that pass through keep their bytes (re-serialising a proto
        # may reorder its map).
        by_split.setdefault(split, []).append((
            _feature_value(ex, features.DOMAIN, [b""])[0].decode(),
            _feature_value(ex, features.ITEM_ID, [b""])[0],
            ex.SerializeToString() if raw is None else raw))

    def flush():
        if not pending:
            return
        batch = tf.constant(np.stack([image for _, _, image in pending]))
        out = {k: v.numpy() for k, v in detect(inputs=batch).items()}
        boxes = rescale_boxes(out["detection_boxes"], out["image_info"])
        for i, (split, ex, image) in enumerate(pending):
            h, w = image.shape[:2]
            k = choose_box(boxes[i], out["detection_scores"][i],
                           out["detection_classes"][i],
                           out["num_detections"][i], min_score=min_score,
                           class_id=class_id)
            gt = _gt_box(ex, h, w)
            if k is not None:
                box, how = boxes[i, k], "detector"
                score = float(out["detection_scores"][i, k])
                stats.detector += 1
                if gt is not None:
                    ious.append(box_iou(box, gt))
            elif gt is not None:
                box, how, score = gt, "ground_truth", 0.0
                stats.ground_truth += 1
            else:
                box, how, score = (0, 0, h, w), "whole_image", 0.0
                stats.whole_image += 1
            grow = 0.0 if how == "whole_image" else margin
            keep(split, _crop_example(ex, image, expand_box(box, grow, h, w),
                                      how, score))
        stats.seconds = time.time() - start
        bar.update(len(pending))
        # Shown at the bar's next redraw: redrawing now, once per batch,
        # would write a line per batch into a log.
        bar.set_postfix(img_s=f"{stats.images_per_second:.1f}",
                        fallbacks=stats.ground_truth + stats.whole_image,
                        refresh=False)
        pending.clear()

    start = time.time()
    for split, raw, ex in records:
        domain = _feature_value(ex, features.DOMAIN, [b""])[0].decode()
        if domain not in domains:
            keep(split, ex, raw)
            stats.passed_through += 1
            bar.update(1)
            continue
        image = _decode(ex)
        if pending and (image.shape != pending[0][2].shape
                        or len(pending) >= batch_size):
            flush()
        pending.append((split, ex, image))
    flush()
    stats.seconds = time.time() - start
    bar.close()
    stats.mean_iou = float(np.mean(ious)) if ious else None
    stats.per_split = {k: len(v) for k, v in sorted(by_split.items())}
    _write_crop_shards(out_dir, by_split, schema, stats, records_per_shard)
    return stats
