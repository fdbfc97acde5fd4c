"""TFRecord shard sets: their names, the one writer, and finding them again.

Modelled on Model Garden's ``official/vision/data/tfrecord_lib.py``. A
split is written as ``<split>-00003-of-00008.tfrecord`` files (``shard_name``)
beside ``schema.json`` and ``summary.json``. Every shard set of the project
(the converter's, the detector's records and crops) is written here:
``ShardSetWriter`` writes each file under a hidden temporary name and renames
them together when every split is complete, so a reader never sees half a
shard, and ``clear`` empties a directory of an earlier set first. The reading
side finds a complete set again (``shard_files``), its schema
(``load_schema``) and its counts (``load_summary``, ``num_records``,
``count_records``).

What a record holds is elsewhere: the tf.Example format in ``example.py``,
its keys in ``features.py``.

TensorFlow is imported inside the functions: the converters' worker
processes import this module and must start without it.
"""

import contextlib
import json
import math
import os
import re

from mtct_tf import attributes, fileio
from mtct_tf.data import features

SUMMARY_FILE = "summary.json"
SHARD_RE = re.compile(r"^(?P<split>[a-z]+)-(?P<index>\d{5})-of-(?P<count>\d{5})"
                      r"\.tfrecord$")
# Temporary shards: ours (``.<shard>.tmp``) and ``<shard>.tmp-<pid>``.
TMP_RE = re.compile(r"^\.?(?P<split>[a-z]+)-\d{5}-of-\d{5}\.tfrecord\.tmp")


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


class ShardSetWriter:
    """Writes shards under temporary names; publishes them all at once.

    Records can be written as they arrive (the converter gets them from its
    worker processes), one shard after another. Nothing is visible to a
    reader until ``publish``; leaving the ``with`` block by an exception
    removes the temporaries instead.

    Usage::

        with shards.ShardSetWriter(out_dir) as writer:
            with writer.shard("train", 0, 2) as out:
                out.write(serialized)
            ...
            writer.publish()

    Args:
        out_dir: the shard directory (exists).
    """

    def __init__(self, out_dir):
        self.out_dir = out_dir
        self.pending = []  # (temporary path, final path), in writing order.

    @contextlib.contextmanager
    def shard(self, split, index, count):
        """Yields a ``tf.io.TFRecordWriter`` for shard ``index`` of ``count``.

        Args:
            split: the split name.
            index: the shard's index, in ``[0, count)``.
            count: the number of shards of the split.

        Yields:
            The open writer (``.write(serialized)``).
        """
        import tensorflow as tf

        final = os.path.join(self.out_dir, shard_name(split, index, count))
        tmp = temporary_path(final)
        self.pending.append((tmp, final))
        with tf.io.TFRecordWriter(tmp) as writer:
            yield writer

    def publish(self):
        """Renames every written shard into place.

        Returns:
            The ``(temporary path, final path)`` pairs, in writing order.
        """
        written, self.pending = self.pending, []
        publish(written)
        return written

    def discard(self):
        """Removes the temporaries of the shards not published."""
        for tmp, _ in self.pending:
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)
        self.pending = []

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.discard()
        return False


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
    records = list(records)
    num_shards = max(1, min(num_shards, len(records)))
    per = math.ceil(len(records) / num_shards)
    writer = ShardSetWriter(out_dir)
    try:
        for i in range(num_shards):
            with writer.shard(split, i, num_shards) as out:
                for r in records[i * per:(i + 1) * per]:
                    out.write(r)
    except BaseException:
        writer.discard()
        raise
    return writer.publish() if publish_now else writer.pending


def clear(out_dir):
    """Removes an earlier shard set from ``out_dir``.

    Its ``summary.json`` goes first (the directory stops looking finished),
    then every shard of every split and any temporary one left by an
    interrupted writer; ``schema.json`` and other files stay. A directory
    is rebuilt, never patched, so that no failure leaves old and new shards
    side by side.

    Args:
        out_dir: the shard directory (exists).
    """
    with contextlib.suppress(FileNotFoundError):
        os.remove(os.path.join(out_dir, SUMMARY_FILE))
    for name in os.listdir(out_dir):
        if SHARD_RE.match(name) or TMP_RE.match(name):
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(out_dir, name))


