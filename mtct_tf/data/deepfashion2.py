"""DeepFashion2 annotations -> our manifest (docs/DATASETS.md).

DeepFashion2 (Ge et al., CVPR 2019) ships one JSON file per image,
``<part>/annos/NNNNNN.json`` beside ``<part>/image/NNNNNN.jpg``, with
``source`` (``"shop"`` or ``"user"``), ``pair_id`` and ``item1`` ...
``itemN``, each with ``category_id`` (1-13), ``category_name``,
``bounding_box`` ``[x1, y1, x2, y2]`` in pixels and ``style`` (0 = no
counterpart; items of one ``pair_id`` with the same ``style > 0`` are the
same garment in shop and user photos), plus landmarks, masks, scale,
occlusion, zoom-in and viewpoint, which we do not use.

Our manifest has one line per *garment* (our records hold one box):

* ``id`` ``<part>/<image>/item<k>``; ``path`` the image; ``bbox`` the
  item's box (clipped to the image);
* ``domain``: ``shop`` -> ``shop``, ``user`` -> ``street``;
* ``item_id``: ``<part>/<pair_id>/<style>`` for ``style > 0`` (shop and user
  photos of it share it), else ``<part>/<image>/item<k>`` (unpaired);
* ``category``: a softmax attribute over the 13 categories, checked against
  ``category_name``;
* ``split``: ``validation`` -> ``test`` (the test annotations are not
  public); ``train`` -> ``train``, except the pairs whose ``pair_id`` hashes
  into ``val_fraction`` (default 0.1), which become ``val``. The choice
  depends on the pair id only, so shop and user photos of a pair stay
  together and every run chooses the same pairs.
"""

import hashlib
import json
import os
import re

from mtct_tf import attributes
from mtct_tf.data.deepfashion_files import AnnotationError, check_files
from mtct_tf.data.manifest import ManifestWriter

CATEGORIES = (
    "short sleeve top", "long sleeve top", "short sleeve outwear",
    "long sleeve outwear", "vest", "sling", "shorts", "trousers", "skirt",
    "short sleeve dress", "long sleeve dress", "vest dress", "sling dress",
)
PARTS = ("train", "validation")
PART_SPLIT = {"train": "train", "validation": "test"}
SOURCES = {"shop": "shop", "user": "street"}
ITEM_KEYS = ("category_id", "category_name", "bounding_box", "style")
_ITEM = re.compile(r"^item(\d+)$")


def expected_files(parts=PARTS):
    """The directories ``convert`` needs, relative to the root."""
    return tuple(f"{part}/{sub}/" for part in parts
                 for sub in ("annos", "image"))


def schema():
    return attributes.AttributeSchema(
        "deepfashion2", [attributes.Attribute("category", CATEGORIES)])


