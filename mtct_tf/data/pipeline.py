"""The tf.data input pipeline that every training and evaluation stage uses.

Records are tf.Examples in the format of ``mtct_tf.data.example``
(docs/DATA_FORMAT.md), found as complete shard sets by
``mtct_tf.data.shards``. The path of one record is::

    serialized --example.parse_example--> {encoded, bbox, labels, ids}
       --(domain / label_fraction filters: cheap, before decoding)-->
       --preprocess: decode_image -> [jitter box] -> crop_and_resize
                     -> [flip, colour jitter]--> float32 [S, S, 3]

Images leave the pipeline as float32 in [0, 255], not normalised: the models
normalise inside themselves, so an exported model needs exactly
``decode_image`` + ``crop_and_resize`` in front of it and nothing else; the
serving graph imports both, so training and serving cannot drift apart.
"""

import os

import tensorflow as tf

from mtct_tf import attributes
from mtct_tf.data import exif, features
from mtct_tf.data.example import FULL_BOX, parse_example
from mtct_tf.data.shards import load_schema, shard_files
# Not used here: imported for the callers that know them as
# ``pipeline.load_summary`` and ``pipeline.num_records``.
from mtct_tf.data.shards import load_summary, num_records  # noqa: F401

AUTOTUNE = tf.data.AUTOTUNE

# Training augmentation (``preprocess``), the same for every method. The crop
# box is jittered around the garment box, so the network sees the small
# misalignments that a detector makes on street photos: both sides are
# multiplied by one factor U[1, 1 + s] and the centre moved by U[-t, t]
# times the box size. One factor keeps the box's aspect ratio, and with
# t <= the crop margin (0.1) the garment stays whole inside the crop: length
# and shape are read from the garment's proportions and hem, which an
# anisotropic or cutting crop would change without changing the label.
BOX_SCALE_JITTER = 0.2
BOX_SHIFT_JITTER = 0.1
# Photometric jitter on the [0, 255] scale: additive brightness in
# U[-d, d] * 255, contrast factor U[1 - c, 1 + c] around the mean colour,
# saturation factor U[1 - a, 1 + a] around each pixel's grey level and a
# per-channel gain U[1 - g, 1 + g] (a colour cast). Mild enough to keep
# every colour value of the synthetic palette apart (the street renderer's
# cast is +-20%).
BRIGHTNESS_JITTER = 0.1
CONTRAST_JITTER = 0.15
SATURATION_JITTER = 0.2
CHANNEL_GAIN_JITTER = 0.08
# label_fraction resolution: items are kept by a 64-bit fingerprint of their
# id reduced to this many buckets.
_FRACTION_BUCKETS = 1_000_000
# Framing augmentations of ``frame`` (training only).
BOX, CROP = "box", "crop"
AUGMENTATIONS = (BOX, CROP)
# Random resized crops (``augment="crop"``): at least this fraction of the
# region's area, width / height in this range. Inception's crop takes
# 0.08 of the area and more, for ImageNet objects that may fill a corner;
# a garment photo is mostly garment, and a crop of 8% would show a button
# or a seam and no category.
CROP_MIN_AREA = 0.25
CROP_ASPECT_RANGE = (3 / 4, 4 / 3)
_READ_BUFFER = 2**20  # Bytes per open shard: a few dozen records.


# --------------------------------------------------------------------------
# One image.


def _be(data, pos, n):
    """Unsigned big-endian integer of bytes [pos, pos + n) (int64)."""
    b = tf.cast(tf.io.decode_raw(tf.strings.substr(data, pos, n), tf.uint8),
                tf.int64)
    return tf.reduce_sum(b * (256 ** tf.range(n - 1, -1, -1, tf.int64)))


def _le(data, pos, n):
    """Unsigned little-endian integer of bytes [pos, pos + n) (int64)."""
    b = tf.cast(tf.io.decode_raw(tf.strings.substr(data, pos, n), tf.uint8),
                tf.int64)
    return tf.reduce_sum(b * (256 ** tf.range(n, dtype=tf.int64)))


