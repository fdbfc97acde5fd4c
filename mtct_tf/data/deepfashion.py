"""DeepFashion annotation files -> our manifest (docs/DATASETS.md).

Two DeepFashion benchmarks (Liu et al., CVPR 2016) are read from their
annotation files exactly as distributed, and written as a manifest
(docs/DATA_FORMAT.md) plus ``schema.json``, which the standard converter
(``datasets/convert_manifest.py``) turns into TFRecords:

* **Consumer-to-shop Clothes Retrieval** (``consumer2shop``): shop (source
  type 1) and consumer (source type 2, our ``street``) photos with boxes;
  items and their train / val / test split from the pairs of
  ``Eval/list_eval_partition.txt``; 303 item-level binary attributes in
  groups (the attribute types of ``list_attr_cloth.txt``), each group a
  ``multilabel`` attribute; plus a ``category`` softmax attribute read from
  the image path (``img/<GROUP>/<Category>/id_.../...jpg``).
* **Category and Attribute Prediction** (``attributes``): 50 categories
  (softmax ``category``) and 1,000 binary attributes in DeepFashion's five
  types (``texture``, ``fabric``, ``shape``, ``part``, ``style``: one
  multilabel attribute each), boxes and the image-level split. The benchmark
  has no domain labels: every image gets one domain (``shop`` by default)
  and is its own item.

Every DeepFashion list file is: line 1 the number of entries, line 2 the
column names, then one entry per line, fields separated by runs of spaces
(names in ``list_attr_cloth.txt`` contain spaces: the type is the last
field). Attribute values are ``1`` positive, ``-1`` negative and ``0``
unknown (some releases); we re-code them to our ``1 / 0 / -1``
(``attributes.MISSING`` = unknown).

Image names (``img/...jpg``) are looked up under ``ROOT/Img/`` (the
distributed ``Img/img.zip`` unzipped in place) or, failing that, ``ROOT/``.
The output directory gets a symbolic link ``images`` -> ``ROOT`` so that
manifest paths (``images/Img/img/...``) stay inside the manifest's root, as
the converter requires.

Errors name the file and line and say what was expected
(``AnnotationError``); missing files are all named at once
(``MissingFilesError``). Images listed in one file but absent from another,
or missing on disk, are errors too unless ``skip_bad``, which drops them and
lists them in the report.

Both benchmarks stay in one module because they are one file format family:
its list-file reader, value codes, image lookup and manifest writer serve
both (``data/deepfashion2.py`` reuses the writer and the file check).
"""

import collections
import json
import os
import re

from PIL import Image

from mtct_tf import attributes, fileio
from mtct_tf.data import features

CONSUMER2SHOP = "consumer2shop"
ATTRIBUTES = "attributes"
BENCHMARKS = (CONSUMER2SHOP, ATTRIBUTES)

# Files each benchmark needs, relative to its root (a trailing "/" is a
# directory). The image directory may also be ROOT/img/ (see IMAGE_DIRS).
EXPECTED_FILES = {
    CONSUMER2SHOP: (
        "Anno/list_bbox_consumer2shop.txt",
        "Anno/list_attr_cloth.txt",
        "Anno/list_attr_items.txt",
        "Anno/list_item_consumer2shop.txt",
        "Eval/list_eval_partition.txt",
        "Img/img/",
    ),
    ATTRIBUTES: (
        "Anno/list_bbox.txt",
        "Anno/list_attr_cloth.txt",
        "Anno/list_attr_img.txt",
        "Anno/list_category_cloth.txt",
        "Anno/list_category_img.txt",
        "Eval/list_eval_partition.txt",
        "Img/img/",
    ),
}
# Read when present: names the Consumer-to-shop attribute groups.
OPTIONAL_FILES = {CONSUMER2SHOP: ("Anno/list_attr_type.txt",), ATTRIBUTES: ()}
# Where the "img/..." names of the annotation files may start from.
IMAGE_DIRS = ("Img", "")
# DeepFashion's attribute types of the Category and Attribute benchmark.
ATTRIBUTE_TYPES = {1: "texture", 2: "fabric", 3: "shape", 4: "part",
                   5: "style"}
