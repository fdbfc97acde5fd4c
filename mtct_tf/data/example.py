"""The record format: the tf.Example parsing spec, its encoder and decoder.

One module for the three that change together when the format does
(docs/DATA_FORMAT.md), as Model Garden keeps its encoder beside its
``tf_example_decoder``: ``feature_spec`` (what a record holds),
``make_example`` (a manifest entry and its checked image -> a record: the
converter and the detector's cropper) and ``parse_example`` (a record ->
tensors: the tf.data pipeline and the triplet pipeline). The keys themselves
are named once in ``features.py``.

TensorFlow is imported inside the functions: the converter's worker
processes import this module (through ``convert``) and must start without
it.
"""

from mtct_tf import attributes
from mtct_tf.data import features

# A record without a box stands for the whole image (ymin, xmin, ymax, xmax).
FULL_BOX = (0.0, 0.0, 1.0, 1.0)


def feature_spec(schema):
    """The parsing spec of the project's tf.Examples.

    Usable as is with ``tf.io.parse_single_example`` / ``parse_example``;
    docs/DATA_FORMAT.md spells out the same dict. Box and object features
    are ``VarLenFeature`` (one entry per box, none when the image has no
    box), so they parse to ``tf.SparseTensor``.

    Args:
        schema: the ``AttributeSchema`` (or anything ``get_schema`` accepts).

    Returns:
        Dict feature key -> ``tf.io.FixedLenFeature`` / ``VarLenFeature``.
    """
    import tensorflow as tf

    schema = attributes.get_schema(schema)
    string = tf.io.FixedLenFeature([], tf.string)
    spec = {
        features.ENCODED: string,
        features.FORMAT: string,
        features.HEIGHT: tf.io.FixedLenFeature([], tf.int64),
        features.WIDTH: tf.io.FixedLenFeature([], tf.int64),
        features.SOURCE_ID: string,
        features.DOMAIN: string,
        features.ITEM_ID: string,
        features.SPLIT: string,
        features.BBOX_XMIN: tf.io.VarLenFeature(tf.float32),
        features.BBOX_YMIN: tf.io.VarLenFeature(tf.float32),
        features.BBOX_XMAX: tf.io.VarLenFeature(tf.float32),
        features.BBOX_YMAX: tf.io.VarLenFeature(tf.float32),
        features.CLASS_LABEL: tf.io.VarLenFeature(tf.int64),
        features.CLASS_TEXT: tf.io.VarLenFeature(tf.string),
        features.IS_CROWD: tf.io.VarLenFeature(tf.int64),
        features.AREA: tf.io.VarLenFeature(tf.float32),
    }
    for attribute in schema:
        # A record written with a smaller schema reads as "label missing".
        if attribute.kind == attributes.MULTILABEL:
            # One 1 / 0 / -1 entry per value of the attribute group.
            spec[features.attribute_key(attribute.name)] = (
                tf.io.FixedLenFeature(
                    [attribute.num_values], tf.int64,
                    default_value=list(attribute.missing_code)))
            continue
        spec[features.attribute_key(attribute.name)] = tf.io.FixedLenFeature(
            [], tf.int64, default_value=attributes.MISSING
        )
    return spec