def declared_pixels(encoded):
    """Width x height that an image's header declares, without decoding.

    Reads the header of JPEG (``extract_jpeg_shape``), PNG (IHDR), GIF
    (logical screen) and BMP (info header) bytes: the formats that
    ``tf.io.decode_image`` decodes. Other or too short bytes give 0 (the
    decoder then rejects them).

    Returns:
        An int64 scalar tensor.
    """
    encoded = tf.convert_to_tensor(encoded, tf.string)
    size = tf.strings.length(encoded)
    head = tf.strings.substr(encoded, 0, 8)

    def jpeg():
        shape = tf.image.extract_jpeg_shape(encoded, output_type=tf.int64)
        return shape[0] * shape[1]

    def bmp():
        # A negative height means rows stored top-down.
        height = _le(encoded, 22, 4)
        height = tf.where(height >= 2**31, 2**32 - height, height)
        return _le(encoded, 18, 4) * height

    zero = lambda: tf.constant(0, tf.int64)  # noqa: E731
    return tf.case([
        (tf.strings.substr(head, 0, 3) == b"\xff\xd8\xff", jpeg),
        (tf.logical_and(head == b"\x89PNG\r\n\x1a\n", size >= 24),
         lambda: _be(encoded, 16, 4) * _be(encoded, 20, 4)),
        (tf.logical_and(tf.strings.substr(head, 0, 3) == b"GIF", size >= 10),
         lambda: _le(encoded, 6, 2) * _le(encoded, 8, 2)),
        (tf.logical_and(tf.strings.substr(head, 0, 2) == b"BM", size >= 26),
         bmp),
    ], default=zero, exclusive=False)


def decode_image(encoded, max_pixels=features.MAX_PIXELS):
    """Decodes JPEG / PNG (colour or greyscale) bytes to uint8 [H, W, 3].

    A JPEG's EXIF orientation is applied (``exif.orient``), so the pixels
    are upright as a viewer shows them.

    Raises ``InvalidArgumentError`` (when run) for bytes that are not an
    image, and, before decoding, for an image whose header declares more
    than ``max_pixels`` pixels: a small file can declare a canvas that
    would take gigabytes to decode (a decompression bomb), and the
    exported serving graph decodes what clients send.
    """
    check = tf.debugging.assert_less_equal(
        declared_pixels(encoded), tf.constant(max_pixels, tf.int64),
        message=f"image refused: its header declares more than {max_pixels} "
                "pixels (a decompression bomb?)")
    with tf.control_dependencies([check]):
        image = tf.io.decode_image(encoded, channels=3, dtype=tf.uint8,
                                   expand_animations=False)
    image.set_shape([None, None, 3])
    # Turned as a viewer shows it: a phone photo stored sideways with an
    # EXIF tag gets the answer of its upright twin (data/exif.py).
    return exif.orient(image, exif.jpeg_orientation(encoded))


