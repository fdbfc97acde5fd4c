"""Folders of labelled photos -> a manifest and schema (then shards).

The layout of ``keras.utils.image_dataset_from_directory`` and
torchvision's ``ImageFolder``: one folder per class, the folder name the
class. Either with split folders::

    ROOT/train/<class>/*.jpg   ROOT/validation/<class>/...   ROOT/test/...

(``val/`` may stand for ``validation/``), or one set of class folders that
a seeded rule splits (``split_of``: a fingerprint of the item id, so a
photo keeps its split when others are added)::

    ROOT/<class>/*.jpg

Photos in folders below a class folder belong to that class. A CSV file
may add attributes: a key column naming each photo (its path below ROOT,
with or without the extension, or its file name when that is unique), an
optional ``domain`` column (``shop`` / ``street``), an optional ``item``
column (photos of one garment; splits keep an item whole), and any other
column becomes an attribute whose values are the column's distinct
entries (blank = missing label).

``import_image_folder`` writes ``OUT/manifest.jsonl``, ``OUT/schema.json``,
``OUT/conversion.json`` and the link ``OUT/images -> ROOT`` (the manifest's
paths go through it, so ROOT may be read-only and is never copied), ready
for ``convert.convert_manifest``. Problems raise ``ImageFolderError``
naming the folder, file or CSV line and what was expected.
"""

import collections
import csv
import dataclasses
import hashlib
import os

from mtct_tf import attributes
from mtct_tf.data import features, manifest

# Split folder name -> our split.
SPLIT_FOLDERS = {"train": "train", "validation": "val", "val": "val",
                 "test": "test"}
# What the converter reads (it re-encodes all but JPEG and PNG).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp",
                    ".tif", ".tiff")
# CSV columns with a meaning of their own.
DOMAIN_COLUMN = "domain"
ITEM_COLUMNS = ("item", "item_id")
_SPLIT_BUCKETS = 10_000


class ImageFolderError(ValueError):
    """A photo folder or its CSV is not in the documented layout."""


@dataclasses.dataclass
class Photo:
    """One photo found under the root.

    Attributes:
        rel_path: path below the root, with ``/`` separators.
        label: its class (the class folder's name).
        split: ``"train"``, ``"val"`` or ``"test"`` (``None`` until a
            seeded split assigns it).
    """

    rel_path: str
    label: str
    split: str = None

    @property
    def stem(self):
        return os.path.splitext(self.rel_path)[0]


def split_of(key, seed, val_fraction, test_fraction):
    """The split of an item under the seeded rule (stable, per item).

    A SHA-256 fingerprint of ``"<seed>:<key>"`` picks a bucket in [0, 1):
    below ``test_fraction`` is test, the next ``val_fraction`` is val, the
    rest train. The same on every machine and Python version.
    """
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") % _SPLIT_BUCKETS / _SPLIT_BUCKETS
    if u < test_fraction:
        return "test"
    if u < test_fraction + val_fraction:
        return "val"
    return "train"


def _visible(names):
    return sorted(n for n in names if not n.startswith("."))


def _class_photos(folder, rel, ignore_other_files):
    """The photos below one class folder (recursively), sorted."""
    photos, others = [], []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = _visible(dirnames)
        for name in _visible(filenames):
            path = os.path.relpath(os.path.join(dirpath, name), folder)
            target = photos if name.lower().endswith(IMAGE_EXTENSIONS) \
                else others
            target.append(f"{rel}/{path.replace(os.sep, '/')}")
    if others and not ignore_other_files:
        shown = ", ".join(others[:5]) + (
            f" and {len(others) - 5} more" if len(others) > 5 else "")
        raise ImageFolderError(
            f"{folder}: {len(others)} file(s) that are not images by their "
            f"extension ({shown}); expected only {', '.join(IMAGE_EXTENSIONS)}"
            " files in a class folder (ignore_other_files / "
            "--ignore_other_files skips them)")
    return sorted(photos)