def in_val(pair_id, val_fraction):
    """Whether a training pair goes to ``val`` (a fixed hash of its id)."""
    digest = hashlib.sha1(str(pair_id).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < val_fraction


def _fail(path, message):
    raise AnnotationError(f"{path}: {message}")


def read_annotation(path):
    """Parses and checks one image's JSON annotation.

    Returns:
        ``(source, pair_id, [(k, category name, box, style), ...])`` with
        items in ``item1, item2, ...`` order.

    Raises:
        AnnotationError: naming the file (and the item) and what was
            expected.
    """
    try:
        with open(path, "rb") as f:
            obj = json.loads(f.read().decode("utf-8"))
    except UnicodeDecodeError as e:
        _fail(path, f"not UTF-8 ({e.reason})")
    except json.JSONDecodeError as e:
        _fail(path, f"not valid JSON ({e.msg} at line {e.lineno} column "
              f"{e.colno})")
    if not isinstance(obj, dict):
        _fail(path, "expected a JSON object with source, pair_id and item1 "
              "... itemN")
    for key in ("source", "pair_id"):
        if key not in obj:
            _fail(path, f"missing {key!r}; expected source, pair_id and "
                  "item1 ... itemN")
    source = SOURCES.get(obj["source"])
    if source is None:
        _fail(path, f"source must be 'shop' or 'user', got {obj['source']!r}")
    if not isinstance(obj["pair_id"], int) or isinstance(obj["pair_id"],
                                                          bool):
        _fail(path, f"pair_id must be an integer, got {obj['pair_id']!r}")
    items = []
    for key in sorted((k for k in obj if _ITEM.match(k)),
                      key=lambda k: int(_ITEM.match(k)[1])):
        item = obj[key]
        if not isinstance(item, dict):
            _fail(path, f"{key}: expected an object")
        missing = [k for k in ITEM_KEYS if k not in item]
        if missing:
            _fail(path, f"{key}: missing {', '.join(map(repr, missing))}; "
                  f"every item needs {', '.join(ITEM_KEYS)}")
        cid = item["category_id"]
        if not isinstance(cid, int) or not 1 <= cid <= len(CATEGORIES):
            _fail(path, f"{key}: category_id must be an integer in [1, "
                  f"{len(CATEGORIES)}], got {cid!r}")
        name = CATEGORIES[cid - 1]
        if item["category_name"] != name:
            _fail(path, f"{key}: category_id {cid} is {name!r} in "
                  f"DeepFashion2, but category_name is "
                  f"{item['category_name']!r}")
        box = item["bounding_box"]
        if not (isinstance(box, list) and len(box) == 4 and all(
                isinstance(v, (int, float)) and not isinstance(v, bool)
                for v in box)):
            _fail(path, f"{key}: bounding_box must be [x1, y1, x2, y2] in "
                  f"pixels, got {box!r}")
        style = item["style"]
        if not isinstance(style, int) or style < 0:
            _fail(path, f"{key}: style must be an integer >= 0, got "
                  f"{style!r}")
        items.append((int(_ITEM.match(key)[1]), name, box, style))
    if not items:
        _fail(path, "no item1 ... itemN: expected at least one garment")
    return source, obj["pair_id"], items


def convert(root, out_dir, *, parts=PARTS, val_fraction=0.1, skip_bad=False):
    """Writes the manifest of DeepFashion2 (see the module docstring).

    Args:
        root: the DeepFashion2 root holding ``train/`` and ``validation/``.
        out_dir: receives ``manifest.jsonl``, ``schema.json``,
            ``conversion.json`` and the ``images`` link to ``root``.
        parts: which of ``train`` / ``validation`` to read.
        val_fraction: fraction of training pairs that become ``val``.
        skip_bad: drop images missing on disk instead of failing.

    Returns:
        The report (also ``out_dir/conversion.json``).

    Raises:
        MissingFilesError: naming every missing directory.
        AnnotationError: a malformed annotation file, named.
        ManifestError: images missing on disk (unless ``skip_bad``).
    """
    parts = tuple(parts)
    unknown = [p for p in parts if p not in PARTS]
    if unknown or not parts:
        raise ValueError(f"parts must be a non-empty subset of {PARTS}. "
                         f"Received: parts={parts!r}")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError("val_fraction must be in [0, 1). Received: "
                         f"val_fraction={val_fraction!r}")
    check_files(root, expected_files(parts), what="DeepFashion2")
    writer = ManifestWriter(out_dir, schema(), root)
    counts = {"annotation_files": 0, "garments": 0, "paired_garments": 0}
    try:
        for part in parts:
            annos = os.path.join(root, part, "annos")
            for name in sorted(os.listdir(annos)):
                if not name.endswith(".json"):
                    continue
                path = os.path.join(annos, name)
                source, pair_id, items = read_annotation(path)
                counts["annotation_files"] += 1
                stem = name[:-len(".json")]
                split = PART_SPLIT[part]
                if part == "train" and in_val(pair_id, val_fraction):
                    split = "val"
                for k, category, box, style in items:
                    garment = f"{part}/{stem}/item{k}"
                    item_id = (f"{part}/{pair_id}/{style}" if style > 0
                               else garment)
                    counts["garments"] += 1
                    counts["paired_garments"] += style > 0
                    writer.add(image_id=garment,
                               rel_path=f"{part}/image/{stem}.jpg",
                               domain=source, item_id=item_id, split=split,
                               labels={"category": category},
                               box=[float(v) for v in box],
                               where=f"{path}, item{k}")
    except BaseException:
        writer.abort()
        raise
    report = {"dataset": "deepfashion2", "root": os.path.abspath(root),
              "parts": list(parts), "val_fraction": val_fraction, **counts}
    return writer.finish(report, skip_bad=skip_bad)
