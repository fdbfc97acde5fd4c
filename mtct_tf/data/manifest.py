"""JSONL manifests (docs/DATA_FORMAT.md): the one writer and the reader.

A manifest is what a dataset looks like on disk before conversion: one JSON
object per image, beside the ``schema.json`` its labels are coded with.
Every dataset's manifest is written by ``ManifestWriter`` (the DeepFashion
and DeepFashion2 converters, the synthetic renderer) and read back by
``read_manifest``, which reports every problem with the manifest path and
line number, so that a user can fix the line; with ``skip_bad`` the bad
lines are collected instead of raised.
"""

import collections
import contextlib
import dataclasses
import json
import os

from mtct_tf import fileio
from mtct_tf.data import features

MANIFEST_FILE = "manifest.jsonl"
# A converter's report beside the manifest (``ManifestWriter.finish``).
REPORT_FILE = "conversion.json"
# The link to a dataset root outside the manifest's directory: manifest
# paths go through it, so they stay inside that directory as the shard
# converter requires.
IMAGES_LINK = "images"
REQUIRED = ("id", "path", "domain", "item_id", "split", "attributes")


class ManifestError(ValueError):
    """A manifest line (or the whole manifest) is not as documented."""


@dataclasses.dataclass
class Entry:
    """One validated manifest line.

    Attributes:
        id: unique image id.
        path: absolute path of the image file.
        domain: ``"shop"`` or ``"street"``.
        item_id: the garment this image shows.
        split: ``"train"``, ``"val"`` or ``"test"``.
        labels: attribute name -> integer code (``MISSING`` = -1), in schema
            order; a tuple of 1 / 0 / -1 for a multilabel attribute.
        bbox: ``(xmin, ymin, xmax, ymax)`` in pixels, or ``None``.
        width, height: image size from the manifest, or ``None``.
        line: 1-based line number in the manifest.
    """

    id: str
    path: str
    domain: str
    item_id: str
    split: str
    labels: dict
    bbox: tuple = None
    width: int = None
    height: int = None
    line: int = 0


def _where(path, line):
    return f"{path}, line {line}"


def parse_line(text, schema, *, root, manifest_path="<manifest>", line=0,
               allow_outside_root=False):
    """Parses and validates one manifest line.

    Args:
        text: the line (str).
        schema: the ``AttributeSchema`` the labels are coded with.
        root: the dataset root that relative image paths start from.
        manifest_path: shown in error messages.
        line: 1-based line number, shown in error messages.
        allow_outside_root: let image paths leave ``root`` (``..``, absolute
            paths). Off by default so that a manifest cannot make the
            converter read arbitrary files.

    Returns:
        An ``Entry``.

    Raises:
        ManifestError: naming the file, the line and what was expected.
    """
    where = _where(manifest_path, line)

    def fail(message):
        raise ManifestError(f"{where}: {message}")

    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        fail(f"not valid JSON ({e.msg} at column {e.colno})")
    if not isinstance(obj, dict):
        fail(f"expected a JSON object, got {type(obj).__name__}")
    missing = [k for k in REQUIRED if k not in obj]
    if missing:
        fail(f"missing field(s) {', '.join(missing)}; every line needs "
             f"{', '.join(REQUIRED)}")
    for key in ("id", "path", "item_id"):
        if not isinstance(obj[key], str) or not obj[key]:
            fail(f"field {key!r} must be a non-empty string, got {obj[key]!r}")
    if "\0" in obj["path"]:
        # No file name has one; open() would fail without naming the line.
        fail(f"field 'path' contains a NUL character: {obj['path']!r}")
    if obj["domain"] not in features.DOMAINS:
        fail(f"field 'domain' must be one of {features.DOMAINS}, got "
             f"{obj['domain']!r}")
    if obj["split"] not in features.SPLITS:
        fail(f"field 'split' must be one of {features.SPLITS}, got "
             f"{obj['split']!r}")
    if not isinstance(obj["attributes"], dict):
        fail("field 'attributes' must be an object of attribute -> value name")
    try:
        labels = schema.encode(obj["attributes"])
    except (KeyError, ValueError) as e:  # ValueError: a bad multilabel value.
        fail(e.args[0])

    rel = obj["path"]
    path = os.path.normpath(os.path.join(root, rel))
    root_abs = os.path.abspath(root)
    if not allow_outside_root:
        inside = os.path.commonpath([root_abs, os.path.abspath(path)])
        if os.path.isabs(rel) or inside != root_abs:
            fail(f"path {rel!r} leaves the dataset root {root_abs}; pass "
                 "allow_outside_root (--allow_outside_root) if this is meant")

    width, height = obj.get("width"), obj.get("height")
    for key, v in (("width", width), ("height", height)):
        if v is not None and (not isinstance(v, int) or v <= 0):
            fail(f"field {key!r} must be a positive integer, got {v!r}")

    bbox = obj.get("bbox")
    if bbox is not None:
        ok = (isinstance(bbox, (list, tuple)) and len(bbox) == 4
              and all(isinstance(v, (int, float)) for v in bbox))
        if not ok:
            fail(f"field 'bbox' must be [xmin, ymin, xmax, ymax] in pixels "
                 f"or null, got {bbox!r}")
        bbox = tuple(float(v) for v in bbox)
        if not (bbox[0] < bbox[2] and bbox[1] < bbox[3]):
            fail(f"bbox {list(bbox)} is empty: need xmin < xmax and "
                 "ymin < ymax")
        if bbox[0] < 0 or bbox[1] < 0:
            fail(f"bbox {list(bbox)} lies outside the image (negative)")
        if width is not None and bbox[2] > width or (
                height is not None and bbox[3] > height):
            fail(f"bbox {list(bbox)} lies outside the {width}x{height} image")

    return Entry(
        id=obj["id"], path=path, domain=obj["domain"],
        item_id=obj["item_id"], split=obj["split"], labels=labels,
        bbox=bbox, width=width, height=height, line=line,
    )