SOURCE_TYPES = {"1": "shop", "2": "street"}  # 2 = consumer photo.
SPLITS = {"train": "train", "val": "val", "test": "test"}
# DeepFashion file value -> our code (attributes.MISSING = unknown).
VALUE_CODES = {"1": 1, "-1": 0, "0": attributes.MISSING}
MANIFEST = "manifest.jsonl"
REPORT = "conversion.json"
LINK = "images"
_ITEM_DIR = re.compile(r"^id_\d+$")


class AnnotationError(ValueError):
    """An annotation file is not in the documented format."""


class MissingFilesError(FileNotFoundError):
    """Files a converter needs are not under the dataset root."""


def _fail(path, line, message):
    where = f"{path}, line {line}" if line else path
    raise AnnotationError(f"{where}: {message}")


# --------------------------------------------------------------------------
# Files.


def _image_base(root):
    """The directory that DeepFashion's ``img/...`` names start from."""
    for sub in IMAGE_DIRS:
        if os.path.isdir(os.path.join(root, sub, "img")):
            return sub
    return None


def check_files(root, expected, *, what="DeepFashion"):
    """Raises ``MissingFilesError`` naming every expected file not found.

    Args:
        root: the dataset root.
        expected: relative paths; a trailing ``/`` asks for a directory, and
            ``Img/img/`` is also satisfied by ``img/`` directly in ``root``.
        what: the dataset's name, for the message.
    """
    missing = []
    for rel in expected:
        if rel == "Img/img/":
            ok = _image_base(root) is not None
        elif rel.endswith("/"):
            ok = os.path.isdir(os.path.join(root, rel))
        else:
            ok = os.path.isfile(os.path.join(root, rel))
        if not ok:
            missing.append(rel)
    if missing:
        listing = "\n".join(f"  {rel}" for rel in missing)
        raise MissingFilesError(
            f"{what}: {len(missing)} of the {len(expected)} expected files "
            f"are missing under {os.path.abspath(root)}:\n{listing}\n"
            "Download them by hand (research licence) and place them as "
            "listed; docs/DATASETS.md gives the layout."
        )


def read_text(path):
    """The lines of a text file: UTF-8, else GB18030 (Chinese names)."""
    with open(path, "rb") as f:
        data = f.read()
    for encoding in ("utf-8-sig", "gb18030"):
        try:
            return data.decode(encoding).splitlines()
        except UnicodeDecodeError:
            continue
    _fail(path, 0, "neither UTF-8 nor GB18030 text")


def iter_list(path, first_column, *, tokens=None, min_tokens=None,
              header_optional=False, lines=None):
    """Yields ``(line number, fields)`` of a DeepFashion list file.

    Checks line 1 (the entry count), line 2 (column names starting with
    ``first_column``), the field count of every entry and, at the end, that
    the file holds as many entries as line 1 declares (a truncated download
    is caught there).

    Args:
        path: the file.
        first_column: the expected first column name (line 2), or ``None``
            to accept any column names line.
        tokens: exact number of fields per entry, or ``None``.
        min_tokens: minimum number of fields, or ``None``.
        header_optional: line 2 may be an entry already (some files have no
            column names line).
        lines: the decoded lines, if already read; default: the file is
            streamed as UTF-8.

    Raises:
        AnnotationError: naming the file, the line and what was expected.
    """
    source = lines if lines is not None else _stream(path)
    declared, count, line_no = None, 0, 0
    for line_no, text in enumerate(source, start=1):
        fields = text.split()
        if line_no == 1:
            if len(fields) != 1 or not fields[0].isdigit():
                _fail(path, 1, f"expected the number of entries (one "
                      f"integer), got {text.strip()[:60]!r}")
            declared = int(fields[0])
            continue
        if line_no == 2 and (first_column is None
                             or fields[:1] == [first_column]):
            continue
        if line_no == 2 and not header_optional:
            _fail(path, 2, f"expected the column names line starting with "
                  f"{first_column!r}, got {text.strip()[:60]!r}")
        if not fields:
            continue  # Blank (e.g. trailing) lines.
        if tokens is not None and len(fields) != tokens:
            _fail(path, line_no, f"expected {tokens} fields "
                  f"({_columns_hint(first_column, tokens)}), got "
                  f"{len(fields)}")
        if min_tokens is not None and len(fields) < min_tokens:
            _fail(path, line_no, f"expected at least {min_tokens} fields, "
                  f"got {len(fields)}")
        count += 1
        yield line_no, fields
    if declared is None:
        _fail(path, 1, "the file is empty; expected the number of entries")
    if count != declared:
        _fail(path, 0, f"line 1 declares {declared} entries but the file "
              f"has {count} (truncated or edited file?)")


