"""Manifest -> sharded TFRecords of tf.Examples (docs/DATA_FORMAT.md).

Conversion happens once per dataset, offline: every manifest line is
validated (fields by ``mtct_tf.data.manifest``, then the image file itself by
``mtct_tf.data.images``), encoded as one ``tf.train.Example``
(``mtct_tf.data.example``) and written into
``<split>-NNNNN-of-NNNNN.tfrecord`` shards, shuffled within each split so
that every shard mixes items and domains.

Work is split in two so that worker processes never import TensorFlow:
workers (a ``spawn`` pool: forking a process that has loaded TensorFlow's
thread pools can deadlock) open, check and if needed re-encode the images
with PIL; the parent builds the tf.Examples and writes the shards, in a fixed
order, so the output does not depend on the number of workers.

The output is written atomically, through ``mtct_tf.data.shards``. A
conversion first deletes what an earlier one left in the directory (shards,
``summary.json``), writes every shard as a hidden ``.<name>.tmp`` file,
renames them only once every record of every split is written, and writes
``summary.json`` last. So an interrupted conversion leaves either no
finished-looking shard at all or (killed while renaming) leftover
temporaries that ``shards.shard_files`` refuses; rerunning completes it.
"""

import collections
import math
import multiprocessing
import os
import random
import time

from mtct_tf import attributes, fileio
from mtct_tf.data import features, shards
# ``feature_spec`` and ``SHARD_RE`` are not used here: they are imported for
# the callers that know them as ``convert.feature_spec`` and
# ``convert.SHARD_RE``.
from mtct_tf.data.example import feature_spec, make_example  # noqa: F401
from mtct_tf.data.features import MAX_PIXELS
from mtct_tf.data.images import ImageError, load_image
from mtct_tf.data.manifest import read_manifest
from mtct_tf.data.shards import SHARD_RE, SUMMARY_FILE, shard_name  # noqa: F401

# ``num_shards="auto"`` aims at shards of about this size (the tf.data
# performance guide recommends files of 100 MB and more).
AUTO_SHARD_BYTES = 100 * 2**20
SUMMARY = SUMMARY_FILE  # The name callers know (``convert.SUMMARY``).
_CHUNK = 16  # Images per task sent to a worker process.
# Starting a worker process costs about as much as checking a few hundred
# images, so small conversions use fewer workers (or none).
_MIN_IMAGES_PER_WORKER = 256


def _load_chunk(task):
    """Worker: ``load_image`` over a chunk, errors returned, not raised."""
    entries, manifest_path, resize, max_pixels = task
    results = []
    for entry in entries:
        try:
            results.append((True, load_image(
                entry, manifest_path=manifest_path, resize=resize,
                max_pixels=max_pixels)))
        except ImageError as e:
            results.append((False, (entry.line, str(e))))
    return results


# --------------------------------------------------------------------------
# Conversion.


def _resolve_schema(schema, manifest_path):
    if schema is not None:
        return attributes.get_schema(schema)
    path = os.path.join(os.path.dirname(os.path.abspath(manifest_path)),
                        features.SCHEMA_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"No schema given and {path} does not exist; pass a schema name "
            f"({', '.join(sorted(attributes.BUILTIN))}) or the path of a "
            "schema JSON file (--schema)."
        )
    return attributes.AttributeSchema.load(path)


def _num_shards(num_shards, entries):
    if num_shards is None or num_shards == "auto":
        size = sum(
            os.path.getsize(e.path) if os.path.isfile(e.path) else 0
            for e in entries
        )
        return max(1, min(len(entries), math.ceil(size / AUTO_SHARD_BYTES)))
    if isinstance(num_shards, bool) or not isinstance(num_shards, int) or (
            num_shards < 1 or num_shards > 99999):
        raise ValueError(
            "num_shards must be 'auto', None or an integer in [1, 99999]. "
            f"Received: num_shards={num_shards!r}"
        )
    return num_shards


