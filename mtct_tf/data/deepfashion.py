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

The file format both share (the list-file reader, value codes, attribute
names and groups, the check for files placed by hand) is
``deepfashion_files``; the manifest is written by ``manifest.ManifestWriter``.

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
"""

import collections
import os
import re

from mtct_tf import attributes
# ``AnnotationError`` and ``MissingFilesError`` are imported for the callers
# that know them as ``deepfashion.AnnotationError`` and so on.
from mtct_tf.data.deepfashion_files import (  # noqa: F401
    AnnotationError, MissingFilesError, check_files, drop_or_fail, fail,
    group_attributes, image_base, iter_list, multilabel_value, parse_box,
    parse_codes, parse_int, read_attribute_names, read_text,
    read_type_names, unique_names)
from mtct_tf.data.manifest import ManifestWriter

CONSUMER2SHOP = "consumer2shop"
ATTRIBUTES = "attributes"
BENCHMARKS = (CONSUMER2SHOP, ATTRIBUTES)

# Files each benchmark needs, relative to its root (a trailing "/" is a
# directory). The image directory may also be ROOT/img/
# (``deepfashion_files.IMAGE_DIRS``).
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
# DeepFashion's attribute types of the Category and Attribute benchmark.
ATTRIBUTE_TYPES = {1: "texture", 2: "fabric", 3: "shape", 4: "part",
                   5: "style"}
SOURCE_TYPES = {"1": "shop", "2": "street"}  # 2 = consumer photo.
SPLITS = {"train": "train", "val": "val", "test": "test"}
_ITEM_DIR = re.compile(r"^id_\d+$")


# --------------------------------------------------------------------------
# Consumer-to-shop.


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
        ManifestError: images missing on disk (unless ``skip_bad``), or no
            image left to write.
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
            fail(path, line, f"source_type must be 1 (shop) or 2 "
                 f"(consumer), got {f[2]!r}")
        parse_int(path, line, f[1], "clothes_type")
        box = parse_box(path, line, f[3:7])
        boxes[f[0]] = (source, box if box[0] < box[2] and box[1] < box[3]
                       else None, line)

    path = os.path.join(anno, "list_item_consumer2shop.txt")
    known_items = {f[0] for _, f in iter_list(path, "item_id", tokens=1,
                                              header_optional=True)}

    path = os.path.join(anno, "list_attr_items.txt")
    item_codes = {}
    for line, f in iter_list(path, "item_id", min_tokens=1):
        item_codes[f[0]] = parse_codes(path, line, f[1:], len(names_types))

    path = os.path.join(root, "Eval", "list_eval_partition.txt")
    assigned, item_split, pairs = {}, {}, collections.Counter()
    problems = []
    for line, f in iter_list(path, "image_pair_name_1", tokens=4):
        split = SPLITS.get(f[3])
        if split is None:
            fail(path, line, "evaluation_status must be train, val or "
                 f"test, got {f[3]!r}")
        item = f[2]
        if item_split.setdefault(item, split) != split:
            fail(path, line, f"item {item} is in split {split} here but in "
                 f"{item_split[item]} earlier; items must not cross splits")
        pairs[split] += 1
        for name in f[:2]:
            if name not in boxes:
                problems.append(f"{path}, line {line}: image {name} has no "
                                "line in list_bbox_consumer2shop.txt")
                continue
            if assigned.setdefault(name, (item, split)) != (item, split):
                fail(path, line, f"image {name} belongs to item {item} "
                     f"here but to {assigned[name][0]} earlier")
    drop_or_fail(problems, skip_bad, "paired image(s) without a box line")

    categories = sorted({c for c in map(_path_category, boxes) if c})
    schema_attrs = [a for a, _ in groups]
    if len(categories) >= 2:
        schema_attrs.insert(0, attributes.Attribute("category",
                                                    tuple(categories)))
    schema = attributes.AttributeSchema("deepfashion_c2s", schema_attrs)

    base = image_base(root)
    writer = ManifestWriter(out_dir, schema, root)
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
                       rel_path=os.path.join(base, name),
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
        MissingFilesError, AnnotationError, ManifestError: as for
            ``convert_consumer2shop``.
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
        parse_int(path, line, f[-1], "category_type")
        categories.append(" ".join(f[:-1]))
    categories = unique_names(categories)

    path = os.path.join(anno, "list_category_img.txt")
    image_category = {}
    for line, f in iter_list(path, "image_name", tokens=2):
        k = parse_int(path, line, f[1], "category_label")
        if not 1 <= k <= len(categories):
            fail(path, line, f"category_label must be in [1, "
                 f"{len(categories)}] (list_category_cloth.txt), got {k}")
        image_category[f[0]] = categories[k - 1]

    path = os.path.join(anno, "list_bbox.txt")
    boxes = {}
    for line, f in iter_list(path, "image_name", tokens=5):
        box = parse_box(path, line, f[1:5])
        boxes[f[0]] = box if box[0] < box[2] and box[1] < box[3] else None

    path = os.path.join(root, "Eval", "list_eval_partition.txt")
    image_split = {}
    for line, f in iter_list(path, "image_name", tokens=2):
        split = SPLITS.get(f[1])
        if split is None:
            fail(path, line, "evaluation_status must be train, val or "
                 f"test, got {f[1]!r}")
        image_split[f[0]] = split

    schema = attributes.AttributeSchema(
        "deepfashion_attributes",
        [attributes.Attribute("category", tuple(categories))]
        + [a for a, _ in groups])
    base = image_base(root)
    writer = ManifestWriter(out_dir, schema, root)
    problems, seen = [], set()
    path = os.path.join(anno, "list_attr_img.txt")
    others = (("list_eval_partition.txt", image_split),
              ("list_bbox.txt", boxes),
              ("list_category_img.txt", image_category))
    try:
        for line, f in iter_list(path, "image_name", min_tokens=1):
            name = f[0]
            codes = parse_codes(path, line, f[1:], len(names_types))
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
                       rel_path=os.path.join(base, name),
                       domain=domain, item_id=name, split=image_split[name],
                       labels=labels, box=list(box) if box else None,
                       where=f"{path}, line {line}")
        problems += [f"{os.path.join(root, 'Eval', 'list_eval_partition.txt')}"
                     f": image {name} has no line in list_attr_img.txt"
                     for name in image_split if name not in seen]
        drop_or_fail(problems, skip_bad,
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