def _stream(path):
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                yield raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as e:
                _fail(path, number, f"not UTF-8 text (byte "
                      f"{raw[e.start]:#04x} at column {e.start + 1})")


def _columns_hint(first_column, tokens):
    return f"{first_column or 'a name'} and {tokens - 1} more"


def _int(path, line, text, what):
    try:
        return int(text)
    except ValueError:
        _fail(path, line, f"{what} must be an integer, got {text!r}")


def _box(path, line, fields):
    """Four pixel coordinates ``x_1 y_1 x_2 y_2``."""
    return tuple(_int(path, line, v, name)
                 for v, name in zip(fields, ("x_1", "y_1", "x_2", "y_2")))


def _codes(path, line, fields, expected):
    """DeepFashion's 1 / -1 / 0 values -> our 1 / 0 / -1 codes."""
    if len(fields) != expected:
        _fail(path, line, f"expected {expected} attribute values (1, -1 or "
              f"0), got {len(fields)}")
    try:
        return tuple(VALUE_CODES[v] for v in fields)
    except KeyError:
        bad = next(v for v in fields if v not in VALUE_CODES)
        _fail(path, line, f"attribute values must be 1, -1 or 0 (unknown), "
              f"got {bad!r}")


def unique_names(names):
    """Disambiguates repeated names with `` (2)``, `` (3)``, ... suffixes."""
    seen, out = collections.Counter(), []
    for name in names:
        seen[name] += 1
        out.append(name if seen[name] == 1 else f"{name} ({seen[name]})")
    return out


def identifier(text, fallback):
    """A lower-case attribute identifier made of ``text`` (or ``fallback``)."""
    name = re.sub(r"[^0-9a-z]+", "_", text.lower()).strip("_")
    return name or fallback


def _english(fields):
    """The English part of ``<Chinese name> [(...)] <English name>``."""
    rest = list(fields)
    chinese = bool(rest) and not rest[0].isascii()
    while rest and not rest[0].isascii():
        rest.pop(0)
    if chinese and rest and rest[0].startswith("("):
        while rest and not rest[0].endswith(")"):
            rest.pop(0)
        rest = rest[1:]
    return " ".join(rest) or " ".join(fields)


# --------------------------------------------------------------------------
# Images and the manifest.


def image_size(path):
    """``(width, height)`` from the image header, or ``None`` if unreadable."""
    try:
        with Image.open(path) as img:
            return img.size
    except (OSError, ValueError, Image.DecompressionBombError):
        return None


def clip_box(box, width, height):
    """Clips a pixel box to the image; ``None`` if nothing is left."""
    x0, y0, x1, y1 = box
    x0, x1 = max(0, min(x0, width)), max(0, min(x1, width))
    y0, y1 = max(0, min(y0, height)), max(0, min(y1, height))
    if x0 >= x1 or y0 >= y1:
        return None
    return [x0, y0, x1, y1]


def multilabel_value(names, codes):
    """Our manifest value of one multilabel group (see ``attributes``)."""
    if all(c == attributes.MISSING for c in codes):
        return None
    positive = [n for n, c in zip(names, codes) if c == 1]
    unknown = [n for n, c in zip(names, codes) if c == attributes.MISSING]
    return {"positive": positive, "unknown": unknown} if unknown else positive


