"""EXIF orientation: phone photos stored sideways, with a tag saying so.

A camera held upright often stores the sensor's landscape pixels and an
EXIF ``Orientation`` tag (values 1-8, TIFF 6.0 / EXIF 2.3) telling viewers
how to turn them; TensorFlow's decoders ignore the tag. Every image the
project decodes goes through ``orient`` (``pipeline.decode_image``): the
training pipeline, evaluation, the exported serving graph and ``predict``
all see a tagged photo as a viewer shows it, so a sideways-stored photo
gets the answer of its upright twin. The converter goes further and stores
tagged photos upright (``transpose``, with their boxes), so records carry
no tag that a reader would have to honour.

The graph reads the tag from JPEG files (the APP1 ``Exif`` segment); other
formats (PNG's rarely used ``eXIf`` chunk, for one) are taken as stored.
"""

import numpy as np
from PIL import Image

# Bytes of a JPEG's start searched for the APP1 segment: EXIF data must fit
# in one 64 KiB segment, and the segments before it (JFIF APP0, ...) are
# small.
_HEAD = 2**17
_LIMIT = _HEAD + 64
_MAX_SEGMENTS = 16
_MAX_ENTRIES = 64
_ORIENTATION_TAG = 0x0112


def jpeg_orientation(encoded):
    """The EXIF orientation (1-8) of JPEG bytes; 1 when there is none.

    Pure TensorFlow ops, safe on any bytes: reads past the end see zeros,
    and anything that is not a JPEG with a well-formed orientation entry
    gives 1.

    Args:
        encoded: scalar string tensor.

    Returns:
        int32 scalar tensor in [1, 8].
    """
    import tensorflow as tf

    encoded = tf.convert_to_tensor(encoded, tf.string)
    head = tf.strings.substr(
        encoded, 0, tf.minimum(tf.strings.length(encoded), _HEAD))
    data = tf.io.decode_raw(head, tf.uint8)
    # Zero padding to a fixed length, and every index clipped into it: a
    # read past the end (or at an absurd offset) sees zeros. int64: a
    # 4-byte offset overflows int32.
    data = tf.cast(tf.pad(data, [[0, _LIMIT + 1 - tf.shape(data)[0]]]),
                   tf.int64)

    def byte(i):
        return tf.gather(data, tf.clip_by_value(i, 0, _LIMIT))

    def big(i, n):
        value = tf.constant(0, tf.int64)
        for k in range(n):
            value = value * 256 + byte(i + k)
        return value

    exif = tf.constant([0x45, 0x78, 0x69, 0x66, 0, 0], tf.int64)  # Exif\0\0

    def is_exif(pos):
        marker = big(pos, 2)
        ident = tf.gather(data, tf.clip_by_value(
            pos + 4 + tf.range(6, dtype=tf.int64), 0, _LIMIT))
        return tf.logical_and(tf.equal(marker, 0xFFE1),
                              tf.reduce_all(tf.equal(ident, exif)))

    def searching(pos, found, i):
        marker = big(pos, 2)
        # Stop at the image data (SOS), at a non-marker, or once found.
        return tf.logical_and(
            tf.logical_and(tf.logical_not(found), i < _MAX_SEGMENTS),
            tf.logical_and(byte(pos) == 0xFF, marker != 0xFFDA))

    def step(pos, found, i):
        hit = is_exif(pos)
        return (tf.where(hit, pos, pos + 2 + big(pos + 2, 2)), hit, i + 1)

    is_jpeg = tf.logical_and(big(0, 2) == 0xFFD8, byte(2) == 0xFF)
    pos, found, _ = tf.while_loop(
        searching, step,
        (tf.constant(2, tf.int64), tf.constant(False), tf.constant(0)))
    found = tf.logical_and(is_jpeg, found)

    tiff = pos + 10
    little = tf.logical_and(byte(tiff) == 0x49, byte(tiff + 1) == 0x49)

    def number(i, n):
        value_be = big(i, n)
        value_le = tf.constant(0, tf.int64)
        for k in reversed(range(n)):
            value_le = value_le * 256 + byte(i + k)
        return tf.where(little, value_le, value_be)

    ifd = tf.minimum(tiff + number(tiff + 4, 4), _LIMIT)
    count = tf.minimum(number(ifd, 2), _MAX_ENTRIES)
    # The IFD's 12-byte entries, read at once: tag (2 bytes), type (2),
    # count (4), value (a SHORT's 2 bytes first).
    starts = ifd + 2 + 12 * tf.range(_MAX_ENTRIES, dtype=tf.int64)
    entries = tf.gather(data, tf.clip_by_value(
        starts[:, None] + tf.range(12, dtype=tf.int64)[None, :], 0, _LIMIT))

    def short(k):
        hi_lo = entries[:, k] * 256 + entries[:, k + 1]
        return tf.where(little, entries[:, k + 1] * 256 + entries[:, k],
                        hi_lo)

    tags, values = short(0), short(8)
    match = tf.logical_and(tf.equal(tags, _ORIENTATION_TAG),
                           tf.range(_MAX_ENTRIES, dtype=tf.int64) < count)
    value = tf.reduce_max(tf.where(match, values, 0))
    ok = tf.logical_and(found, tf.logical_and(value >= 1, value <= 8))
    return tf.cast(tf.where(ok, value, 1), tf.int32)


