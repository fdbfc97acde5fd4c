"""The tf.Example keys of the project's records, defined once, the constants
every data module shares (domains, splits, the garment class, the image-size
limit) and the ``tf.train.Feature`` builders that fill the keys.

Keys follow TF Model Garden's detection format where one exists, so that the
same record can feed both the attribute network and the detector.
"""

ENCODED = "image/encoded"
FORMAT = "image/format"
HEIGHT = "image/height"
WIDTH = "image/width"
SOURCE_ID = "image/source_id"
DOMAIN = "image/domain"
ITEM_ID = "image/item_id"
SPLIT = "image/split"
ATTRIBUTE_PREFIX = "image/attribute/"
# Boxes are normalised to [0, 1] like Model Garden's; one box per attribute
# record (the garment), any number per detection record.
BBOX_XMIN = "image/object/bbox/xmin"
BBOX_YMIN = "image/object/bbox/ymin"
BBOX_XMAX = "image/object/bbox/xmax"
BBOX_YMAX = "image/object/bbox/ymax"
CLASS_LABEL = "image/object/class/label"
CLASS_TEXT = "image/object/class/text"
IS_CROWD = "image/object/is_crowd"
AREA = "image/object/area"

# The class id of garments in detection records and detector outputs
# (0 is Model Garden's background), and its name in attribute records.
GARMENT_CLASS = 1
GARMENT_TEXT = "garment"

# Larger images are refused before they are decoded, by the converter and by
# the decoder of the pipeline and the serving graph: a small file can declare
# a huge canvas (a "decompression bomb"), and no clothing photo needs more
# than 40 megapixels.
MAX_PIXELS = 40_000_000

# The attribute schema beside a dataset, its shards, a stage's model and an
# export (``attributes.AttributeSchema.save``).
SCHEMA_FILE = "schema.json"

DOMAINS = ("shop", "street")
SPLITS = ("train", "val", "test")


def attribute_key(name):
    """The tf.Example key holding attribute ``name`` (int64, -1 = missing)."""
    return ATTRIBUTE_PREFIX + name


def bytes_feature(values):
    """A ``tf.train.Feature`` holding the bytes ``values``."""
    import tensorflow as tf  # Keys alone must not need TensorFlow.

    return tf.train.Feature(bytes_list=tf.train.BytesList(value=values))


def int64_feature(values):
    """A ``tf.train.Feature`` holding the int64 ``values``."""
    import tensorflow as tf

    return tf.train.Feature(int64_list=tf.train.Int64List(value=values))


def float_feature(values):
    """A ``tf.train.Feature`` holding the float ``values``."""
    import tensorflow as tf

    return tf.train.Feature(float_list=tf.train.FloatList(value=values))