def _plan(entries, num_shards, seed):
    """Shuffles each split and cuts it into shards and worker chunks.

    Returns:
        A list of ``(split, shard index, shard count, [chunk, ...])`` in
        writing order.
    """
    by_split = collections.defaultdict(list)
    for entry in entries:
        by_split[entry.split].append(entry)
    plan = []
    for split in features.SPLITS:
        items = by_split.get(split)
        if not items:
            continue
        # String seeds go through SHA-512, so the order is the same on every
        # machine and Python version.
        random.Random(f"{seed}:{split}").shuffle(items)
        count = _num_shards(num_shards, items)
        for index in range(count):
            shard = items[index * len(items) // count:
                          (index + 1) * len(items) // count]
            chunks = [shard[k:k + _CHUNK] for k in range(0, len(shard), _CHUNK)]
            plan.append((split, index, count, chunks))
    return plan


def _new_split_summary(schema):
    return {
        "records": 0,
        "shards": [],
        "domains": {d: 0 for d in features.DOMAINS},
        "items": set(),
        "with_bbox": 0,
        "reencoded": 0,
        "formats": collections.Counter(),
        "missing_labels": {name: 0 for name in schema.names},
    }


def _count(s, entry, fmt, reencoded):
    """Adds one written record to its split's summary ``s``."""
    s["records"] += 1
    s["domains"][entry.domain] += 1
    s["items"].add(entry.item_id)
    s["with_bbox"] += entry.bbox is not None
    s["reencoded"] += reencoded
    s["formats"][fmt] += 1
    for attr, code in entry.labels.items():
        # A multilabel code is missing when all of its entries are unknown.
        if code == attributes.MISSING or (isinstance(code, tuple) and all(
                c == attributes.MISSING for c in code)):
            s["missing_labels"][attr] += 1


def convert_manifest(manifest_path, out_dir, *, schema=None, num_shards=None,
                     resize=None, skip_bad=False, allow_outside_root=False,
                     workers=None, progress=True, seed=0,
                     max_pixels=MAX_PIXELS):
    """Validates a manifest and writes its images as sharded TFRecords.

    Args:
        manifest_path: the JSONL manifest (docs/DATA_FORMAT.md); image paths
            are relative to its directory.
        out_dir: where the shards, ``schema.json`` and ``summary.json`` go
            (created if needed). The shards and summary of an earlier
            conversion there are deleted first.
        schema: an ``AttributeSchema``, a built-in schema name or a schema
            JSON path; default ``schema.json`` beside the manifest.
        num_shards: shards per split: an int (exactly that many, some
            possibly empty), or ``None`` / ``"auto"`` (about 100 MB each).
        resize: ``None`` (keep sizes) or the shorter side in pixels that
            larger images are scaled down to (see ``images.load_image``).
        skip_bad: skip bad lines and images, listing them in the summary,
            instead of raising on the first one.
        allow_outside_root: let image paths leave the manifest's directory.
        workers: at most this many image-checking processes (default: the
            usable cores); at least 256 images per process, and 1 process
            means in-process.
        progress: show a tqdm progress bar.
        seed: seeds the within-split shuffle.
        max_pixels: larger images are refused (decompression bombs).

    Returns:
        The summary dict, also saved as ``<out_dir>/summary.json``.

    Raises:
        ManifestError: a bad manifest line or image (``ImageError``), named
            by file and line, unless ``skip_bad``; or no valid line at all.
        FileNotFoundError: no schema given and none beside the manifest.
    """
    # The shard writer needs TensorFlow. Imported here, not at the top:
    # worker processes import this module and must not load it; and before
    # the clock starts, so that its start-up is not counted in the timing.
    import tensorflow  # noqa: F401

    from mtct_tf import progress as progress_lib

    start = time.time()
    schema = _resolve_schema(schema, manifest_path)
    if resize is not None and (isinstance(resize, bool)
                               or not isinstance(resize, int) or resize < 1):
        raise ValueError(
            "resize must be None or a positive int. Received: "
            f"resize={resize!r}"
        )
    if workers is None:
        # The cores this process may use (CPU affinity), not the machine's.
        workers = (len(os.sched_getaffinity(0))
                   if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    workers = int(workers)
    if workers < 1:
        raise ValueError(f"workers must be >= 1. Received: workers={workers}")
    _num_shards(num_shards, [])  # Validates the argument before any work.

    entries, skipped = read_manifest(
        manifest_path, schema, skip_bad=skip_bad,
        allow_outside_root=allow_outside_root,
    )
    plan = _plan(entries, num_shards, seed)

    os.makedirs(out_dir, exist_ok=True)
    shards.clear(out_dir)

    splits = {}
    bad_images = []  # (line, message)
    tasks = [(chunk, manifest_path, resize, max_pixels)
             for _, _, _, chunks in plan for chunk in chunks]
    pool = None
    try:
        procs = min(workers, len(tasks),
                    len(entries) // _MIN_IMAGES_PER_WORKER)
        if procs > 1:
            pool = multiprocessing.get_context("spawn").Pool(procs)
            results = pool.imap(_load_chunk, tasks)
        else:
            results = map(_load_chunk, tasks)
        bar = progress_lib.bar(total=len(entries), unit="img",
                               desc="convert", disable=not progress)
        with bar, shards.ShardSetWriter(out_dir) as shard_set:
            for split, index, count, chunks in plan:
                s = splits.setdefault(split, _new_split_summary(schema))
                with shard_set.shard(split, index, count) as writer:
                    for _ in chunks:
                        for ok, result in next(results):
                            bar.update(1)
                            if not ok:
                                if not skip_bad:
                                    raise ImageError(result[1])
                                bad_images.append(result)
                                continue
                            entry, encoded, fmt, height, width, re_enc = result
                            example = make_example(entry, encoded, fmt,
                                                   height, width, schema)
                            writer.write(example.SerializeToString())
                            _count(s, entry, fmt, re_enc)
                s["shards"].append(shard_name(split, index, count))
            if pool is not None:
                pool.close()
                pool.join()
                pool = None
            # Every record of every split is written: publish.
            shard_set.publish()
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()

    schema.save(os.path.join(out_dir, features.SCHEMA_FILE))
    # Manifest problems come in file order; image problems in shuffled
    # order, so sort them back.
    skipped = skipped + [message for _, message in sorted(bad_images)]
    seconds = time.time() - start
    total = sum(s["records"] for s in splits.values())
    for s in splits.values():
        s["items"] = len(s["items"])
        s["formats"] = dict(sorted(s["formats"].items()))
    summary = {
        "manifest": os.path.abspath(manifest_path),
        "schema": schema.name,
        "attributes": list(schema.names),
        "records": total,
        "splits": splits,
        "skipped": skipped,
        "num_skipped": len(skipped),
        "resize": resize,
        "seed": seed,
        "seconds": round(seconds, 3),
        "images_per_second": round(
            (total + len(skipped)) / max(seconds, 1e-9), 1),
    }
    # Written last: its presence marks a finished conversion.
    fileio.write_json(os.path.join(out_dir, SUMMARY_FILE), summary,
                      newline=True)
    return summary


def format_summary(summary, max_skipped=20):
    """A human-readable report of a ``convert_manifest`` summary."""
    lines = [f"{summary['records']} records from {summary['manifest']} "
             f"(schema {summary['schema']!r}) in {summary['seconds']:.1f} s, "
             f"{summary['images_per_second']:.1f} images/s"]
    for split, s in summary["splits"].items():
        domains = ", ".join(f"{d} {n}" for d, n in s["domains"].items())
        missing = ", ".join(f"{a} {n}" for a, n in
                            s["missing_labels"].items() if n)
        lines.append(
            f"  {split}: {s['records']} records in {len(s['shards'])} "
            f"shard(s) ({domains}; {s['items']} items; {s['with_bbox']} with "
            f"bbox; {s['reencoded']} re-encoded)")
        lines.append(f"    missing labels: {missing or 'none'}")
    if summary["skipped"]:
        lines.append(f"  skipped {summary['num_skipped']}:")
        for problem in summary["skipped"][:max_skipped]:
            lines.append(f"    {problem}")
        if summary["num_skipped"] > max_skipped:
            lines.append(f"    ... and {summary['num_skipped'] - max_skipped}"
                         " more (all in summary.json)")
    return "\n".join(lines)