def read_manifest(path, schema, *, root=None, skip_bad=False,
                  allow_outside_root=False):
    """Reads a whole manifest, checking every line and that ids are unique.

    Image files are not opened here (see ``mtct_tf.data.images``).

    Args:
        path: the JSONL manifest.
        schema: the ``AttributeSchema``.
        root: dataset root; defaults to the manifest's directory.
        skip_bad: collect bad lines in ``problems`` instead of raising.
        allow_outside_root: see ``parse_line``.

    Returns:
        ``(entries, problems)``: the valid entries in file order and a list
        of ``"file, line N: message"`` strings for skipped lines.

    Raises:
        ManifestError: on the first bad line (unless ``skip_bad``), or when
            the manifest has no valid line at all.
    """
    root = os.path.dirname(os.path.abspath(path)) if root is None else root
    entries, problems, seen = [], [], {}
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise ManifestError(
                        f"{_where(path, number)}: not UTF-8 (byte "
                        f"{raw[e.start]:#04x} at column {e.start + 1})"
                    ) from None
                if not text.strip():
                    continue
                entry = parse_line(
                    text, schema, root=root, manifest_path=path, line=number,
                    allow_outside_root=allow_outside_root,
                )
                if entry.id in seen:
                    raise ManifestError(
                        f"{_where(path, number)}: duplicate id {entry.id!r} "
                        f"(first on line {seen[entry.id]})"
                    )
                seen[entry.id] = number
                entries.append(entry)
            except ManifestError as e:
                if not skip_bad:
                    raise
                problems.append(str(e))
    if not entries:
        raise ManifestError(
            f"{path}: no valid manifest line"
            + (f" ({len(problems)} bad)" if problems
               else " (the file is empty)")
        )
    return entries, problems


# --------------------------------------------------------------------------
# Writing.


def _image_size(path):
    """``(width, height)`` from the image header, or ``None`` if unreadable."""
    # PIL only here: reading a manifest never opens an image.
    from PIL import Image

    try:
        with Image.open(path) as img:
            return img.size
    except (OSError, ValueError, Image.DecompressionBombError):
        return None


def _clip_box(box, width, height):
    """Clips a pixel box to the image; ``None`` if nothing is left."""
    x0, y0, x1, y1 = box
    x0, x1 = max(0, min(x0, width)), max(0, min(x1, width))
    y0, y1 = max(0, min(y0, height)), max(0, min(y1, height))
    if x0 >= x1 or y0 >= y1:
        return None
    return [x0, y0, x1, y1]


def _link(link, root):
    """Points ``link`` at ``root`` (replacing an earlier link only)."""
    target = os.path.abspath(root)
    if os.path.islink(link):
        if os.readlink(link) == target:
            return
        os.remove(link)
    elif os.path.exists(link):
        raise FileExistsError(
            f"{link} exists and is not a symbolic link; the converter links "
            f"it to the dataset root {target}: choose another --out")
    os.symlink(target, link, target_is_directory=True)


