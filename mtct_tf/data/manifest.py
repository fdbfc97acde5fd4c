"""Reading and validating JSONL manifests (docs/DATA_FORMAT.md).

A manifest is what a dataset looks like on disk before conversion: one JSON
object per image. Every problem is reported with the manifest path and line
number, so that a user can fix the line; with ``skip_bad`` the bad lines are
collected instead of raised.
"""

import dataclasses
import json
import os

from mtct_tf.data import features

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
            + (f" ({len(problems)} bad)" if problems else " (the file is empty)")
        )
    return entries, problems
