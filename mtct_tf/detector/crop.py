"""Cropping street photos with an exported detector.

``load_detector`` opens the SavedModel that ``train.export`` writes;
``crop_with_detector`` runs it over the street records of a shard set or
manifest and writes attribute shards of the crops (the ground-truth box or
the whole image when nothing is detected), so the attribute network trains on
what it will see behind the detector.
"""

import dataclasses
import io
import math
import os
import time

import numpy as np

from mtct_tf import attributes, fileio
from mtct_tf.data import example, features, images, manifest, shards
from mtct_tf.data.features import (GARMENT_CLASS, bytes_feature,
                                   float_feature, int64_feature)
from mtct_tf.detector.boxes import (box_iou, choose_box, expand_box,
                                    rescale_boxes)
from mtct_tf.detector.config import CLASS_NAMES

# Provenance of a crop record (added by ``crop_with_detector``).
CROP_BBOX = "image/crop/bbox"
CROP_SOURCE = "image/crop/source"
CROP_SCORE = "image/crop/score"
# Detector outputs (Model Garden's DetectionModule names).
DETECTOR_SIGNATURES = ("image_tensor", "serving_default")
DETECTOR_OUTPUTS = ("detection_boxes", "detection_scores",
                    "detection_classes", "num_detections", "image_info")


def load_detector(detector):
    """Loads a detector SavedModel (or its export dir with ``saved_model/``).

    Returns:
        ``(loaded object, signature function, input name, input dtype)``.

    Raises:
        FileNotFoundError: no SavedModel at the path.
        ValueError: no ``image_tensor`` / ``serving_default`` signature with
            one image input and the Model Garden outputs.
    """
    import tensorflow as tf

    path = os.fspath(detector)
    sub = os.path.join(path, "saved_model")
    if os.path.isfile(os.path.join(sub, "saved_model.pb")):
        path = sub
    if not os.path.isfile(os.path.join(path, "saved_model.pb")):
        raise FileNotFoundError(
            f"{detector}: no saved_model.pb (expected the export directory "
            "of `python -m mtct_tf.detect export` or its saved_model/)"
        )
    loaded = tf.saved_model.load(path)
    for key in DETECTOR_SIGNATURES:
        if key in loaded.signatures:
            fn = loaded.signatures[key]
            break
    else:
        raise ValueError(
            f"{detector}: the detector needs one of the signatures "
            f"{DETECTOR_SIGNATURES}. Received: {sorted(loaded.signatures)}"
        )
    inputs = fn.structured_input_signature[1]
    missing = [k for k in DETECTOR_OUTPUTS if k not in fn.structured_outputs]
    if len(inputs) != 1 or missing:
        raise ValueError(
            f"{detector}: expected one image input and the outputs "
            f"{DETECTOR_OUTPUTS}. Received: inputs={sorted(inputs)}, "
            f"outputs={sorted(fn.structured_outputs)}"
        )
    (name, spec), = inputs.items()
    return loaded, fn, name, spec.dtype


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

    if os.path.isdir(source):
        splits = shards.splits_present(source)
        if not splits:
            raise FileNotFoundError(
                f"No <split>-NNNNN-of-NNNNN.tfrecord shards in {source}")
        files = [(split, f) for split in splits
                 for f in shards.shard_files(source, split)]
        schema = (attributes.get_schema(schema) if schema
                  else shards.load_schema(source))
        total = sum(1 for _, f in files for _ in tf.data.TFRecordDataset(f))

        def records():
            for split, f in files:
                for raw in tf.data.TFRecordDataset(f):
                    raw = raw.numpy()
                    yield split, raw, tf.train.Example.FromString(raw)

        return records(), schema, total

    schema = attributes.get_schema(schema or os.path.join(
        os.path.dirname(os.path.abspath(source)), features.SCHEMA_FILE))
    entries, _ = manifest.read_manifest(source, schema)

    def records():
        for e in entries:
            e, data, fmt, h, w, _ = images.load_image(e, manifest_path=source)
            ex = example.make_example(e, data, fmt, h, w, schema)
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
            (features.ENCODED, bytes_feature([buf.getvalue()])),
            (features.FORMAT, bytes_feature([fmt.encode()])),
            (features.HEIGHT, int64_feature([ch])),
            (features.WIDTH, int64_feature([cw])),
            (features.BBOX_XMIN, float_feature([0.0])),
            (features.BBOX_YMIN, float_feature([0.0])),
            (features.BBOX_XMAX, float_feature([1.0])),
            (features.BBOX_YMAX, float_feature([1.0])),
            (features.CLASS_LABEL, int64_feature([GARMENT_CLASS])),
            (features.CLASS_TEXT, bytes_feature([CLASS_NAMES[1].encode()])),
            (features.IS_CROWD, int64_feature([0])),
            (features.AREA, float_feature([float(ch * cw)])),
            # Where the crop came from, normalised in the original image.
            (CROP_BBOX,
             float_feature([left / w, top / h, right / w, bottom / h])),
            (CROP_SOURCE, bytes_feature([how.encode()])),
            (CROP_SCORE, float_feature([score]))):
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


class _Detector:
    """An exported detector called as ``detect(inputs=uint8 [B, H, W, 3])``.

    Holds the loaded SavedModel (``load_detector``), whose variables its
    signature function needs alive.
    """

    def __init__(self, path):
        (self._loaded, self._fn, self._input,
         self._dtype) = load_detector(path)

    def __call__(self, inputs):
        import tensorflow as tf

        return self._fn(**{self._input: tf.cast(inputs, self._dtype)})


def _write_crop_shards(out_dir, by_split, schema, stats, records_per_shard):
    """Publishes the shards, ``schema.json`` and ``summary.json`` (last)."""
    os.makedirs(out_dir, exist_ok=True)
    shards.clear(out_dir)
    splits, written = {}, []
    for split, records in sorted(by_split.items()):
        count = max(1, math.ceil(len(records) / records_per_shard))
        s = splits[split] = {
            "records": len(records), "shards": [],
            "domains": {d: 0 for d in features.DOMAINS}, "items": set(),
            "with_bbox": len(records)}
        for domain, item, _ in records:
            s["domains"][domain] = s["domains"].get(domain, 0) + 1
            s["items"].add(item)
        s["items"] = len(s["items"])
        pairs = shards.write_shards(out_dir, split, [r for _, _, r in records],
                                    count, publish_now=False)
        s["shards"] = [os.path.basename(final) for _, final in pairs]
        written += pairs
    shards.publish(written)
    schema.save(os.path.join(out_dir, features.SCHEMA_FILE))
    summary = {"schema": schema.name, "attributes": list(schema.names),
               "records": sum(s["records"] for s in splits.values()),
               "splits": splits, "crop": stats.to_dict()}
    fileio.write_json(os.path.join(out_dir, shards.SUMMARY_FILE), summary)
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
              else _Detector(detector_savedmodel))
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