def crop_and_resize(image, bbox, image_size, margin=0.0, square=True):
    """Crops a normalised box (enlarged by a margin) and resizes it.

    The box is enlarged by ``margin`` times its height / width on each side;
    with ``square`` its shorter side (in pixels) is then grown about its
    centre to make it square; it is clipped to the image (so a square that
    overflows the image is no longer square), rounded to whole pixels (at
    least one) and resized to ``image_size`` x ``image_size`` with bilinear
    interpolation, no antialiasing. A pure function of tensors: the detector
    crop path and the exported serving graph call it too.

    Args:
        image: [H, W, C] image tensor (any real dtype).
        bbox: float [4] ``ymin, xmin, ymax, xmax`` in [0, 1].
        image_size: output side ``S`` (Python int).
        margin: fraction of the box size added on each side.
        square: make the box square (in pixels) before resizing, keeping
            the garment's aspect ratio.

    Returns:
        float32 [S, S, C] on the input's value scale ([0, 255] for uint8).
    """
    image = tf.convert_to_tensor(image)
    bbox = tf.cast(tf.convert_to_tensor(bbox), tf.float32)
    shape = tf.shape(image)
    h, w = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
    ymin, xmin, ymax, xmax = tf.unstack(bbox)
    dy, dx = margin * (ymax - ymin), margin * (xmax - xmin)
    ymin, xmin, ymax, xmax = ymin - dy, xmin - dx, ymax + dy, xmax + dx
    if square:
        # Grow the shorter side to a square (in pixels) about the box's
        # centre, so resizing keeps the garment's aspect ratio: length and
        # fit are attributes, and a squashed box would disguise them.
        side = tf.maximum((ymax - ymin) * h, (xmax - xmin) * w)
        cy, cx = (ymin + ymax) / 2, (xmin + xmax) / 2
        ymin, ymax = cy - side / (2 * h), cy + side / (2 * h)
        xmin, xmax = cx - side / (2 * w), cx + side / (2 * w)
    ymin = tf.clip_by_value(ymin, 0.0, 1.0)
    xmin = tf.clip_by_value(xmin, 0.0, 1.0)
    ymax = tf.clip_by_value(ymax, 0.0, 1.0)
    xmax = tf.clip_by_value(xmax, 0.0, 1.0)
    # Rounding (not floor / ceil) keeps a box drawn on pixel edges exact
    # despite float error in its normalised coordinates.
    y0 = tf.clip_by_value(tf.cast(tf.round(ymin * h), tf.int32), 0,
                          shape[0] - 1)
    x0 = tf.clip_by_value(tf.cast(tf.round(xmin * w), tf.int32), 0,
                          shape[1] - 1)
    y1 = tf.clip_by_value(tf.cast(tf.round(ymax * h), tf.int32), y0 + 1,
                          shape[0])
    x1 = tf.clip_by_value(tf.cast(tf.round(xmax * w), tf.int32), x0 + 1,
                          shape[1])
    crop = image[y0:y1, x0:x1]
    out = tf.image.resize(crop, [image_size, image_size], method="bilinear",
                          antialias=False)
    return tf.cast(out, tf.float32)


def _seed_pair(seed):
    if seed is None:
        return tf.random.uniform([2], maxval=2**31 - 1, dtype=tf.int64)
    seed = tf.cast(tf.convert_to_tensor(seed), tf.int64)
    if seed.shape.rank == 0:
        seed = tf.stack([seed, tf.constant(0, tf.int64)])
    return seed


def _jitter_box(bbox, seed):
    """Scales a box about its centre by one factor and shifts it."""
    ymin, xmin, ymax, xmax = tf.unstack(tf.cast(bbox, tf.float32))
    u = tf.random.stateless_uniform([3], seed, minval=-1.0, maxval=1.0)
    scale = 1.0 + BOX_SCALE_JITTER * (u[0] + 1.0) / 2.0
    bh, bw = (ymax - ymin) * scale, (xmax - xmin) * scale
    cy = (ymin + ymax) / 2 + BOX_SHIFT_JITTER * (ymax - ymin) * u[1]
    cx = (xmin + xmax) / 2 + BOX_SHIFT_JITTER * (xmax - xmin) * u[2]
    return tf.stack([cy - bh / 2, cx - bw / 2, cy + bh / 2, cx + bw / 2])