def shard_files(shards_dir, split, *, check_complete=True):
    """The shard files of one split, sorted.

    Args:
        shards_dir: a directory of ``<split>-NNNNN-of-NNNNN.tfrecord`` files,
            as written by ``convert_manifest`` (or the detector's cropper).
        split: ``"train"``, ``"val"`` or ``"test"``.
        check_complete: also require a complete set (every ``k`` of
            ``-of-N`` present, one ``N``) and no temporary shard of the split
            (left by a conversion that is running or was killed).

    Returns:
        A sorted list of paths.

    Raises:
        FileNotFoundError: no shard of ``split``; the message names the
            directory, the expected pattern and the splits that exist.
        ValueError: an incomplete or mixed set, or an unfinished conversion.
    """
    if split not in features.SPLITS:
        raise ValueError(f"split must be one of {features.SPLITS}. "
                         f"Received: split={split!r}")
    names = os.listdir(shards_dir) if os.path.isdir(shards_dir) else []
    found, temporary = {}, []
    for name in names:
        m = SHARD_RE.match(name)
        if m:
            found.setdefault(m["split"], []).append(
                (int(m["index"]), int(m["count"]), name))
            continue
        m = TMP_RE.match(name)
        if m and m["split"] == split:
            temporary.append(name)
    mine = sorted(found.get(split, []))
    pattern = os.path.join(shards_dir, f"{split}-NNNNN-of-NNNNN.tfrecord")
    if not mine:
        have = ", ".join(sorted(found)) or "none"
        raise FileNotFoundError(
            f"No shards of split {split!r} in {shards_dir}: expected files "
            f"named {pattern} (written by datasets/convert_manifest.py). "
            f"Splits present: {have}."
        )
    if check_complete:
        if temporary:
            raise ValueError(
                f"Unfinished conversion in {shards_dir}: temporary files "
                f"{sorted(temporary)} are left (a conversion is running or "
                "was killed); rerun datasets/convert_manifest.py."
            )
        counts = {count for _, count, _ in mine}
        indices = [index for index, _, _ in mine]
        if len(counts) != 1 or indices != list(range(next(iter(counts)))):
            raise ValueError(
                f"Incomplete or mixed set of {split!r} shards in {shards_dir}"
                f": found {[name for _, _, name in mine]}; rerun "
                "datasets/convert_manifest.py."
            )
    return [os.path.join(shards_dir, name) for _, _, name in mine]


def splits_present(shards_dir):
    """The splits that have at least one shard in ``shards_dir``, sorted."""
    return sorted({m["split"] for m in map(SHARD_RE.match,
                                           os.listdir(shards_dir)) if m})


def load_schema(shards_dir):
    """The ``AttributeSchema`` saved beside the shards (``schema.json``).

    Raises:
        FileNotFoundError: no ``schema.json`` in ``shards_dir``.
    """
    path = os.path.join(shards_dir, features.SCHEMA_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{path} does not exist: expected the schema that "
            "datasets/convert_manifest.py writes beside the shards."
        )
    return attributes.AttributeSchema.load(path)


def load_summary(shards_dir):
    """The conversion summary (``summary.json``) as a dict."""
    with open(os.path.join(shards_dir, SUMMARY_FILE), encoding="utf-8") as f:
        return json.load(f)


def num_records(shards_dir, split, domain=None):
    """Records of a split (and domain) according to ``summary.json``.

    Useful for ``steps_per_epoch`` with the infinite training datasets.

    Args:
        shards_dir: the shard directory.
        split: the split name.
        domain: ``None`` (every record), or a domain name.

    Returns:
        The number of records; 0 for a split the summary does not list.
    """
    s = load_summary(shards_dir)["splits"].get(split)
    if s is None:
        return 0
    return s["records"] if domain is None else s["domains"].get(domain, 0)


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