def orient(image, orientation):
    """Turns decoded pixels as the EXIF orientation says a viewer shows them.

    Args:
        image: [H, W, C] tensor as stored.
        orientation: int scalar tensor, 1-8 (anything else: unchanged).

    Returns:
        The displayed image ([W, H, C] for orientations 5-8).
    """
    import tensorflow as tf

    image = tf.convert_to_tensor(image)
    transposed = lambda x: tf.transpose(x, [1, 0, 2])  # noqa: E731
    flip_lr = lambda x: tf.reverse(x, [1])  # noqa: E731
    flip_ud = lambda x: tf.reverse(x, [0])  # noqa: E731
    branches = [
        lambda: image,                                 # 1 (and invalid)
        lambda: flip_lr(image),                        # 2 mirrored
        lambda: flip_ud(flip_lr(image)),               # 3 rotated 180
        lambda: flip_ud(image),                        # 4 mirrored vertically
        lambda: transposed(image),                     # 5 transposed
        lambda: flip_lr(transposed(image)),            # 6 turn 90 clockwise
        lambda: flip_ud(flip_lr(transposed(image))),   # 7 transversed
        lambda: flip_ud(transposed(image)),            # 8 turn 90 anticlockw.
    ]
    index = tf.where((orientation >= 1) & (orientation <= 8),
                     tf.cast(orientation, tf.int32) - 1, 0)
    out = tf.switch_case(index, branches)
    out.set_shape([None, None, image.shape[-1]])
    return out


# --------------------------------------------------------------------------
# The converter's side (PIL and NumPy: runs in worker processes).


# Orientation -> the ``PIL.Image.transpose`` method that makes it upright
# (as ``PIL.ImageOps.exif_transpose`` does).
PIL_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def pil_orientation(img):
    """The EXIF orientation of an open PIL image (1 when absent/invalid)."""
    try:
        value = int(img.getexif().get(_ORIENTATION_TAG, 1))
    except Exception:  # noqa: BLE001 - malformed EXIF blocks raise anything.
        return 1
    return value if 1 <= value <= 8 else 1


def transpose_box(box, orientation, width, height):
    """Maps an ``[xmin, ymin, xmax, ymax]`` pixel box of the stored image
    into the displayed one (``PIL.ImageOps.exif_transpose``'s output).

    Args:
        box: pixel edges in the stored ``width`` x ``height`` image.
        orientation: 1-8.
        width, height: the stored image's size.

    Returns:
        The box in the displayed image, as a tuple of floats.
    """
    corners = np.array([[box[0], box[1]], [box[2], box[3]]], float)
    x, y = corners[:, 0], corners[:, 1]
    w, h = float(width), float(height)
    mapped = {
        1: (x, y), 2: (w - x, y), 3: (w - x, h - y), 4: (x, h - y),
        5: (y, x), 6: (h - y, x), 7: (h - y, w - x), 8: (y, w - x),
    }[orientation]
    xs, ys = np.sort(mapped[0]), np.sort(mapped[1])
    return (float(xs[0]), float(ys[0]), float(xs[1]), float(ys[1]))
