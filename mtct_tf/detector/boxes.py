"""Box maths for the detector's outputs, in NumPy and in the serving graph.

Model Garden's detector reports ``(ymin, xmin, ymax, xmax)`` boxes in its
resized input; these functions map them back to the photo
(``rescale_boxes``), pick the garment (``choose_box``; ``choose_box_in_graph``
is the same choice as TensorFlow ops for the exported serving graph), grow a
box by a margin (``expand_box``) and compare boxes (``box_iou``).
"""

import math

import numpy as np

from mtct_tf.data.features import GARMENT_CLASS


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


def choose_box_in_graph(detections, height, width, *, min_score, class_id):
    """Picks one image's garment box from Model Garden detector outputs.

    The graph twin of ``choose_box`` + ``rescale_boxes``, in TensorFlow ops
    for the serving graph: the highest-scoring detection of ``class_id``
    (``None``: any) with score >= ``min_score`` and finite coordinates,
    mapped from the detector's resized input back to the photo as
    ``(box + offset) / scale`` with ``image_info = [[h, w], [scaled h, w],
    [y_scale, x_scale], [y_offset, x_offset]]``, clipped to the photo.
    Without one: the whole photo.

    Args:
        detections: the detector's output dict for a batch of one.
        height, width: the photo's size (scalar tensors).
        min_score, class_id: Python numbers (or ``None`` for ``class_id``).

    Returns:
        ``(box normalised [4], box in pixels [4], score, detected)``.
    """
    import tensorflow as tf

    boxes = tf.cast(detections["detection_boxes"][0], tf.float32)
    scores = tf.cast(detections["detection_scores"][0], tf.float32)
    classes = tf.cast(detections["detection_classes"][0], tf.float32)
    num = tf.cast(tf.reshape(detections["num_detections"], [-1])[0], tf.int32)
    info = tf.cast(detections["image_info"][0], tf.float32)
    h, w = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
    size = tf.stack([h, w, h, w])
    pixels = (boxes + tf.tile(info[3], [2])) / tf.tile(info[2], [2])
    pixels = tf.clip_by_value(pixels, 0.0, size)
    ok = tf.range(tf.shape(scores)[0]) < num
    ok &= scores >= min_score
    ok &= tf.reduce_all(tf.math.is_finite(boxes), axis=-1)
    if class_id is not None:
        ok &= tf.equal(tf.round(classes), float(class_id))
    # A sentinel row keeps argmax and gather valid with zero detections.
    masked = tf.concat([tf.where(ok, scores, -float("inf")),
                        [-float("inf")]], 0)
    pixels = tf.concat([pixels, [tf.zeros([4])]], 0)
    k = tf.argmax(masked, output_type=tf.int32)
    detected = tf.reduce_any(ok)
    box_pixels = tf.where(detected, pixels[k], size * [0.0, 0.0, 1.0, 1.0])
    score = tf.where(detected, masked[k], 0.0)
    return box_pixels / size, box_pixels, score, detected
