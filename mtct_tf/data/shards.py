"""TFRecord shards: their names, the one writer, and record counts.

Modelled on Model Garden's ``official/vision/data/tfrecord_lib.py``. A
split is written as ``<split>-00003-of-00008.tfrecord`` files (``shard_name``);
each file is first written under a hidden temporary name and renamed when
complete, so a reader (``pipeline.shard_files``) never sees half a shard.
What a record holds is elsewhere: the tf.Example keys in ``features.py``,
the encoder in ``convert.make_example`` (and the detector's records), the
decoder in ``pipeline.parse_example``.

TensorFlow is imported inside the functions: the converters' worker
processes import this module and must start without it.
"""

import math
import os
import re

from mtct_tf import fileio
from mtct_tf.data import features

SHARD_RE = re.compile(r"^(?P<split>[a-z]+)-(?P<index>\d{5})-of-(?P<count>\d{5})"
                      r"\.tfrecord$")


def shard_name(split, index, count):
    """``train-00003-of-00008.tfrecord``-style name of one shard."""
    return f"{split}-{index:05d}-of-{count:05d}.tfrecord"


def temporary_path(path):
    """Where a shard is written before it is published (``publish``)."""
    return fileio.temporary_path(path)


def publish(written):
    """Renames ``(temporary, final)`` pairs: the shards become visible."""
    for tmp, final in written:
        os.replace(tmp, final)


def write_shards(out_dir, split, records, num_shards, *, publish_now=True):
    """Writes serialized records as ``<split>-NNNNN-of-NNNNN.tfrecord``.

    Records are dealt out in contiguous blocks, so file order is record
    order.

    Args:
        out_dir: the shard directory (exists).
        split: the split name.
        records: serialized records (bytes), in order.
        num_shards: wanted number of shards (at most one per record, at
            least one).
        publish_now: rename the shards into place before returning; with
            ``False`` the caller publishes the returned pairs (``publish``)
            once every split is written.

    Returns:
        The ``(temporary path, final path)`` pairs, in shard order.
    """
    import tensorflow as tf

    records = list(records)
    num_shards = max(1, min(num_shards, len(records)))
    per = math.ceil(len(records) / num_shards)
    written = []
    for i in range(num_shards):
        final = os.path.join(out_dir, shard_name(split, i, num_shards))
        tmp = temporary_path(final)
        with tf.io.TFRecordWriter(tmp) as w:
            for r in records[i * per:(i + 1) * per]:
                w.write(r)
        written.append((tmp, final))
    if publish_now:
        publish(written)
    return written


def count_records(files, domain=None):
    """Counts the records of ``files`` (of one domain: parses that only).

    Args:
        files: TFRecord paths.
        domain: ``None`` (every record), or a domain name (``"shop"``).

    Returns:
        The number of records.
    """
    import tensorflow as tf

    ds = tf.data.TFRecordDataset(list(files), num_parallel_reads=4)
    if domain is not None:
        spec = {features.DOMAIN: tf.io.FixedLenFeature([], tf.string)}
        ds = ds.map(
            lambda s: tf.io.parse_single_example(s, spec)[features.DOMAIN])
        ds = ds.filter(lambda d: tf.equal(d, domain))
    return int(ds.reduce(0, lambda n, _: n + 1))