def colour_jitter(image, seed):
    """Random brightness, contrast, saturation and per-channel gain.

    Args:
        image: float32 [H, W, 3] on the [0, 255] scale.
        seed: int [2] stateless seed; the result is a function of it.

    Returns:
        float32 [H, W, 3] clipped to [0, 255].
    """
    image = tf.convert_to_tensor(image, tf.float32)
    seeds = tf.random.split(tf.cast(seed, tf.int64), num=4)
    delta = tf.random.stateless_uniform(
        [], seeds[0], -BRIGHTNESS_JITTER, BRIGHTNESS_JITTER) * 255.0
    contrast = tf.random.stateless_uniform(
        [], seeds[1], 1.0 - CONTRAST_JITTER, 1.0 + CONTRAST_JITTER)
    saturation = tf.random.stateless_uniform(
        [], seeds[2], 1.0 - SATURATION_JITTER, 1.0 + SATURATION_JITTER)
    gain = tf.random.stateless_uniform(
        [3], seeds[3], 1.0 - CHANNEL_GAIN_JITTER, 1.0 + CHANNEL_GAIN_JITTER)
    grey = tf.reduce_sum(image * [0.299, 0.587, 0.114], -1, keepdims=True)
    out = (image - grey) * saturation + grey
    mean = tf.reduce_mean(out, axis=[0, 1], keepdims=True)
    out = ((out - mean) * contrast + mean) * gain + delta
    return tf.clip_by_value(out, 0.0, 255.0)