def _scan_classes(root, rel, ignore_other_files):
    """``{class: [rel_path, ...]}`` of the class folders in ``root/rel``."""
    base = os.path.join(root, rel) if rel else root
    classes = {}
    for name in _visible(os.listdir(base)):
        folder = os.path.join(base, name)
        if not os.path.isdir(folder):
            continue
        where = f"{rel}/{name}" if rel else name
        photos = _class_photos(folder, where, ignore_other_files)
        if not photos:
            raise ImageFolderError(
                f"class folder {folder} holds no image: expected "
                f"{', '.join(IMAGE_EXTENSIONS)} files (remove the folder or "
                "add its photos)")
        classes[name] = photos
    if not classes:
        raise ImageFolderError(
            f"{base} has no class folder: expected one folder per class "
            "(e.g. ROOT/train/dress/*.jpg or ROOT/dress/*.jpg)")
    return classes


def scan(root, *, val_fraction=0.1, test_fraction=0.1, seed=0,
         ignore_other_files=False):
    """Finds the photos of a class-per-folder tree.

    Args:
        root: the dataset folder (either layout of the module docstring).
        val_fraction, test_fraction: the seeded split's shares (one set of
            class folders only; split folders are taken as they are).
        seed: the seeded split's seed.
        ignore_other_files: skip files without an image extension instead
            of raising.

    Returns:
        ``(photos, layout)``: a list of ``Photo`` (split ``None`` in the
        flat layout: ``import_image_folder`` assigns it by item) and
        ``"split folders"`` or ``"seeded split"``.

    Raises:
        ImageFolderError: no such folder, an empty class folder, a file
            that is not an image, a class of val / test absent from train,
            or both ``val/`` and ``validation/``.
    """
    if not os.path.isdir(root):
        raise ImageFolderError(f"{root} is not a folder")
    folders = [n for n in _visible(os.listdir(root))
               if os.path.isdir(os.path.join(root, n))]
    split_dirs = [n for n in folders if n in SPLIT_FOLDERS]
    if not split_dirs:
        for f in (val_fraction, test_fraction):
            if not 0 <= f < 1:
                raise ImageFolderError(
                    "val_fraction and test_fraction must be in [0, 1). "
                    f"Received: {val_fraction}, {test_fraction}")
        if val_fraction + test_fraction >= 1:
            raise ImageFolderError(
                "val_fraction + test_fraction must be < 1. Received: "
                f"{val_fraction} + {test_fraction}")
        classes = _scan_classes(root, "", ignore_other_files)
        return [Photo(p, label) for label, paths in classes.items()
                for p in paths], "seeded split"
    if "val" in split_dirs and "validation" in split_dirs:
        raise ImageFolderError(
            f"{root} has both val/ and validation/: expected one of them")
    if "train" not in split_dirs:
        raise ImageFolderError(
            f"{root} has split folders {split_dirs} but no train/: expected "
            "ROOT/train/<class>/ (and validation/ or val/, test/)")
    others = sorted(set(folders) - set(split_dirs))
    if others:
        raise ImageFolderError(
            f"{root} mixes split folders {split_dirs} with other folders "
            f"{others}: expected only train/, validation/ (or val/) and "
            "test/ at the top, each holding one folder per class")
    by_split = {SPLIT_FOLDERS[d]: _scan_classes(root, d, ignore_other_files)
                for d in split_dirs}
    known = set(by_split["train"])
    for d in split_dirs:
        split = SPLIT_FOLDERS[d]
        unknown = sorted(set(by_split[split]) - known)
        if unknown:
            raise ImageFolderError(
                f"{os.path.join(root, d)} has class folder(s) {unknown} "
                f"that {os.path.join(root, 'train')} lacks: a model cannot "
                "learn a class it never sees (check the folder names, e.g. "
                "'T-shirt' vs 't-shirt')")
    photos = [Photo(p, label, split) for split, classes in by_split.items()
              for label, paths in classes.items() for p in paths]
    return photos, "split folders"