def make_example(entry, encoded, fmt, height, width, schema):
    """Builds the tf.Example of one manifest entry.

    Args:
        entry: a ``manifest.Entry``; its ``bbox`` (pixels) must be in the
            coordinates of the encoded image (rescaled if it was resized).
        encoded: the encoded image bytes.
        fmt: ``"jpeg"`` or ``"png"``.
        height, width: size of the encoded image in pixels.
        schema: the ``AttributeSchema``; its attributes are all written,
            ``-1`` where the entry's label is missing (multilabel attributes
            as int64 vectors of 1 / 0 / -1, one entry per value).

    Returns:
        A ``tf.train.Example``.
    """
    import tensorflow as tf

    schema = attributes.get_schema(schema)

    b, i, f = (features.bytes_feature, features.int64_feature,
               features.float_feature)

    boxes = [] if entry.bbox is None else [entry.bbox]
    xmin, ymin, xmax, ymax = ([], [], [], [])
    for x0, y0, x1, y1 in boxes:
        xmin.append(min(max(x0 / width, 0.0), 1.0))
        ymin.append(min(max(y0 / height, 0.0), 1.0))
        xmax.append(min(max(x1 / width, 0.0), 1.0))
        ymax.append(min(max(y1 / height, 0.0), 1.0))
    feature = {
        features.ENCODED: b([encoded]),
        features.FORMAT: b([fmt.encode()]),
        features.HEIGHT: i([height]),
        features.WIDTH: i([width]),
        features.SOURCE_ID: b([entry.id.encode()]),
        features.DOMAIN: b([entry.domain.encode()]),
        features.ITEM_ID: b([entry.item_id.encode()]),
        features.SPLIT: b([entry.split.encode()]),
        features.BBOX_XMIN: f(xmin),
        features.BBOX_YMIN: f(ymin),
        features.BBOX_XMAX: f(xmax),
        features.BBOX_YMAX: f(ymax),
        features.CLASS_LABEL: i([features.GARMENT_CLASS] * len(boxes)),
        features.CLASS_TEXT: b([features.GARMENT_TEXT.encode()]
                               * len(boxes)),
        features.IS_CROWD: i([0] * len(boxes)),
        features.AREA: f([(x1 - x0) * (y1 - y0) for x0, y0, x1, y1 in boxes]),
    }
    for attribute in schema:
        code = entry.labels.get(attribute.name, attribute.missing_code)
        if attribute.kind == attributes.MULTILABEL:
            feature[features.attribute_key(attribute.name)] = i(list(code))
            continue
        feature[features.attribute_key(attribute.name)] = i([code])
    return tf.train.Example(features=tf.train.Features(feature=feature))


def parse_example(serialized, schema):
    """Parses one serialized tf.Example (no image decoding).

    Args:
        serialized: a scalar string tensor.
        schema: the ``AttributeSchema``.

    Returns:
        Dict with ``"encoded"``, ``"source_id"``, ``"domain"``, ``"item_id"``
        (scalar strings), ``"bbox"`` (float32 [4]: ymin, xmin, ymax, xmax,
        normalised; the first box, or [0, 0, 1, 1] when the record has none)
        and ``"labels"`` (dict attribute -> int32 scalar, -1 = missing; for
        a multilabel attribute int32 [N], 1 / 0 / -1 per value).
    """
    import tensorflow as tf

    schema = attributes.get_schema(schema)
    full = feature_spec(schema)
    keys = [features.ENCODED, features.SOURCE_ID, features.DOMAIN,
            features.ITEM_ID, features.BBOX_YMIN, features.BBOX_XMIN,
            features.BBOX_YMAX, features.BBOX_XMAX]
    keys += [features.attribute_key(n) for n in schema.names]
    parsed = tf.io.parse_single_example(serialized, {k: full[k] for k in keys})
    # Appending the default and taking element 0 picks the first box or the
    # whole image without a tf.cond.
    bbox = tf.stack([
        tf.concat([parsed[key].values, [default]], axis=0)[0]
        for key, default in zip(
            (features.BBOX_YMIN, features.BBOX_XMIN, features.BBOX_YMAX,
             features.BBOX_XMAX), FULL_BOX)
    ])
    return {
        "encoded": parsed[features.ENCODED],
        "source_id": parsed[features.SOURCE_ID],
        "domain": parsed[features.DOMAIN],
        "item_id": parsed[features.ITEM_ID],
        "bbox": bbox,
        "labels": {
            n: tf.cast(parsed[features.attribute_key(n)], tf.int32)
            for n in schema.names
        },
    }