def _element_seed(record, seed):
    """An int64 [2] seed pair for one record of a training stream.

    Drawn from a stateful generator (seeded by ``seed``: the same sequence
    on every run) and mixed with a fingerprint of the record's id, so that
    workers reading different files, whose streams draw the same sequence,
    still get different seeds.
    """
    draw = tf.random.uniform([2], maxval=2**62, dtype=tf.int64, seed=seed)
    ident = tf.strings.to_hash_bucket_fast(record["source_id"], 2**62)
    return tf.bitwise.bitwise_xor(draw, tf.stack([ident, ident // 3]))


def preprocess(encoded, bbox, *, image_size, training, margin=0.1, seed=None,
               augment=BOX, min_area=CROP_MIN_AREA):
    """Decodes, crops and resizes one image; augments it when training.

    ``decode_image`` then ``frame``: see ``frame`` for the arguments.

    Returns:
        float32 [S, S, 3] in [0, 255].
    """
    return frame(decode_image(encoded), bbox, image_size=image_size,
                 training=training, margin=margin, seed=seed,
                 augment=augment, min_area=min_area)


def frame(image, bbox, *, image_size, training, margin=0.1, seed=None,
          augment=BOX, min_area=CROP_MIN_AREA):
    """Crops and resizes one decoded image; augments it when training.

    Args:
        image: uint8 (or float) [H, W, 3] image.
        bbox: float [4] ``ymin, xmin, ymax, xmax`` normalised ([0, 0, 1, 1]
            for the whole image).
        image_size: output side ``S``.
        training: Python bool; adds the framing augmentation ``augment``,
            a random horizontal flip and colour jitter (``colour_jitter``;
            constants at the top of this module).
        margin: context around the box (see ``crop_and_resize``).
        seed: ``None`` (random), an int, or an int [2] tensor: the
            augmentation is a deterministic function of it.
        augment: ``"box"``: the box is jittered in scale and position
            without ever cutting the garment (for attributes read from the
            whole garment, on boxed records); ``"crop"``: an Inception-style
            random resized crop of the box (plus margin) region, of
            ``min_area`` to all of its area and aspect ratio 3/4 to 4/3
            (for whole photos, where the box is the photo and parts of it
            are background).
        min_area: the smallest area fraction of a ``"crop"`` crop.

    Returns:
        float32 [S, S, 3] in [0, 255].
    """
    if augment not in AUGMENTATIONS:
        raise ValueError(f"augment must be one of {AUGMENTATIONS}. "
                         f"Received: augment={augment!r}")
    if not training:
        return crop_and_resize(image, bbox, image_size, margin)
    seeds = tf.random.split(_seed_pair(seed), num=3)
    if augment == BOX:
        out = crop_and_resize(image, _jitter_box(bbox, seeds[0]),
                              image_size, margin)
    else:
        out = random_resized_crop(image, bbox, image_size, margin, seeds[0],
                                  min_area)
    flip = tf.random.stateless_uniform([], seeds[1]) < 0.5
    out = tf.cond(flip, lambda: tf.reverse(out, axis=[1]), lambda: out)
    return colour_jitter(out, seeds[2])


def random_resized_crop(image, bbox, image_size, margin, seed,
                        min_area=CROP_MIN_AREA):
    """An Inception-style random crop of a box region, resized to S x S.

    The region is the box enlarged by ``margin`` (clipped to the image);
    the crop covers ``min_area`` to all of the region's area with a width /
    height ratio in [3/4, 4/3] (``tf.image.stateless_sample_distorted_
    bounding_box``; the whole region when no such crop fits in 10 tries).

    Returns:
        float32 [S, S, C].
    """
    image = tf.convert_to_tensor(image)
    shape = tf.shape(image)
    h, w = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
    ymin, xmin, ymax, xmax = tf.unstack(tf.cast(bbox, tf.float32))
    dy, dx = margin * (ymax - ymin), margin * (xmax - xmin)
    y0 = tf.clip_by_value(tf.cast(tf.round((ymin - dy) * h), tf.int32), 0,
                          shape[0] - 1)
    x0 = tf.clip_by_value(tf.cast(tf.round((xmin - dx) * w), tf.int32), 0,
                          shape[1] - 1)
    y1 = tf.clip_by_value(tf.cast(tf.round((ymax + dy) * h), tf.int32),
                          y0 + 1, shape[0])
    x1 = tf.clip_by_value(tf.cast(tf.round((xmax + dx) * w), tf.int32),
                          x0 + 1, shape[1])
    region = image[y0:y1, x0:x1]
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(region), tf.constant([[FULL_BOX]], tf.float32),
        seed=tf.cast(seed, tf.int64), min_object_covered=0.0,
        aspect_ratio_range=CROP_ASPECT_RANGE, area_range=(min_area, 1.0),
        max_attempts=10, use_image_if_no_bounding_boxes=True)
    crop = tf.slice(region, begin, size)
    out = tf.image.resize(crop, [image_size, image_size], method="bilinear",
                          antialias=False)
    return tf.cast(out, tf.float32)


def shrink(image, max_short_side):
    """Scales an image down so its shorter side is ``max_short_side``.

    Never enlarges; antialiased (area-like) downscaling, rounded back to
    uint8. Normalised boxes are unchanged by it.
    """
    shape = tf.shape(image)
    h, w = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
    scale = tf.minimum(1.0, max_short_side / tf.minimum(h, w))
    size = tf.cast(tf.round(tf.stack([h, w]) * scale), tf.int32)
    small = tf.image.resize(image, tf.maximum(size, 1), antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(small), 0, 255), tf.uint8)


def item_kept(item_id, label_fraction):
    """Whether an item is in the ``label_fraction`` subset (bool tensor).

    Items are chosen by a fingerprint of their id, so the choice is the same
    on every run and machine, and the subsets are nested: every item kept at
    fraction 0.1 is also kept at 0.2.
    """
    bucket = tf.strings.to_hash_bucket_fast(item_id, _FRACTION_BUCKETS)
    return bucket < int(round(label_fraction * _FRACTION_BUCKETS))


# --------------------------------------------------------------------------
# Datasets.


def _resolve_files(shards, split):
    if isinstance(shards, (str, os.PathLike)) and os.path.isdir(shards):
        if split is None:
            raise ValueError(
                f"shards={shards!r} is a directory: pass split='train', "
                "'val' or 'test'."
            )
        return shard_files(os.fspath(shards), split)
    if split is not None:
        raise ValueError(
            "split is only used with a shards directory; got a list of "
            f"files. Received: split={split!r}"
        )
    files = [os.fspath(shards)] if isinstance(shards, (str, os.PathLike)) \
        else [os.fspath(f) for f in shards]
    if not files:
        raise ValueError("shards is an empty list of files.")
    missing = [f for f in files if not os.path.isfile(f)]
    if missing:
        raise FileNotFoundError(f"Shard file(s) not found: {missing}")
    return files


def make_dataset(shards, schema=None, *, image_size, batch_size, training,
                 split=None, domain=None, crop_to_bbox=True, margin=0.1,
                 shuffle_buffer=2048, seed=None, repeat=None,
                 with_meta=False, drop_remainder=None, label_fraction=1.0,
                 cache=False, augment=BOX, min_area=CROP_MIN_AREA,
                 decode_cache=0):
    """The tf.data pipeline of a set of shards.

    Args:
        shards: a shards directory (then give ``split``), one TFRecord path,
            or a list of them.
        schema: the ``AttributeSchema``; ``None`` loads the directory's
            ``schema.json``.
        image_size: output image side ``S``.
        batch_size: examples per batch.
        training: shuffle (files and records), augment, repeat and drop the
            last partial batch by default.
        split: with a directory: ``"train"``, ``"val"`` or ``"test"``.
        domain: ``None`` (both), ``"shop"`` or ``"street"``; filtered before
            decoding.
        crop_to_bbox: crop the record's box (plus ``margin``); ``False``
            uses the whole image with no margin.
        margin: context around the box (fraction of its size, each side).
        shuffle_buffer: records in the shuffle buffer (training).
        seed: ``None``, or an int that makes shuffling and augmentation
            reproducible (the pipeline then runs deterministically, even
            when training).
        repeat: ``None`` (= ``training``), ``True`` (forever), ``False`` or
            a number of epochs.
        with_meta: also yield ``{"item_id", "domain", "source_id"}`` string
            tensors [B] as a third element (for evaluation and triplet
            mining; not for ``Model.fit``, which would take it for sample
            weights).
        drop_remainder: ``None`` (= ``training``) or a bool.
        label_fraction: in (0, 1]: keep only the records of this fraction
            of items (chosen by ``item_kept``), for small-data experiments.
            The records of other items are dropped; the triplet pipeline
            (``triplets.make_triplet_dataset``) keeps them as unlabelled
            anchors instead.
        cache: ``False``, ``True`` (memory) or a file prefix: cache the
            parsed, filtered records (encoded bytes, before decoding and
            augmentation). Off by default: a split is never held in memory
            unless asked.
        augment, min_area: the training framing augmentation (``frame``).
        decode_cache: 0, or a side in pixels: decode every image once,
            shrink it so that its shorter side is at most this
            (``shrink``) and keep the uint8 pixels in memory; later epochs
            crop and augment them without decoding again. Decoding a phone
            photo costs more than a small network's step on it; keep the
            side at or above ``image_size`` over the square root of the
            smallest crop area, or crops lose resolution. The cache holds
            the first pass's file order: later epochs reshuffle the records
            (``shuffle_buffer``), not the files.

    Returns:
        A ``tf.data.Dataset`` of ``(images, labels)`` or ``(images, labels,
        meta)``: images float32 [B, S, S, 3] in [0, 255], labels a dict
        attribute -> int32 [B] (-1 = missing), or [B, N] of 1 / 0 / -1 for
        a multilabel attribute.
    """
    if isinstance(image_size, bool) or not isinstance(image_size, int) or \
            image_size < 1:
        raise ValueError(
            f"image_size must be a positive int. Received: "
            f"image_size={image_size!r}"
        )
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or \
            batch_size < 1:
        raise ValueError(
            f"batch_size must be a positive int. Received: "
            f"batch_size={batch_size!r}"
        )
    if domain is not None and domain not in features.DOMAINS:
        raise ValueError(f"domain must be None or one of {features.DOMAINS}. "
                         f"Received: domain={domain!r}")
    if not 0.0 < label_fraction <= 1.0:
        raise ValueError("label_fraction must be in (0, 1]. Received: "
                         f"label_fraction={label_fraction!r}")
    if margin < 0:
        raise ValueError(f"margin must be >= 0. Received: margin={margin!r}")
    if augment not in AUGMENTATIONS or not 0.0 < min_area <= 1.0:
        raise ValueError(
            f"augment must be one of {AUGMENTATIONS} and min_area in (0, 1]."
            f" Received: augment={augment!r}, min_area={min_area!r}")
    files = _resolve_files(shards, split)
    if schema is None:
        if not (isinstance(shards, (str, os.PathLike))
                and os.path.isdir(shards)):
            raise ValueError("schema is required when shards is a list of "
                             "files.")
        schema = load_schema(os.fspath(shards))
    schema = attributes.get_schema(schema)
    repeat = training if repeat is None else repeat
    drop_remainder = training if drop_remainder is None else drop_remainder
    # Training without a seed trades reproducibility for throughput; a seed
    # asks for reproducibility, so it makes the whole pipeline ordered.
    deterministic = (not training) or seed is not None

    ds = tf.data.Dataset.from_tensor_slices(files)
    if training and len(files) > 1:
        ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    ds = ds.interleave(
        lambda f: tf.data.TFRecordDataset(f, buffer_size=_READ_BUFFER),
        cycle_length=min(len(files), 16),
        block_length=1, num_parallel_calls=AUTOTUNE,
        deterministic=deterministic,
    )
    ds = ds.map(lambda s: parse_example(s, schema),
                num_parallel_calls=AUTOTUNE, deterministic=deterministic)
    if domain is not None:
        ds = ds.filter(lambda r: tf.equal(r["domain"], domain))
    if label_fraction < 1.0:
        ds = ds.filter(lambda r: item_kept(r["item_id"], label_fraction))
    if decode_cache:
        def decoded(record):
            record = dict(record)
            record["image"] = shrink(decode_image(record.pop("encoded")),
                                     float(decode_cache))
            return record

        ds = ds.map(decoded, num_parallel_calls=AUTOTUNE,
                    deterministic=deterministic).cache()
    elif cache:
        ds = ds.cache("" if cache is True else os.fspath(cache))
    if training and shuffle_buffer > 1:
        ds = ds.shuffle(shuffle_buffer, seed=seed,
                        reshuffle_each_iteration=True)
    if repeat is True:
        ds = ds.repeat()
    elif repeat:
        ds = ds.repeat(int(repeat))
    if training:
        # One stateless seed pair per element and epoch, drawn in stream
        # order by a sequential map: augmentation does not depend on which
        # parallel map call handles which record. (Not a zipped
        # Dataset.random: a second source dataset defeats tf.data's FILE
        # auto-sharding in multi-worker training.)
        ds = ds.map(lambda record: (record, _element_seed(record, seed)))

    def to_example(record, element_seed=None):
        bbox = record["bbox"] if crop_to_bbox else tf.constant(FULL_BOX)
        framing = dict(image_size=image_size, training=training,
                       margin=margin if crop_to_bbox else 0.0,
                       seed=element_seed, augment=augment,
                       min_area=min_area)
        if decode_cache:
            image = frame(record["image"], bbox, **framing)
        else:
            image = preprocess(record["encoded"], bbox, **framing)
        if not with_meta:
            return image, record["labels"]
        meta = {k: record[k] for k in ("item_id", "domain", "source_id")}
        return image, record["labels"], meta

    ds = ds.map(to_example, num_parallel_calls=AUTOTUNE,
                deterministic=deterministic)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder,
                  num_parallel_calls=AUTOTUNE, deterministic=deterministic)
    ds = ds.prefetch(AUTOTUNE)
    options = tf.data.Options()
    options.deterministic = deterministic
    options.autotune.enabled = True
    return ds.with_options(options)

