"""Manifest -> sharded TFRecords of tf.Examples (docs/DATA_FORMAT.md).

Conversion happens once per dataset, offline: every manifest line is
validated (fields by ``mtct_tf.data.manifest``, then the image file itself),
encoded as one ``tf.train.Example`` with the keys of
``mtct_tf.data.features`` and written into ``<split>-NNNNN-of-NNNNN.tfrecord``
shards, shuffled within each split so that every shard mixes items and
domains.

Work is split in two so that worker processes never import TensorFlow:
workers (a ``spawn`` pool: forking a process that has loaded TensorFlow's
thread pools can deadlock) open, check and if needed re-encode the images
with PIL; the parent builds the tf.Examples and writes the shards, in a fixed
order, so the output does not depend on the number of workers.

The output is written atomically. A conversion first deletes what an
earlier one left in the directory (shards, ``summary.json``), writes every
shard as a hidden ``.<name>.tmp`` file, renames them only once every record of
every split is written, and writes ``summary.json`` last. So an interrupted
conversion leaves either no finished-looking shard at all or (killed while
renaming) leftover temporaries that ``mtct_tf.data.pipeline.shard_files``
refuses; rerunning completes it.

One module, in the order a record goes through it (the tf.Example format,
the image checks that run in the workers, the conversion that drives them):
the three are one offline command and change together when the format does.
"""

import collections
import dataclasses
import glob
import io
import math
import multiprocessing
import os
import random
import time
import warnings

import numpy as np
from PIL import Image

from mtct_tf import attributes, fileio
from mtct_tf.data import exif, features, shards
from mtct_tf.data.manifest import ManifestError, read_manifest
from mtct_tf.data.shards import SHARD_RE, shard_name  # noqa: F401

# Larger images are refused before they are decoded: a small file can
# declare a huge canvas (a "decompression bomb"), and no clothing photo needs
# more than 40 megapixels.
MAX_PIXELS = 40_000_000
# Re-encoded images are stored at this JPEG quality: high enough that the
# re-encoding is invisible to the network, far smaller than lossless.
JPEG_QUALITY = 95
# ``num_shards="auto"`` aims at shards of about this size (the tf.data
# performance guide recommends files of 100 MB and more).
AUTO_SHARD_BYTES = 100 * 2**20
# The one detection class of our records (Model Garden counts classes from 1;
# 0 is the background).
GARMENT_TEXT = "garment"
SUMMARY = "summary.json"
SCHEMA = features.SCHEMA_FILE
SHARD_GLOB = "{split}-[0-9][0-9][0-9][0-9][0-9]-of-[0-9][0-9][0-9][0-9][0-9]" \
    ".tfrecord"
_CHUNK = 16  # Images per task sent to a worker process.
# Starting a worker process costs about as much as checking a few hundred
# images, so small conversions use fewer workers (or none).
_MIN_IMAGES_PER_WORKER = 256


class ImageError(ManifestError):
    """An image file named by a manifest line is missing or not usable."""


# --------------------------------------------------------------------------
# The tf.Example format.


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
        features.CLASS_TEXT: b([GARMENT_TEXT.encode()] * len(boxes)),
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


# --------------------------------------------------------------------------
# Images (runs in worker processes: PIL and NumPy only).


def _to_rgb(img):
    """Converts any PIL mode to 8-bit RGB; transparency goes on white."""
    if img.mode.startswith("I") or img.mode == "F":
        # 16/32-bit greyscale: PIL's convert() clips at 255 instead of
        # scaling, so scale by hand.
        arr = np.asarray(img, dtype=np.float64)
        if arr.max(initial=0) > 255:
            arr = arr / 257.0
        img = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8))
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, img)
    return img.convert("RGB")