class ManifestWriter:
    """Writes ``manifest.jsonl`` (atomically), ``schema.json``, the report.

    Lines are checked as they are added: every image is opened (header
    only) for its size, its box is clipped to it, and an unreadable image is
    recorded as a problem (``where`` names the annotation line).
    """

    def __init__(self, out_dir, root, schema):
        self.out_dir, self.root, self.schema = out_dir, root, schema
        os.makedirs(out_dir, exist_ok=True)
        self.path = os.path.join(out_dir, MANIFEST)
        self.tmp = os.path.join(out_dir, f".{MANIFEST}.tmp")
        self.file = open(self.tmp, "w", encoding="utf-8")
        self.counts = collections.Counter()
        self.items = collections.defaultdict(set)
        self.missing_images = []
        self.boxes_clipped = 0
        self.boxes_dropped = 0
        self._last = (None, None)

    def add(self, *, image_id, rel_path, domain, item_id, split, labels,
            box, where):
        # Consecutive lines of one image (DeepFashion2 garments) read its
        # header once.
        if self._last[0] != rel_path:
            self._last = (rel_path,
                          image_size(os.path.join(self.root, rel_path)))
        size = self._last[1]
        if size is None:
            self.missing_images.append(
                f"{where}: image {os.path.join(self.root, rel_path)} is "
                "missing or not an image")
            return
        width, height = size
        if box is not None:
            clipped = clip_box(box, width, height)
            if clipped is None:
                self.boxes_dropped += 1
            elif list(clipped) != list(box):
                self.boxes_clipped += 1
            box = clipped
        line = {"id": image_id, "path": f"{LINK}/{rel_path}",
                "domain": domain, "item_id": item_id, "split": split,
                "bbox": box, "width": width, "height": height,
                "attributes": labels}
        self.file.write(json.dumps(line, ensure_ascii=False) + "\n")
        self.counts[(split, domain)] += 1
        self.items[split].add(item_id)

    def abort(self):
        self.file.close()
        if os.path.exists(self.tmp):
            os.remove(self.tmp)

    def finish(self, report, *, skip_bad):
        """Publishes the manifest, the schema, the link and the report.

        Raises:
            AnnotationError: images are missing and not ``skip_bad``.
        """
        self.file.close()
        if self.missing_images and not skip_bad:
            self.abort()
            shown = "\n".join(self.missing_images[:10])
            more = len(self.missing_images) - 10
            raise AnnotationError(
                f"{len(self.missing_images)} image(s) missing or unreadable"
                f":\n{shown}" + (f"\n... and {more} more" if more > 0 else "")
                + "\n(--skip_bad drops them)")
        if not sum(self.counts.values()):
            self.abort()
            raise AnnotationError("no image to write: every image was "
                                  "dropped (see the messages above)")
        _link(os.path.join(self.out_dir, LINK), self.root)
        self.schema.save(os.path.join(self.out_dir, features.SCHEMA_FILE))
        os.replace(self.tmp, self.path)
        splits = {}
        for (split, domain), n in sorted(self.counts.items()):
            s = splits.setdefault(split, {"images": 0, "items": 0})
            s["images"] += n
            s[domain] = n
            s["items"] = len(self.items[split])
        report = {
            **report,
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
        fileio.write_json(os.path.join(self.out_dir, REPORT), report,
                          newline=True, ensure_ascii=False)
        return report


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


def _drop_or_fail(problems, skip_bad, what):
    if problems and not skip_bad:
        shown = "\n".join(problems[:10])
        more = len(problems) - 10
        raise AnnotationError(
            f"{len(problems)} {what}:\n{shown}"
            + (f"\n... and {more} more" if more > 0 else "")
            + "\n(--skip_bad drops them)")


# --------------------------------------------------------------------------
# Consumer-to-shop.


def read_attribute_names(path, *, types=None):
    """``list_attr_cloth.txt`` -> ``[(name, type), ...]`` in file order.

    Each entry is ``<name> <type>`` (Category and Attribute benchmark) or
    ``<Chinese name> <English name> <type>`` (Consumer-to-shop); names may
    contain spaces and the type is the last field. The English name is kept.

    Args:
        path: the file.
        types: allowed type numbers, or ``None`` for any positive integer.
    """
    out = []
    # Any column names line: the releases word it differently; the entry
    # count of line 1 still catches a file without one.
    for line, fields in iter_list(path, None, min_tokens=2,
                                  lines=read_text(path)):
        kind = _int(path, line, fields[-1], "the attribute type (last field)")
        if (types is not None and kind not in types) or kind < 0:
            allowed = sorted(types) if types is not None else "an integer >= 0"
            _fail(path, line, f"attribute type must be one of {allowed}, got "
                  f"{kind}")
        out.append((_english(fields[:-1]), kind))
    return out


def read_type_names(path):
    """``list_attr_type.txt`` -> ``{type number: identifier}`` (optional)."""
    names = {}
    lines = read_text(path)
    for k, (line, fields) in enumerate(
            iter_list(path, None, min_tokens=1, lines=lines), start=1):
        number = k
        if len(fields) > 1 and fields[-1].lstrip("-").isdigit():
            number, fields = int(fields[-1]), fields[:-1]
        names[number] = identifier(_english(fields), f"type_{number}")
    return names


def group_attributes(names_types, type_names, reserved=("category",)):
    """Groups binary attributes by type into multilabel ``Attribute``s.

    Returns:
        ``[(Attribute, [indices into the file's attribute list]), ...]`` in
        type order, one group per type; a type of a single attribute is a
        head of one sigmoid.
    """
    by_type = collections.defaultdict(list)
    for index, (_, kind) in enumerate(names_types):
        by_type[kind].append(index)
    taken = set(reserved) | {"embedding"}
    out = []
    for kind in sorted(by_type):
        indices = by_type[kind]
        base = name = type_names.get(kind, f"type_{kind}")
        k = 2
        while name in taken:
            name, k = f"{base}_{k}", k + 1
        taken.add(name)
        values = unique_names([names_types[i][0] for i in indices])
        out.append((attributes.Attribute(name, tuple(values),
                                         attributes.MULTILABEL), indices))
    return out


def _path_category(image_name):
    """``img/<GROUP>/<Category>/id_.../x.jpg`` -> ``<Category>`` (or None)."""
    parts = image_name.split("/")
    if len(parts) == 5 and parts[0] == "img" and _ITEM_DIR.match(parts[3]):
        return parts[2]
    return None


def _path_item(image_name):
    return next((p for p in image_name.split("/") if _ITEM_DIR.match(p)),
                None)


def convert_consumer2shop(root, out_dir, *, skip_bad=False):
    """Writes the manifest of DeepFashion Consumer-to-shop (module docstring).

    Items and splits come from ``Eval/list_eval_partition.txt``; an image of
    ``list_bbox_consumer2shop.txt`` in no pair takes its item from its path
    (``id_XXXXXXXX``) and that item's split, or is left out (counted in the
    report) when the item is in no pair. Attributes are per item
    (``list_attr_items.txt``) and given to every image of the item; items
    without a row have unknown attributes.

    Args:
        root: the benchmark root (``Anno/``, ``Eval/``, ``Img/``).
        out_dir: receives ``manifest.jsonl``, ``schema.json``,
            ``conversion.json`` and the ``images`` link.
        skip_bad: drop images that are missing on disk or whose pair names
            an image without a box line, instead of failing.

    Returns:
        The report (also ``out_dir/conversion.json``).

    Raises:
        MissingFilesError: naming every missing file.
        AnnotationError: a malformed line (file, line, what was expected) or
            inconsistent files.
    """
    check_files(root, EXPECTED_FILES[CONSUMER2SHOP],
                what="DeepFashion Consumer-to-shop")
    anno = os.path.join(root, "Anno")
    names_types = read_attribute_names(
        os.path.join(anno, "list_attr_cloth.txt"))
    type_path = os.path.join(anno, "list_attr_type.txt")
    type_names = read_type_names(type_path) if os.path.isfile(type_path) \
        else {}
    groups = group_attributes(names_types, type_names)

    path = box_path = os.path.join(anno, "list_bbox_consumer2shop.txt")
    boxes = {}
    for line, f in iter_list(path, "image_name", tokens=7):
        source = SOURCE_TYPES.get(f[2])
        if source is None:
            _fail(path, line, f"source_type must be 1 (shop) or 2 "
                  f"(consumer), got {f[2]!r}")
        _int(path, line, f[1], "clothes_type")
        box = _box(path, line, f[3:7])
        boxes[f[0]] = (source, box if box[0] < box[2] and box[1] < box[3]
                       else None, line)

    path = os.path.join(anno, "list_item_consumer2shop.txt")
    known_items = {f[0] for _, f in iter_list(path, "item_id", tokens=1,
                                              header_optional=True)}

    path = os.path.join(anno, "list_attr_items.txt")
    item_codes = {}
    for line, f in iter_list(path, "item_id", min_tokens=1):
        item_codes[f[0]] = _codes(path, line, f[1:], len(names_types))

    path = os.path.join(root, "Eval", "list_eval_partition.txt")
    assigned, item_split, pairs = {}, {}, collections.Counter()
    problems = []
    for line, f in iter_list(path, "image_pair_name_1", tokens=4):
        split = SPLITS.get(f[3])
        if split is None:
            _fail(path, line, "evaluation_status must be train, val or "
                  f"test, got {f[3]!r}")
        item = f[2]
        if item_split.setdefault(item, split) != split:
            _fail(path, line, f"item {item} is in split {split} here but in "
                  f"{item_split[item]} earlier; items must not cross splits")
        pairs[split] += 1
        for name in f[:2]:
            if name not in boxes:
                problems.append(f"{path}, line {line}: image {name} has no "
                                "line in list_bbox_consumer2shop.txt")
                continue
            if assigned.setdefault(name, (item, split)) != (item, split):
                _fail(path, line, f"image {name} belongs to item {item} "
                      f"here but to {assigned[name][0]} earlier")
    _drop_or_fail(problems, skip_bad, "paired image(s) without a box line")

    categories = sorted({c for c in map(_path_category, boxes) if c})
    schema_attrs = [a for a, _ in groups]
    if len(categories) >= 2:
        schema_attrs.insert(0, attributes.Attribute("category",
                                                    tuple(categories)))
    schema = attributes.AttributeSchema("deepfashion_c2s", schema_attrs)

    image_base = _image_base(root)
    writer = ManifestWriter(out_dir, root, schema)
    unpaired = 0
    try:
        for name, (domain, box, line) in boxes.items():
            if name in assigned:
                item, split = assigned[name]
            else:
                item = _path_item(name)
                split = item_split.get(item)
                if split is None:
                    unpaired += 1
                    continue
            codes = item_codes.get(item)
            labels = {}
            if "category" in schema:
                labels["category"] = _path_category(name)
            for attribute, indices in groups:
                labels[attribute.name] = None if codes is None else \
                    multilabel_value(attribute.values,
                                     [codes[i] for i in indices])
            writer.add(image_id=name,
                       rel_path=os.path.join(image_base, name),
                       domain=domain, item_id=item, split=split,
                       labels=labels, box=list(box) if box else None,
                       where=f"{box_path}, line {line}")
    except BaseException:
        writer.abort()
        raise
    used_items = set().union(*writer.items.values())
    report = {
        "benchmark": CONSUMER2SHOP,
        "root": os.path.abspath(root),
        "pairs": dict(pairs),
        "unpaired_images_left_out": unpaired,
        "items_without_attributes": len(used_items - set(item_codes)),
        "items_not_in_item_list": len(used_items - known_items),
        "skipped_pairs_without_box": problems,
        "attribute_groups": {a.name: [names_types[i][0] for i in idx]
                             for a, idx in groups},
    }
    return writer.finish(report, skip_bad=skip_bad)


# --------------------------------------------------------------------------
# Category and Attribute Prediction.


def convert_attributes(root, out_dir, *, domain="shop", skip_bad=False,
                       anno_dir="Anno"):
    """Writes the manifest of DeepFashion Category and Attribute Prediction.

    Every image is its own item (the benchmark has no item identity) in
    ``domain``; ``category`` is a softmax attribute over the 50 categories
    of ``list_category_cloth.txt`` (in file order; those without images are
    kept so that codes equal DeepFashion's ids minus 1), and each of the five
    attribute types a multilabel attribute.

    Args:
        root: the benchmark root (``Anno/``, ``Eval/``, ``Img/``).
        out_dir: as for ``convert_consumer2shop``.
        domain: ``"shop"`` or ``"street"`` for every image.
        skip_bad: drop images missing from a file or on disk.
        anno_dir: the annotation folder (``Anno``; the 2020 re-release calls
            the same files ``Anno_coarse``).

    Returns:
        The report (also ``out_dir/conversion.json``).

    Raises:
        MissingFilesError, AnnotationError: as for ``convert_consumer2shop``.
    """
    if domain not in ("shop", "street"):
        raise ValueError(f"domain must be 'shop' or 'street'. Received: "
                         f"domain={domain!r}")
    expected = tuple(p.replace("Anno/", f"{anno_dir}/", 1)
                     for p in EXPECTED_FILES[ATTRIBUTES])
    check_files(root, expected,
                what="DeepFashion Category and Attribute Prediction")
    anno = os.path.join(root, anno_dir)
    names_types = read_attribute_names(
        os.path.join(anno, "list_attr_cloth.txt"),
        types=set(ATTRIBUTE_TYPES))
    groups = group_attributes(names_types, ATTRIBUTE_TYPES)

    path = os.path.join(anno, "list_category_cloth.txt")
    categories = []
    for line, f in iter_list(path, "category_name", min_tokens=2,
                             lines=read_text(path)):
        _int(path, line, f[-1], "category_type")
        categories.append(" ".join(f[:-1]))
    categories = unique_names(categories)

    path = os.path.join(anno, "list_category_img.txt")
    image_category = {}
    for line, f in iter_list(path, "image_name", tokens=2):
        k = _int(path, line, f[1], "category_label")
        if not 1 <= k <= len(categories):
            _fail(path, line, f"category_label must be in [1, "
                  f"{len(categories)}] (list_category_cloth.txt), got {k}")
        image_category[f[0]] = categories[k - 1]

    path = os.path.join(anno, "list_bbox.txt")
    boxes = {}
    for line, f in iter_list(path, "image_name", tokens=5):
        box = _box(path, line, f[1:5])
        boxes[f[0]] = box if box[0] < box[2] and box[1] < box[3] else None

    path = os.path.join(root, "Eval", "list_eval_partition.txt")
    image_split = {}
    for line, f in iter_list(path, "image_name", tokens=2):
        split = SPLITS.get(f[1])
        if split is None:
            _fail(path, line, "evaluation_status must be train, val or "
                  f"test, got {f[1]!r}")
        image_split[f[0]] = split

    schema = attributes.AttributeSchema(
        "deepfashion_attributes",
        [attributes.Attribute("category", tuple(categories))]
        + [a for a, _ in groups])
    image_base = _image_base(root)
    writer = ManifestWriter(out_dir, root, schema)
    problems, seen = [], set()
    path = os.path.join(anno, "list_attr_img.txt")
    others = (("list_eval_partition.txt", image_split),
              ("list_bbox.txt", boxes),
              ("list_category_img.txt", image_category))
    try:
        for line, f in iter_list(path, "image_name", min_tokens=1):
            name = f[0]
            codes = _codes(path, line, f[1:], len(names_types))
            seen.add(name)
            absent = [file for file, table in others if name not in table]
            if absent:
                problems.append(f"{path}, line {line}: image {name} has no "
                                f"line in {', '.join(absent)}")
                continue
            labels = {"category": image_category[name]}
            for attribute, indices in groups:
                labels[attribute.name] = multilabel_value(
                    attribute.values, [codes[i] for i in indices])
            box = boxes[name]
            writer.add(image_id=name,
                       rel_path=os.path.join(image_base, name),
                       domain=domain, item_id=name, split=image_split[name],
                       labels=labels, box=list(box) if box else None,
                       where=f"{path}, line {line}")
        problems += [f"{os.path.join(root, 'Eval', 'list_eval_partition.txt')}"
                     f": image {name} has no line in list_attr_img.txt"
                     for name in image_split if name not in seen]
        _drop_or_fail(problems, skip_bad,
                      "image(s) not listed in every annotation file")
    except BaseException:
        writer.abort()
        raise
    report = {
        "benchmark": ATTRIBUTES,
        "root": os.path.abspath(root),
        "domain": domain,
        "skipped_inconsistent_images": problems,
        "attribute_groups": {a.name: a.num_values for a, _ in groups},
    }
    return writer.finish(report, skip_bad=skip_bad)


def convert(benchmark, root, out_dir, **kwargs):
    """Dispatches to ``convert_consumer2shop`` / ``convert_attributes``."""
    if benchmark == CONSUMER2SHOP:
        return convert_consumer2shop(root, out_dir, **kwargs)
    if benchmark == ATTRIBUTES:
        return convert_attributes(root, out_dir, **kwargs)
    raise ValueError(f"benchmark must be one of {BENCHMARKS}. Received: "
                     f"benchmark={benchmark!r}")