class ManifestWriter:
    """Writes ``manifest.jsonl`` line by line and publishes it atomically.

    Lines go to a hidden temporary file as they are added, and are checked:
    the image is opened (header only) for its size unless the caller knows
    it, its box is clipped to the image, and an unreadable image is recorded
    as a problem (``where`` names the line's source) instead of a line.
    ``finish`` writes ``schema.json`` and then renames the manifest into
    place, so a manifest is never half written and never without its schema;
    a writer that fails calls ``abort``.

    Args:
        out_dir: where ``manifest.jsonl`` and ``schema.json`` go (created).
        schema: the ``AttributeSchema`` the labels are coded with.
        root: where the images are: ``None`` for ``out_dir`` itself, or
            another directory (a dataset as distributed), which ``finish``
            links as ``<out_dir>/images`` and manifest paths go through.
    """

    def __init__(self, out_dir, schema, root=None):
        self.out_dir, self.schema, self.root = out_dir, schema, root
        os.makedirs(out_dir, exist_ok=True)
        self.path = os.path.join(out_dir, MANIFEST_FILE)
        self.tmp = fileio.temporary_path(self.path)
        self.file = open(self.tmp, "w", encoding="utf-8")
        self.counts = collections.Counter()
        self.items = collections.defaultdict(set)
        self.missing_images = []
        self.boxes_clipped = 0
        self.boxes_dropped = 0
        self._last = (None, None)

    def add(self, *, image_id, rel_path, domain, item_id, split, labels,
            box=None, where=None, size=None):
        """Adds the line of one image (or of one garment of an image).

        Args:
            image_id: the line's unique ``id``.
            rel_path: the image's path relative to ``root``.
            domain, item_id, split: the line's fields.
            labels: attribute name -> value name(s), ``None`` = missing.
            box: ``[xmin, ymin, xmax, ymax]`` in pixels, or ``None``.
            where: names the line's source in a problem message.
            size: ``(width, height)`` when known; else read from the file.
        """
        if size is None:
            # Consecutive lines of one image (DeepFashion2 garments) read
            # its header once.
            if self._last[0] != rel_path:
                self._last = (rel_path, _image_size(
                    os.path.join(self.root or self.out_dir, rel_path)))
            size = self._last[1]
        if size is None:
            self.missing_images.append(
                f"{where or image_id}: image "
                f"{os.path.join(self.root or self.out_dir, rel_path)} is "
                "missing or not an image")
            return
        width, height = size
        if box is not None:
            clipped = _clip_box(box, width, height)
            if clipped is None:
                self.boxes_dropped += 1
            elif list(clipped) != list(box):
                self.boxes_clipped += 1
            box = clipped
        path = rel_path if self.root is None else f"{IMAGES_LINK}/{rel_path}"
        line = {"id": image_id, "path": path,
                "domain": domain, "item_id": item_id, "split": split,
                "bbox": box, "width": width, "height": height,
                "attributes": labels}
        self.file.write(json.dumps(line, ensure_ascii=False) + "\n")
        self.counts[(split, domain)] += 1
        self.items[split].add(item_id)

    def abort(self):
        """Closes and removes the temporary manifest; nothing is published."""
        self.file.close()
        with contextlib.suppress(FileNotFoundError):
            os.remove(self.tmp)

    def finish(self, report=None, *, skip_bad=False):
        """Publishes the schema and the manifest (and the link to ``root``).

        Args:
            report: the converter's own fields, written with the writer's
                counts as ``conversion.json`` beside the manifest; ``None``
                writes no report file.
            skip_bad: publish even though some images were missing (they
                are listed in the returned report).

        Returns:
            The report: ``report``'s fields, the manifest path, the schema,
            image counts per split and domain, clipped and dropped boxes and
            the missing images.

        Raises:
            ManifestError: images are missing and not ``skip_bad``, or no
                line was added.
        """
        self.file.close()
        if self.missing_images and not skip_bad:
            self.abort()
            shown = "\n".join(self.missing_images[:10])
            more = len(self.missing_images) - 10
            raise ManifestError(
                f"{len(self.missing_images)} image(s) missing or unreadable"
                f":\n{shown}" + (f"\n... and {more} more" if more > 0 else "")
                + "\n(--skip_bad drops them)")
        if not sum(self.counts.values()):
            self.abort()
            raise ManifestError("no image to write: every image was "
                                "dropped (see the messages above)")
        if self.root is not None:
            _link(os.path.join(self.out_dir, IMAGES_LINK), self.root)
        self.schema.save(os.path.join(self.out_dir, features.SCHEMA_FILE))
        os.replace(self.tmp, self.path)
        splits = {}
        for (split, domain), n in sorted(self.counts.items()):
            s = splits.setdefault(split, {"images": 0, "items": 0})
            s["images"] += n
            s[domain] = n
            s["items"] = len(self.items[split])
        summary = {
            **(report or {}),
            "manifest": os.path.abspath(self.path),
            "schema": self.schema.name,
            "attributes": {a.name: {"kind": a.kind, "values": a.num_values}
                           for a in self.schema},
            "images": sum(self.counts.values()),
            "splits": splits,
            "boxes_clipped": self.boxes_clipped,
            "boxes_dropped": self.boxes_dropped,
            "skipped_missing_images": self.missing_images,
        }
        if report is not None:
            fileio.write_json(os.path.join(self.out_dir, REPORT_FILE),
                              summary, newline=True, ensure_ascii=False)
        return summary