def load_image(entry, *, manifest_path, resize=None, max_pixels=MAX_PIXELS):
    """Reads, checks and (when needed) re-encodes the image of one entry.

    Baseline 8-bit RGB JPEG and PNG files are kept byte for byte. Anything
    else (greyscale, CMYK, palette, alpha, 16-bit, other formats) is
    converted to RGB (transparency composited on white) and stored as JPEG.
    With ``resize``, an image whose shorter side exceeds ``resize`` is
    scaled (aspect ratio kept, bicubic, never enlarged) so that its shorter
    side is ``resize``, stored as JPEG, and its box is rescaled with it.

    Args:
        entry: a ``manifest.Entry``.
        manifest_path: shown in error messages.
        resize: ``None`` or the target shorter side in pixels.
        max_pixels: refuse images with more pixels than this.

    Returns:
        ``(entry, encoded, fmt, height, width, reencoded)`` where ``entry``
        has its box in the coordinates of the returned image.

    Raises:
        ImageError: naming the manifest file and line and what is wrong.
    """
    where = f"{manifest_path}, line {entry.line}"

    def fail(message):
        raise ImageError(f"{where}: {message}")

    try:
        with open(entry.path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        fail(f"image file {entry.path} does not exist")
    except OSError as e:
        fail(f"cannot read image file {entry.path}: {e.strerror or e}")
    if not data:
        # PIL would only say "cannot identify image file <_io.BytesIO ...>".
        fail(f"image file {entry.path} is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            width, height = img.size
            if width * height > max_pixels:
                fail(f"image {entry.path} is {width}x{height} = "
                     f"{width * height} pixels, more than the limit of "
                     f"{max_pixels} (a decompression bomb?)")
            fmt, mode = img.format, img.mode
            img.verify()
            # verify() leaves the image unusable: open it again to decode.
            # (It must come first: reading the EXIF block before it breaks
            # it.)
            img = Image.open(io.BytesIO(data))
            orientation = exif.pil_orientation(img)
            scale = None
            if resize is not None and min(width, height) > resize:
                scale = resize / min(width, height)
                new_size = (max(1, round(width * scale)),
                            max(1, round(height * scale)))
            keep = (scale is None and mode == "RGB" and fmt in ("JPEG", "PNG")
                    and orientation == 1)
            if fmt == "JPEG" and (keep or scale is not None):
                # A JPEG can be decoded at 1/2 .. 1/8 scale in the DCT
                # domain, about twice as fast; truncation is still caught.
                # Kept files only need checking: decode them at 1/8. Resized
                # ones decode at the smallest scale still >= the target.
                img.draft(img.mode, (-(-width // 8), -(-height // 8))
                          if keep else new_size)
            img.load()
    except ImageError:
        raise
    except Image.DecompressionBombError as e:
        fail(f"image {entry.path} refused as a decompression bomb: {e}")
    except Exception as e:  # noqa: BLE001 - PIL raises many kinds on bad data.
        fail(f"image {entry.path} cannot be decoded as an image "
             f"({type(e).__name__}: {e}); expected a JPEG or PNG file")
    for key, given, actual in (("width", entry.width, width),
                               ("height", entry.height, height)):
        if given is not None and given != actual:
            fail(f"image {entry.path} is {width}x{height} (width x height) "
                 f"but the manifest says {key}={given}")
    bbox = entry.bbox
    if bbox is not None and (bbox[2] > width or bbox[3] > height):
        fail(f"bbox {list(bbox)} lies outside the {width}x{height} image "
             f"{entry.path}; expected xmax <= {width} and ymax <= {height}")

    if keep:
        return entry, data, fmt.lower(), height, width, False

    img = _to_rgb(img)
    if orientation != 1:
        # Stored upright, so that no reader has to honour the tag; the box
        # (given in the stored image) turns with the pixels.
        if bbox is not None:
            bbox = exif.transpose_box(bbox, orientation, width, height)
        img = img.transpose(exif.PIL_TRANSPOSE[orientation])
        if orientation >= 5:
            width, height = height, width
        if scale is not None:
            new_size = new_size[::-1]
    if scale is not None:
        new_w, new_h = new_size
        img = img.resize((new_w, new_h), Image.BICUBIC)
        if bbox is not None:
            sx, sy = new_w / width, new_h / height
            bbox = (bbox[0] * sx, bbox[1] * sy, bbox[2] * sx, bbox[3] * sy)
        width, height = new_w, new_h
    out = io.BytesIO()
    img.save(out, "JPEG", quality=JPEG_QUALITY)
    entry = dataclasses.replace(entry, bbox=bbox, width=width, height=height)
    return entry, out.getvalue(), "jpeg", height, width, True


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
                        SCHEMA)
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


def _remove(path):
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def _write_json(path, obj):
    fileio.write_json(path, obj, newline=True)


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
            larger images are scaled down to (see ``load_image``).
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
    # Imported here, not at the top: worker processes import this module
    # and must not load TensorFlow. Not counted in the timing.
    import tensorflow as tf

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
    # The directory is rebuilt: everything of an earlier conversion goes
    # first, so that no failure can leave old and new shards side by side.
    _remove(os.path.join(out_dir, SUMMARY))
    for split in features.SPLITS:
        for old in glob.glob(os.path.join(glob.escape(out_dir),
                                          SHARD_GLOB.format(split=split))):
            _remove(old)
    for stale in glob.glob(os.path.join(glob.escape(out_dir),
                                        ".*.tfrecord.tmp")):
        _remove(stale)

    splits = {}
    bad_images = []  # (line, message)
    written = []  # (tmp path, final path)
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
        with bar:
            for split, index, count, chunks in plan:
                s = splits.setdefault(split, _new_split_summary(schema))
                name = shard_name(split, index, count)
                final = os.path.join(out_dir, name)
                tmp = shards.temporary_path(final)
                written.append((tmp, final))
                with tf.io.TFRecordWriter(tmp) as writer:
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
                            s["records"] += 1
                            s["domains"][entry.domain] += 1
                            s["items"].add(entry.item_id)
                            s["with_bbox"] += entry.bbox is not None
                            s["reencoded"] += re_enc
                            s["formats"][fmt] += 1
                            for attr, code in entry.labels.items():
                                # A multilabel code is missing when all of
                                # its entries are unknown.
                                if code == attributes.MISSING or (
                                        isinstance(code, tuple) and all(
                                            c == attributes.MISSING
                                            for c in code)):
                                    s["missing_labels"][attr] += 1
                s["shards"].append(name)
        if pool is not None:
            pool.close()
            pool.join()
            pool = None

        # Every record of every split is written: publish.
        shards.publish(written)
        written = []
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
        for tmp, _ in written:
            _remove(tmp)

    schema.save(os.path.join(out_dir, SCHEMA))
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
    _write_json(os.path.join(out_dir, SUMMARY), summary)
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