@dataclasses.dataclass
class CsvLabels:
    """What a labels CSV adds to each photo (``read_csv``).

    Attributes:
        attributes: attribute name -> sorted value names.
        rows: photo rel_path -> ``{"labels": {name: value or None},
            "domain": str or None, "item": str or None}``.
    """

    attributes: dict
    rows: dict


def read_csv(path, photos, *, key="path", folder_attribute="category"):
    """Reads a labels CSV and matches its rows to ``photos``.

    Args:
        path: the CSV file (UTF-8, header row).
        photos: the ``Photo`` list of ``scan``.
        key: the column naming each photo: its path below the root (with
            or without the extension) or its file name / stem when that is
            unique among the photos.
        folder_attribute: the class folders' attribute (no column may
            take its name).

    Returns:
        A ``CsvLabels``. Photos without a row have every CSV label
        missing.

    Raises:
        ImageFolderError: naming the CSV and line: no such key column, a
            row naming no photo or one named twice, a bad domain or column
            name, a column with fewer than two values.
    """
    index = {}
    ambiguous = set()
    for photo in photos:
        name = photo.rel_path.rsplit("/", 1)[-1]
        for k in {photo.rel_path, photo.stem, name,
                  os.path.splitext(name)[0]}:
            if k in index and index[k] is not photo:
                ambiguous.add(k)
            index[k] = photo
    try:
        f = open(path, encoding="utf-8-sig", newline="")
    except OSError as e:
        raise ImageFolderError(f"cannot read {path}: {e.strerror or e}") \
            from None
    with f:
        reader = csv.DictReader(f)
        columns = reader.fieldnames or []
        if key not in columns:
            raise ImageFolderError(
                f"{path}, line 1: no key column {key!r}; columns are "
                f"{columns} (choose one with csv_key / --csv_key)")
        item_col = next((c for c in ITEM_COLUMNS if c in columns), None)
        attribute_cols = [c for c in columns
                          if c not in (key, DOMAIN_COLUMN, item_col)]
        for c in attribute_cols:
            where = f"{path}, line 1"
            if c == folder_attribute:
                raise ImageFolderError(
                    f"{where}: column {c!r} has the class folders' attribute"
                    " name; rename the column or pass another attribute "
                    "name for the folders")
            if not c or not c.replace("_", "").isalnum():
                raise ImageFolderError(
                    f"{where}: column {c!r} cannot name an attribute: "
                    "expected letters, digits and '_'")
        rows, values = {}, collections.defaultdict(set)
        for line, row in enumerate(reader, start=2):
            where = f"{path}, line {line}"
            name = (row.get(key) or "").strip().replace("\\", "/")
            if name in ambiguous:
                raise ImageFolderError(
                    f"{where}: {key}={name!r} names several photos; give "
                    "the path below the root instead")
            photo = index.get(name)
            if photo is None:
                raise ImageFolderError(
                    f"{where}: {key}={name!r} names no photo under the root"
                    " (expected a path below it, e.g. "
                    f"{photos[0].rel_path!r}, or a file name)")
            if photo.rel_path in rows:
                raise ImageFolderError(
                    f"{where}: {photo.rel_path} has a row already")
            domain = (row.get(DOMAIN_COLUMN) or "").strip() or None
            if domain is not None and domain not in features.DOMAINS:
                raise ImageFolderError(
                    f"{where}: domain {domain!r}; expected one of "
                    f"{features.DOMAINS} or blank")
            labels = {}
            for c in attribute_cols:
                value = (row.get(c) or "").strip()
                labels[c] = value or None
                if value:
                    values[c].add(value)
            item = (row.get(item_col) or "").strip() if item_col else ""
            rows[photo.rel_path] = {"labels": labels, "domain": domain,
                                    "item": item or None}
    few = [c for c in attribute_cols if len(values[c]) < 2]
    if few:
        raise ImageFolderError(
            f"{path}: column(s) {few} have fewer than two distinct values; "
            "an attribute needs two to choose between")
    return CsvLabels({c: sorted(values[c]) for c in attribute_cols}, rows)


