"""Detection records: manifest boxes as tf.Examples in Model Garden's format.

``write_detection_records`` turns manifest entries with a box into sharded
tf.Examples that Model Garden's detection input pipeline and COCO evaluator
read, written through ``mtct_tf.data.shards``' writer.
"""

import glob
import math
import os

import numpy as np

from mtct_tf import fileio
from mtct_tf.data import features, images, shards
from mtct_tf.data.features import (GARMENT_CLASS, bytes_feature,
                                   float_feature, int64_feature)
from mtct_tf.detector.config import CLASS_NAMES, split_pattern

# Model Garden's COCO evaluator casts image/source_id to an integer, so the
# detection records carry a numeric source id and keep the manifest id here.
DET_IMAGE_ID = "image/filename"
RECORDS_INFO = "detection_records.json"


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
        features.ENCODED: bytes_feature([encoded]),
        features.FORMAT: bytes_feature([fmt.encode()]),
        features.SOURCE_ID: bytes_feature([str(int(source_id)).encode()]),
        DET_IMAGE_ID: bytes_feature([image_id.encode()]),
        features.HEIGHT: int64_feature([height]),
        features.WIDTH: int64_feature([width]),
        features.BBOX_XMIN: float_feature(boxes[:, 0] / width),
        features.BBOX_YMIN: float_feature(boxes[:, 1] / height),
        features.BBOX_XMAX: float_feature(boxes[:, 2] / width),
        features.BBOX_YMAX: float_feature(boxes[:, 3] / height),
        features.CLASS_LABEL: int64_feature(classes),
        features.CLASS_TEXT: bytes_feature(
            [CLASS_NAMES[c].encode() for c in classes]),
        features.IS_CROWD: int64_feature([0] * len(boxes)),
        features.AREA: float_feature(
            (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])),
    }
    return tf.train.Example(features=tf.train.Features(feature=f))


def write_shards(out_dir, split, serialized, num_shards):
    """Replaces ``split``'s shards in ``out_dir`` by ``serialized`` records.

    Shards of ``split`` left by an earlier run are removed first; the new
    ones are written by ``shards.write_shards``.

    Returns:
        The list of shard paths.
    """
    for old in glob.glob(split_pattern(glob.escape(out_dir), split)):
        os.remove(old)
    written = shards.write_shards(out_dir, split, serialized, num_shards)
    return [final for _, final in written]


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
            e, data, fmt, height, width, _ = images.load_image(
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
    fileio.write_json(os.path.join(out_dir, RECORDS_INFO), info)
    return info