def import_image_folder(root, out_dir, *, attribute="category", csv_path=None,
                        csv_key="path", domain="shop", val_fraction=0.1,
                        test_fraction=0.1, seed=0, ignore_other_files=False,
                        skip_bad=False, schema_name=None):
    """Writes the manifest, schema and report of a photo folder.

    Args:
        root: the dataset folder (module docstring).
        out_dir: where ``manifest.jsonl``, ``schema.json``,
            ``conversion.json`` and the ``images`` link go.
        attribute: the attribute the class folders label.
        csv_path: optional labels CSV (``read_csv``).
        csv_key: the CSV's key column.
        domain: the domain of photos the CSV does not place.
        val_fraction, test_fraction, seed: the seeded split (one set of
            class folders only).
        ignore_other_files: skip files that are not images by extension.
        skip_bad: drop unreadable images (listed in the report) instead of
            raising.
        schema_name: the schema's name (default: the root folder's name).

    Returns:
        The report dict (also ``OUT/conversion.json``).

    Raises:
        ImageFolderError: see ``scan`` and ``read_csv``; also an item found
            in several split folders.
        manifest.ManifestError: an unreadable image (not ``skip_bad``).
    """
    if domain not in features.DOMAINS:
        raise ImageFolderError(f"domain must be one of {features.DOMAINS}. "
                               f"Received: domain={domain!r}")
    root = os.path.abspath(root)
    photos, layout = scan(root, val_fraction=val_fraction,
                          test_fraction=test_fraction, seed=seed,
                          ignore_other_files=ignore_other_files)
    extra = (read_csv(csv_path, photos, key=csv_key,
                      folder_attribute=attribute)
             if csv_path else CsvLabels({}, {}))
    try:
        schema = attributes.AttributeSchema(
            schema_name or os.path.basename(root.rstrip(os.sep)) or "photos",
            [attributes.Attribute(attribute,
                                  sorted({p.label for p in photos}))]
            + [attributes.Attribute(name, values)
               for name, values in extra.attributes.items()])
    except ValueError as e:
        raise ImageFolderError(f"{root}: {e}") from None

    item_splits = collections.defaultdict(set)
    writer = manifest.ManifestWriter(out_dir, schema, root=root)
    try:
        for photo in photos:
            row = extra.rows.get(photo.rel_path, {})
            item = row.get("item") or photo.stem
            photo.split = photo.split or split_of(
                item, seed, val_fraction, test_fraction)
            item_splits[item].add(photo.split)
            writer.add(
                image_id=photo.stem, rel_path=photo.rel_path,
                domain=row.get("domain") or domain, item_id=item,
                split=photo.split,
                labels={attribute: photo.label, **row.get("labels", {})},
                box=None, where=os.path.join(root, photo.rel_path))
        spread = sorted(i for i, s in item_splits.items() if len(s) > 1)
        if spread:
            raise ImageFolderError(
                f"{csv_path}: item(s) {spread[:5]} have photos in several split "
                "folders; a garment's photos must share a split")
    except BaseException:
        writer.abort()
        raise
    classes = collections.Counter((p.split, p.label) for p in photos)
    return writer.finish({
        "root": root, "layout": layout, "class_attribute": attribute,
        "csv": os.path.abspath(csv_path) if csv_path else None,
        "seed": seed,
        "val_fraction": val_fraction, "test_fraction": test_fraction,
        "photos_per_class": {f"{s}/{c}": n
                             for (s, c), n in sorted(classes.items())},
    }, skip_bad=skip_bad)
