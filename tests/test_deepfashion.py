"""DeepFashion / DeepFashion2 converters and multilabel attribute heads.

Fixtures are a handful of annotation lines written in the exact upstream
formats (count line, column names line, space-padded fields; per-image
JSON for DeepFashion2) beside tiny JPEGs made here. Each converter runs end
to end: annotation files -> manifest -> TFRecords -> one training step
(``tiny`` preset, 32 px).
"""

import glob
import importlib.util
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from mtct_tf import attributes, configs, evaluation, runs, training, transfer
from mtct_tf import model as model_lib
from mtct_tf.attributes import MISSING, MULTILABEL, Attribute, AttributeSchema
from mtct_tf.data import convert, deepfashion, deepfashion2, pipeline
from mtct_tf.data.manifest import ManifestError, read_manifest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
W, H = 32, 40  # Image width and height in pixels.
S = 32  # Model input size.


def _image(path, colour):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", (W, H), colour).save(path, "JPEG", quality=90)


def _write(path, lines, encoding="utf-8"):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding=encoding, newline="\n") as f:
        f.write("\n".join(lines) + "\n")


def _table(header, rows, widths=None):
    """A DeepFashion list file: count, column names, space-padded rows."""
    width = widths or max(len(r[0]) for r in rows) + 2
    out = [str(len(rows)), header]
    for row in rows:
        out.append(row[0].ljust(width) + "  ".join(str(v) for v in row[1:]))
    return out


def _load_script(name):
    spec = importlib.util.spec_from_file_location(
        name, os.path.join(REPO, "datasets", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------
# Consumer-to-shop fixture.

C2S_ATTRS = [  # (Chinese, English, type)
    ("红色", "red", 1), ("蓝色", "blue", 1), ("白色", "white", 1),
    ("条纹", "stripe", 2), ("格子", "plaid", 2), ("纯色", "solid", 2),
    ("长袖", "long sleeve", 3), ("短袖", "short sleeve", 3),
]
C2S_TYPES = [("颜色", "colour"), ("图案", "pattern"), ("袖子", "sleeve")]
# Item -> (group dir, category, split, attribute values in file coding).
C2S_ITEMS = {
    "id_00000001": ("CLOTHING", "Blouse", "train",
                    [1, -1, -1, -1, -1, 1, 1, -1]),
    "id_00000002": ("DRESSES", "Dress", "train",
                    [-1, 1, -1, 1, 0, -1, -1, 1]),
    "id_00000003": ("CLOTHING", "Blouse", "train",
                    [-1, -1, 1, -1, 1, -1, 1, -1]),
    "id_00000004": ("DRESSES", "Dress", "val",
                    [1, -1, -1, 1, -1, -1, -1, 1]),
    "id_00000005": ("CLOTHING", "Blouse", "test",
                    [-1, 1, -1, -1, -1, 1, -1, 1]),
    "id_00000006": ("DRESSES", "Dress", "test", None),  # No attribute row.
}


def _c2s_name(item, file):
    group, category, _, _ = C2S_ITEMS.get(item, ("CLOTHING", "Blouse", 0, 0))
    return f"img/{group}/{category}/{item}/{file}"


def build_c2s(root, attrs=C2S_ATTRS, types=C2S_TYPES, extra_columns=()):
    """Consumer-to-shop in its distributed layout; returns expectations.

    ``extra_columns`` (one file-coded value per item of ``C2S_ITEMS``) are
    appended to the attribute rows, for ``attrs`` longer than the default.
    """
    anno = os.path.join(root, "Anno")
    _write(os.path.join(anno, "list_attr_cloth.txt"), _table(
        "attribute_name  attribute_type",
        [(f"{cn} {en}", t) for cn, en, t in attrs], widths=24))
    _write(os.path.join(anno, "list_attr_type.txt"),
           [str(len(types)), "attribute_type_name"]
           + [f"{cn} {en}" for cn, en in types])
    extra = dict(zip(C2S_ITEMS, extra_columns))
    rows = [(item, *v, *([extra[item]] if item in extra else []))
            for item, (_, _, _, v) in C2S_ITEMS.items() if v]
    _write(os.path.join(anno, "list_attr_items.txt"),
           _table("item_id  attribute_labels", rows))
    _write(os.path.join(anno, "list_item_consumer2shop.txt"),
           [str(len(C2S_ITEMS) + 1)] + list(C2S_ITEMS) + ["id_00000007"])
    bbox, pairs = [], []
    for n, (item, (_, _, split, _)) in enumerate(C2S_ITEMS.items()):
        consumers = ["comsumer_01.jpg"] + (["comsumer_02.jpg"]
                                           if n == 0 else [])
        shop = _c2s_name(item, "shop_01.jpg")
        bbox.append((shop, 1, 1, 2, 3, 30, 36))
        for c in consumers:
            name = _c2s_name(item, c)
            # The first consumer box pokes out of the 32 px wide image.
            wide = n == 0 and c == "comsumer_01.jpg"
            bbox.append((name, 1, 2, 4, 6, 35 if wide else 28, 38))
            pairs.append((name, shop, item, split))
    # An unpaired shop image of a paired item (split from its item) and an
    # image of an item in no pair (left out).
    bbox.append((_c2s_name("id_00000005", "shop_02.jpg"), 1, 1, 0, 0, 32, 40))
    bbox.append((_c2s_name("id_00000007", "shop_01.jpg"), 1, 1, 0, 0, 32, 40))
    _write(os.path.join(anno, "list_bbox_consumer2shop.txt"), _table(
        "image_name  clothes_type  source_type  x_1  y_1  x_2  y_2", bbox))
    _write(os.path.join(root, "Eval", "list_eval_partition.txt"), [
        str(len(pairs)),
        "image_pair_name_1  image_pair_name_2  item_id  evaluation_status",
    ] + [" ".join(p) for p in pairs])
    for k, row in enumerate(bbox):
        _image(os.path.join(root, "Img", row[0]),
               (40 * k % 255, 200, 30 + 20 * (row[2] == 2)))
    return {"bbox": bbox, "pairs": pairs}


@pytest.fixture(scope="module")
def c2s(tmp_path_factory):
    """(root, out, report, shards) of the Consumer-to-shop fixture."""
    base = tmp_path_factory.mktemp("c2s")
    root, out = str(base / "Consumer-to-shop"), str(base / "out")
    build_c2s(root)
    report = deepfashion.convert_consumer2shop(root, out)
    shards = os.path.join(out, "shards")
    convert.convert_manifest(os.path.join(out, "manifest.jsonl"), shards,
                             num_shards=1, workers=1, progress=False)
    return root, out, report, shards


def _records(shards, split, schema):
    out = {}
    for raw in tf.data.TFRecordDataset(pipeline.shard_files(shards, split)):
        r = pipeline.parse_example(raw, schema)
        out[r["source_id"].numpy().decode()] = {
            "domain": r["domain"].numpy().decode(),
            "item": r["item_id"].numpy().decode(),
            "bbox": r["bbox"].numpy(),
            "labels": {k: v.numpy().tolist()
                       for k, v in r["labels"].items()},
        }
    return out


def test_c2s_schema_groups_and_categories(c2s):
    _, out, report, _ = c2s
    schema = AttributeSchema.load(os.path.join(out, "schema.json"))
    assert schema.names == ("category", "colour", "pattern", "sleeve")
    assert schema["category"].values == ("Blouse", "Dress")
    assert schema["category"].kind == attributes.SOFTMAX
    assert schema["colour"].values == ("red", "blue", "white")
    assert schema["sleeve"].values == ("long sleeve", "short sleeve")
    assert {a.kind for a in schema if a.name != "category"} == {MULTILABEL}
    assert report["unpaired_images_left_out"] == 1
    assert report["items_without_attributes"] == 1
    assert report["pairs"] == {"train": 4, "val": 1, "test": 2}
    assert report["boxes_clipped"] == 1


def test_c2s_records_carry_domains_items_boxes_and_codes(c2s):
    _, out, _, shards = c2s
    schema = pipeline.load_schema(shards)
    train = _records(shards, "train", schema)
    test = _records(shards, "test", schema)
    assert len(train) == 7 and len(test) == 5
    c1 = train[_c2s_name("id_00000001", "comsumer_01.jpg")]
    assert c1["domain"] == "street" and c1["item"] == "id_00000001"
    # Box (4, 6, 35, 38) clipped to the 32 px width, normalised.
    np.testing.assert_allclose(c1["bbox"], [6 / H, 4 / W, 38 / H, 1.0],
                               atol=1e-6)
    assert c1["labels"]["category"] == 0
    # 1 / -1 / 0 in the file -> 1 / 0 / -1.
    assert c1["labels"]["colour"] == [1, 0, 0]
    assert c1["labels"]["pattern"] == [0, 0, 1]
    assert c1["labels"]["sleeve"] == [1, 0]
    s2 = train[_c2s_name("id_00000002", "shop_01.jpg")]
    assert s2["domain"] == "shop" and s2["labels"]["category"] == 1
    assert s2["labels"]["pattern"] == [1, MISSING, 0]
    # Item without an attribute row: every binary label unknown.
    s6 = test[_c2s_name("id_00000006", "shop_01.jpg")]
    assert s6["labels"]["colour"] == [MISSING] * 3
    # The unpaired shop image joined its item's split.
    assert _c2s_name("id_00000005", "shop_02.jpg") in test
    summary = pipeline.load_summary(shards)
    # Both images of item 6 (no attribute row) miss every binary label.
    assert summary["splits"]["test"]["missing_labels"]["colour"] == 2


def test_c2s_manifest_values_and_link(c2s):
    root, out, _, _ = c2s
    assert os.path.realpath(os.path.join(out, "images")) == \
        os.path.realpath(root)
    with open(os.path.join(out, "manifest.jsonl"), encoding="utf-8") as f:
        lines = {d["id"]: d for d in map(json.loads, f)}
    s2 = lines[_c2s_name("id_00000002", "shop_01.jpg")]
    assert s2["attributes"]["pattern"] == {"positive": ["stripe"],
                                           "unknown": ["plaid"]}
    assert s2["attributes"]["colour"] == ["blue"]
    assert s2["path"].startswith("images/Img/img/DRESSES/")
    assert (s2["width"], s2["height"]) == (W, H)


# --------------------------------------------------------------------------
# Category and Attribute fixture.

ATTR_NAMES = [  # (name, type); names may hold spaces.
    ("floral", 1), ("abstract print", 1), ("cotton", 2), ("denim", 2),
    ("a-line", 3), ("fit", 3), ("collar", 4), ("v-neck", 4),
    ("boho", 5), ("summer casual", 5),
]
ATTR_CATEGORIES = [("Blouse", 1), ("Shorts", 2), ("Dress", 3)]
ATTR_IMAGES = [  # (name, category id, split, 10 values)
    ("img/Floral_Blouse/img_00000001.jpg", 1, "train",
     [1, -1, 1, -1, -1, 1, 1, -1, -1, 1]),
    ("img/Floral_Blouse/img_00000002.jpg", 1, "train",
     [1, 1, -1, -1, -1, 1, -1, 1, 1, -1]),
    ("img/Denim_Shorts/img_00000001.jpg", 2, "train",
     [-1, -1, -1, 1, 1, -1, -1, -1, -1, 1]),
    ("img/Boho_Dress/img_00000001.jpg", 3, "val",
     [-1, 1, 1, -1, 1, -1, -1, 1, 1, -1]),
    ("img/Boho_Dress/img_00000002.jpg", 3, "val",
     [0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
    ("img/Denim_Shorts/img_00000002.jpg", 2, "test",
     [-1, -1, 1, 1, -1, 1, -1, -1, 1, -1]),
    ("img/Floral_Blouse/img_00000003.jpg", 1, "test",
     [1, -1, 1, -1, -1, 1, 1, -1, -1, 1]),
]


def build_attributes(root, images=ATTR_IMAGES):
    anno = os.path.join(root, "Anno")
    _write(os.path.join(anno, "list_attr_cloth.txt"), _table(
        "attribute_name  attribute_type", ATTR_NAMES, widths=29))
    _write(os.path.join(anno, "list_category_cloth.txt"), _table(
        "category_name  category_type", ATTR_CATEGORIES, widths=27))
    _write(os.path.join(anno, "list_category_img.txt"), _table(
        "image_name  category_label", [(n, c) for n, c, _, _ in images]))
    _write(os.path.join(anno, "list_bbox.txt"), _table(
        "image_name  x_1  y_1  x_2  y_2",
        [(n, 2, 3, 28, 37) for n, _, _, _ in images]))
    _write(os.path.join(anno, "list_attr_img.txt"), _table(
        "image_name  attribute_labels",
        [(n, *v) for n, _, _, v in images]))
    _write(os.path.join(root, "Eval", "list_eval_partition.txt"), _table(
        "image_name  evaluation_status", [(n, s) for n, _, s, _ in images]))
    for k, (name, *_rest) in enumerate(images):
        _image(os.path.join(root, "Img", name), (30 * k, 90, 160))


@pytest.fixture(scope="module")
def attr_data(tmp_path_factory):
    base = tmp_path_factory.mktemp("attr")
    root, out = str(base / "Category-and-Attribute"), str(base / "out")
    build_attributes(root)
    report = deepfashion.convert_attributes(root, out)
    shards = os.path.join(out, "shards")
    convert.convert_manifest(os.path.join(out, "manifest.jsonl"), shards,
                             num_shards=1, workers=1, progress=False)
    return root, out, report, shards


def test_attributes_schema_and_codes(attr_data):
    _, _, report, shards = attr_data
    schema = pipeline.load_schema(shards)
    assert schema.names == ("category", "texture", "fabric", "shape",
                            "part", "style")
    assert schema["category"].values == ("Blouse", "Shorts", "Dress")
    assert schema["texture"].values == ("floral", "abstract print")
    assert schema["style"].values == ("boho", "summer casual")
    assert report["splits"]["train"] == {"images": 3, "items": 3, "shop": 3}
    val = _records(shards, "val", schema)
    unknown = val["img/Boho_Dress/img_00000002.jpg"]["labels"]
    assert unknown["texture"] == [MISSING, MISSING]
    first = _records(shards, "train", schema)[ATTR_IMAGES[0][0]]
    assert first["labels"]["category"] == 0
    assert first["labels"]["style"] == [0, 1]
    assert first["labels"]["part"] == [1, 0]


# --------------------------------------------------------------------------
# DeepFashion2 fixture.

VAL_FRACTION = 0.3


def _df2_pairs():
    """Four training pair ids kept in train and one drawn into val."""
    train = [p for p in range(1, 100)
             if not deepfashion2.in_val(p, VAL_FRACTION)][:4]
    val = [p for p in range(1, 100) if deepfashion2.in_val(p, VAL_FRACTION)]
    return train, val[:1]


def _df2_item(category_id, box, style):
    return {"segmentation": [[1, 1, 2, 2, 3, 3]], "scale": 2,
            "viewpoint": 2, "zoom_in": 1, "landmarks": [0, 0, 0],
            "style": style, "bounding_box": box,
            "category_id": category_id,
            "category_name": deepfashion2.CATEGORIES[category_id - 1],
            "occlusion": 1}


def build_df2(root):
    train_pairs, val_pairs = _df2_pairs()
    plan = [("train", p) for p in train_pairs + val_pairs]
    plan += [("validation", 1), ("validation", 2)]
    n = 0
    for part, pair in plan:
        for source in ("shop", "user"):
            n += 1
            stem = f"{n:06d}"
            anno = {"source": source, "pair_id": pair,
                    "item1": _df2_item(1 + pair % 13, [2, 3, 30, 38], 1)}
            if source == "user":
                # A second garment without counterpart; its box pokes out.
                anno["item2"] = _df2_item(8, [0.5, 20, 40, 40.5], 0)
            path = os.path.join(root, part, "annos", f"{stem}.json")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w") as f:
                json.dump(anno, f)
            _image(os.path.join(root, part, "image", f"{stem}.jpg"),
                   (20 * n, 120, 60))
    return train_pairs, val_pairs


@pytest.fixture(scope="module")
def df2(tmp_path_factory):
    base = tmp_path_factory.mktemp("df2")
    root, out = str(base / "DeepFashion2"), str(base / "out")
    pairs = build_df2(root)
    report = deepfashion2.convert(root, out, val_fraction=VAL_FRACTION)
    shards = os.path.join(out, "shards")
    convert.convert_manifest(os.path.join(out, "manifest.jsonl"), shards,
                             num_shards=1, workers=1, progress=False)
    return root, out, report, shards, pairs


def test_df2_garments_pairs_and_splits(df2):
    _, _, report, shards, (train_pairs, val_pairs) = df2
    assert report["annotation_files"] == 14
    assert report["garments"] == 21
    # 4 paired garments (shop + user) and 4 unpaired user garments.
    assert report["splits"]["train"] == {"images": 12, "items": 8,
                                         "shop": 4, "street": 8}
    assert report["splits"]["val"] == {"images": 3, "items": 2, "shop": 1,
                                       "street": 2}
    assert report["splits"]["test"]["images"] == 6
    assert report["boxes_clipped"] == 7  # Every item2 box.
    schema = pipeline.load_schema(shards)
    train = _records(shards, "train", schema)
    shop = train["train/000001/item1"]
    user = train["train/000002/item1"]
    assert shop["domain"] == "shop" and user["domain"] == "street"
    assert shop["item"] == user["item"] == f"train/{train_pairs[0]}/1"
    assert train["train/000002/item2"]["item"] == "train/000002/item2"
    assert shop["labels"]["category"] == train_pairs[0] % 13
    np.testing.assert_allclose(shop["bbox"],
                               [3 / H, 2 / W, 38 / H, 30 / W], atol=1e-6)
    val = _records(shards, "val", schema)
    assert {r["item"] for r in val.values()} >= {f"train/{val_pairs[0]}/1"}


# --------------------------------------------------------------------------
# Missing files and malformed lines.


def test_missing_files_are_all_named(tmp_path):
    root = str(tmp_path / "c2s")
    os.makedirs(os.path.join(root, "Anno"))
    _write(os.path.join(root, "Anno", "list_attr_cloth.txt"), ["0", "x"])
    with pytest.raises(deepfashion.MissingFilesError) as e:
        deepfashion.convert_consumer2shop(root, str(tmp_path / "out"))
    message = str(e.value)
    for rel in deepfashion.EXPECTED_FILES["consumer2shop"]:
        if rel != "Anno/list_attr_cloth.txt":
            assert rel in message
    assert "5 of the 6 expected files" in message
    with pytest.raises(deepfashion.MissingFilesError) as e:
        deepfashion.convert_attributes(str(tmp_path / "none"),
                                       str(tmp_path / "out"))
    assert all(rel in str(e.value)
               for rel in deepfashion.EXPECTED_FILES["attributes"])
    with pytest.raises(deepfashion.MissingFilesError) as e:
        deepfashion2.convert(str(tmp_path / "none"), str(tmp_path / "out"))
    assert all(rel in str(e.value) for rel in deepfashion2.expected_files())
    assert not os.path.exists(str(tmp_path / "out" / "manifest.jsonl"))


def _replace_line(path, number, text):
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    if text is None:
        del lines[number - 1]
    else:
        lines[number - 1] = text
    _write(path, lines)


BAD_C2S = [
    ("Anno/list_bbox_consumer2shop.txt", 3,
     "img/CLOTHING/Blouse/id_00000001/shop_01.jpg 1 3 1 2 30 36",
     "line 3: source_type must be 1 (shop) or 2 (consumer), got '3'"),
    ("Anno/list_bbox_consumer2shop.txt", 4,
     "img/CLOTHING/Blouse/id_00000001/comsumer_01.jpg 1 2 4 6 35",
     "line 4: expected 7 fields (image_name and 6 more), got 6"),
    ("Anno/list_bbox_consumer2shop.txt", 4,
     "img/CLOTHING/Blouse/id_00000001/comsumer_01.jpg 1 2 4 6 3.5 38",
     "line 4: x_2 must be an integer, got '3.5'"),
    ("Anno/list_bbox_consumer2shop.txt", 1, "12 images",
     "line 1: expected the number of entries (one integer)"),
    ("Anno/list_bbox_consumer2shop.txt", 2, "x y z",
     "line 2: expected the column names line starting with 'image_name'"),
    ("Anno/list_bbox_consumer2shop.txt", 5, None,
     "line 1 declares 15 entries but the file has 14"),
    ("Anno/list_attr_items.txt", 4, "id_00000002 1 -1 1",
     "line 4: expected 8 attribute values (1, -1 or 0), got 3"),
    ("Anno/list_attr_items.txt", 3, "id_00000001 1 -1 -1 -1 -1 1 1 2",
     "line 3: attribute values must be 1, -1 or 0 (unknown), got '2'"),
    ("Anno/list_attr_cloth.txt", 3, "红色 red colour",
     "line 3: the attribute type (last field) must be an integer"),
    ("Eval/list_eval_partition.txt", 3,
     "img/CLOTHING/Blouse/id_00000001/comsumer_01.jpg "
     "img/CLOTHING/Blouse/id_00000001/shop_01.jpg id_00000001 training",
     "line 3: evaluation_status must be train, val or test, got "
     "'training'"),
    ("Eval/list_eval_partition.txt", 3,
     "img/CLOTHING/Blouse/id_00000001/comsumer_01.jpg "
     "img/CLOTHING/Blouse/id_00000001/shop_01.jpg id_00000001 test",
     "item id_00000001 is in split train here but in test earlier"),
]


@pytest.mark.parametrize("rel,line,text,expected", BAD_C2S)
def test_c2s_malformed_lines_name_file_and_line(tmp_path, rel, line, text,
                                                expected):
    root = str(tmp_path / "c2s")
    build_c2s(root)
    path = os.path.join(root, rel)
    _replace_line(path, line, text)
    out = str(tmp_path / "out")
    with pytest.raises(deepfashion.AnnotationError) as e:
        deepfashion.convert_consumer2shop(root, out)
    assert str(e.value).startswith(path)
    assert expected in str(e.value)
    assert not os.path.exists(os.path.join(out, "manifest.jsonl"))
    assert not os.path.exists(os.path.join(out, ".manifest.jsonl.tmp"))


BAD_ATTR = [
    ("Anno/list_attr_img.txt", 5,
     "img/Denim_Shorts/img_00000001.jpg " + " ".join(["1"] * 9),
     "line 5: expected 10 attribute values (1, -1 or 0), got 9"),
    ("Anno/list_attr_cloth.txt", 4, "abstract print     7",
     "line 4: attribute type must be one of [1, 2, 3, 4, 5], got 7"),
    ("Anno/list_category_img.txt", 3,
     "img/Floral_Blouse/img_00000001.jpg 4",
     "line 3: category_label must be in [1, 3] (list_category_cloth.txt)"),
    ("Anno/list_bbox.txt", 6, "img/Boho_Dress/img_00000001.jpg 1 2 3",
     "line 6: expected 5 fields (image_name and 4 more), got 4"),
    ("Eval/list_eval_partition.txt", 9,
     "img/Floral_Blouse/img_00000003.jpg eval",
     "line 9: evaluation_status must be train, val or test, got 'eval'"),
]


@pytest.mark.parametrize("rel,line,text,expected", BAD_ATTR)
def test_attributes_malformed_lines_name_file_and_line(tmp_path, rel, line,
                                                       text, expected):
    root = str(tmp_path / "attr")
    build_attributes(root)
    path = os.path.join(root, rel)
    _replace_line(path, line, text)
    with pytest.raises(deepfashion.AnnotationError) as e:
        deepfashion.convert_attributes(root, str(tmp_path / "out"))
    assert str(e.value).startswith(path)
    assert expected in str(e.value)


def test_inconsistent_and_missing_images_fail_or_are_skipped(tmp_path):
    root = str(tmp_path / "attr")
    build_attributes(root)
    os.remove(os.path.join(root, "Img", ATTR_IMAGES[1][0]))
    # An image in list_attr_img.txt but not in the partition.
    part = os.path.join(root, "Eval", "list_eval_partition.txt")
    _replace_line(part, 3 + 2, None)
    _replace_line(part, 1, str(len(ATTR_IMAGES) - 1))
    with pytest.raises(deepfashion.AnnotationError,
                       match="1 image\\(s\\) not listed in every annotation "
                             "file:\n.*list_attr_img.txt, line 5: image "
                             "img/Denim_Shorts/img_00000001.jpg has no line "
                             "in list_eval_partition.txt"):
        deepfashion.convert_attributes(root, str(tmp_path / "out"))
    report = deepfashion.convert_attributes(root, str(tmp_path / "out"),
                                            skip_bad=True)
    assert report["images"] == len(ATTR_IMAGES) - 2
    assert len(report["skipped_inconsistent_images"]) == 1
    assert "img_00000002.jpg is missing" in \
        report["skipped_missing_images"][0]
    assert "list_attr_img.txt, line 4" in report["skipped_missing_images"][0]


BAD_DF2 = [
    ("{\"source\": \"shop\", \"pair_id\": 1,", "not valid JSON"),
    ({"source": "shop", "item1": {}}, "missing 'pair_id'"),
    ({"source": "consumer", "pair_id": 1}, "source must be 'shop' or 'user'"),
    ({"source": "shop", "pair_id": 1,
      "item1": {**_df2_item(3, [1, 2, 3, 4], 1),
                "category_name": "vest"}},
     "item1: category_id 3 is 'short sleeve outwear' in DeepFashion2, but "
     "category_name is 'vest'"),
    ({"source": "shop", "pair_id": 1,
      "item2": {k: v for k, v in _df2_item(3, [1, 2, 3, 4], 1).items()
                if k != "bounding_box"}},
     "item2: missing 'bounding_box'"),
    ({"source": "shop", "pair_id": 1,
      "item1": _df2_item(3, [1, 2, 3], 1)},
     "item1: bounding_box must be [x1, y1, x2, y2] in pixels"),
]


@pytest.mark.parametrize("content,expected", BAD_DF2)
def test_df2_malformed_annotation_names_file(tmp_path, content, expected):
    root = str(tmp_path / "df2")
    build_df2(root)
    path = os.path.join(root, "validation", "annos", "000011.json")
    with open(path, "w") as f:
        f.write(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(deepfashion.AnnotationError) as e:
        deepfashion2.convert(root, str(tmp_path / "out"))
    assert str(e.value).startswith(path)
    assert expected in str(e.value)


def test_cli_help_lists_files_and_errors_exit_1(tmp_path, capsys):
    df = _load_script("convert_deepfashion")
    df2_cli = _load_script("convert_deepfashion2")
    for rel in (deepfashion.EXPECTED_FILES["consumer2shop"]
                + deepfashion.EXPECTED_FILES["attributes"]
                + deepfashion.OPTIONAL_FILES["consumer2shop"]):
        assert rel in df.__doc__
    for rel in deepfashion2.expected_files():
        assert rel in df2_cli.__doc__
    with pytest.raises(SystemExit):
        df.parse_args(["--help"])
    assert "Anno/list_attr_img.txt" in capsys.readouterr().out
    assert df.main(["--benchmark", "attributes", "--root",
                    str(tmp_path), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert "Anno/list_bbox.txt" in err and "Img/img/" in err
    assert df2_cli.main(["--root", str(tmp_path), "--out",
                         str(tmp_path / "o"), "--parts", "validation"]) == 1
    err = capsys.readouterr().err
    assert "validation/annos/" in err and "train/annos/" not in err


def test_gb18030_attribute_names(tmp_path):
    path = str(tmp_path / "list_attr_cloth.txt")
    _write(path, ["2", "attribute_name attribute_type", "红色 red 1",
                  "蓝色 (深) dark blue 1"], encoding="gb18030")
    assert deepfashion.read_attribute_names(path) == [("red", 1),
                                                      ("dark blue", 1)]


# --------------------------------------------------------------------------
# Multilabel attributes: schema, manifest, model, training step, metrics.


def test_multilabel_encode_decode():
    a = Attribute("colour", ("red", "blue", "white"), MULTILABEL)
    assert a.encode(["blue"]) == (0, 1, 0)
    assert a.encode({"positive": ["red"], "unknown": ["white"]}) == \
        (1, 0, MISSING)
    assert a.encode(None) == (MISSING,) * 3
    assert a.encode([]) == (0, 0, 0)
    for code in ((0, 1, 0), (1, 0, MISSING), (MISSING,) * 3, (0, 0, 0)):
        assert a.encode(a.decode(code)) == code
    with pytest.raises(KeyError, match="unknown value 'green'"):
        a.encode(["green"])
    with pytest.raises(ValueError, match="both positive and unknown"):
        a.encode({"positive": ["red"], "unknown": ["red"]})
    with pytest.raises(ValueError, match="list of positive value names"):
        a.encode("red")
    schema = AttributeSchema("s", [Attribute("size", ("s", "m")), a])
    assert schema.kinds == {"size": "softmax", "colour": MULTILABEL}
    assert schema.encode({"size": "m"}) == {"size": 1,
                                            "colour": (MISSING,) * 3}
    assert AttributeSchema.from_dict(schema.to_dict()) == schema


def test_manifest_bad_multilabel_value_names_line(tmp_path):
    schema = AttributeSchema("s", [
        Attribute("colour", ("red", "blue"), MULTILABEL)])
    path = str(tmp_path / "manifest.jsonl")
    base = {"id": "a", "path": "a.jpg", "domain": "shop", "item_id": "i",
            "split": "train", "attributes": {"colour": ["red"]}}
    bad = {**base, "id": "b", "attributes": {"colour": "red"}}
    with open(path, "w") as f:
        f.write(json.dumps(base) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(ManifestError, match="manifest.jsonl, line 2: "
                       "multilabel attribute 'colour' takes a list"):
        read_manifest(path, schema)
    entries, problems = read_manifest(path, schema, skip_bad=True)
    assert entries[0].labels == {"colour": (1, 0)} and len(problems) == 1


MIXED = AttributeSchema("mixed", [
    Attribute("category", ("a", "b", "c")),
    Attribute("colour", ("red", "blue", "white", "black"), MULTILABEL),
])


def test_mtn_multilabel_head_is_an_independent_sigmoid(tmp_path):
    net = model_lib.MTN(MIXED, preset="tiny", image_size=16)
    assert net.kinds == {"category": "softmax", "colour": MULTILABEL}
    x = np.random.default_rng(0).uniform(0, 255, (3, 16, 16, 3))
    out = net.predict_on_batch(x.astype("float32"))
    logits = keras.Model(net.input, net.get_layer("colour_logits").output)
    z = np.asarray(logits.predict_on_batch(x.astype("float32")))
    np.testing.assert_allclose(out["colour"], 1 / (1 + np.exp(-z)),
                               rtol=1e-5)
    np.testing.assert_allclose(out["category"].sum(-1), 1.0, rtol=1e-5)
    assert net.get_layer("colour").dtype_policy.compute_dtype == "float32"
    assert net.get_config()["kinds"] == {"colour": MULTILABEL}
    softmax_only = model_lib.MTN({"category": 3}, preset="tiny",
                                 image_size=16)
    assert "kinds" not in softmax_only.get_config()
    path = str(tmp_path / "m.keras")
    net.save(path)
    loaded = runs.load_mtn(path)
    assert loaded.kinds == net.kinds
    np.testing.assert_allclose(loaded.predict_on_batch(x)["colour"],
                               out["colour"], rtol=1e-5)
    with pytest.raises(ValueError, match="`kinds` must map"):
        model_lib.MTN({"category": 3}, preset="tiny", image_size=16,
                      kinds={"colour": MULTILABEL})


def test_train_step_loss_and_recall_against_numpy():
    net = model_lib.MTN(MIXED, preset="tiny", image_size=16, dropout=0.0)
    trainer = transfer.MTNTrainer(net)
    trainer.compile(optimizer=keras.optimizers.SGD(0.0))
    names = [m.name for m in trainer.metrics]
    assert "colour_top3_recall" in names and "colour_acc" not in names
    assert "category_acc" in names
    x = np.random.default_rng(1).uniform(0, 255, (4, 16, 16, 3))
    x = x.astype("float32")
    y = {"category": np.array([0, 2, -1, 1], np.int32),
         "colour": np.array([[1, 0, -1, 0], [0, 1, 1, 0],
                             [-1, -1, -1, -1], [0, 0, 0, 1]], np.int32)}
    logs = trainer.test_step((x, y))
    out = net.predict_on_batch(x)
    p, t = np.asarray(out["colour"], np.float64), y["colour"]
    eps = 1e-7
    pc = np.clip(p, eps, 1 - eps)
    bce = -(t * np.log(pc) + (1 - t) * np.log(1 - pc))
    bce_mean = bce[t >= 0].sum() / (t >= 0).sum()
    q = np.asarray(out["category"], np.float64)
    known = y["category"] >= 0
    ce = -np.log(np.clip(q[known, y["category"][known]], eps, 1)).mean()
    np.testing.assert_allclose(float(logs["colour_loss"]), bce_mean,
                               rtol=1e-4)
    np.testing.assert_allclose(float(logs["ce"]), bce_mean + ce, rtol=1e-4)
    top3 = np.argsort(-p, axis=1, kind="stable")[:, :3]
    hits = [j in top3[i] for i, j in zip(*np.nonzero(t == 1))]
    np.testing.assert_allclose(float(logs["colour_top3_recall"]),
                               np.mean(hits), rtol=1e-6)


def test_small_multilabel_heads_track_binary_accuracy_against_numpy():
    """Heads of <= 3 values track accuracy at 0.5 (their top-3 recall is 1)."""
    net = model_lib.MTN({"category": 3, "hood": 1, "colour": 4},
                        preset="tiny", image_size=16, dropout=0.0,
                        kinds={"hood": MULTILABEL, "colour": MULTILABEL})
    trainer = transfer.MTNTrainer(net)
    trainer.compile(optimizer=keras.optimizers.SGD(0.0))
    names = [m.name for m in trainer.metrics]
    assert "hood_binary_acc" in names and "colour_top3_recall" in names
    x = np.random.default_rng(2).uniform(0, 255, (6, 16, 16, 3))
    x = x.astype("float32")
    out = net.predict_on_batch(x)
    p = np.asarray(out["hood"], np.float64)[:, 0]
    # Move the threshold between the scores so both outcomes occur.
    bias = net.get_layer("hood_logits").bias
    bias.assign(bias.numpy() - np.log(np.median(p) / (1 - np.median(p))))
    p = np.asarray(net.predict_on_batch(x)["hood"], np.float64)[:, 0]
    # Labels that the thresholded scores get right on images 0, 1, 3 and
    # wrong on 4, 5; image 2 is unknown: accuracy 3 / 5 whatever the net.
    right = (p >= 0.5).astype(np.int32)
    t = np.where(np.arange(6) < 4, right, 1 - right)
    t[2] = -1
    y = {"category": np.array([0, 2, -1, 1, 0, 1], np.int32),
         "hood": t[:, None], "colour": np.zeros((6, 4), np.int32)}
    logs = trainer.test_step((x, y))
    known = t >= 0
    expected = np.mean((p[known] >= 0.5).astype(int) == t[known])
    assert expected == pytest.approx(3 / 5)
    np.testing.assert_allclose(float(logs["hood_binary_acc"]), expected,
                               rtol=1e-6)


def test_evaluate_multilabel_against_numpy():
    rng = np.random.default_rng(3)
    n = 40
    probs = {"g1": rng.uniform(size=(n, 4)), "g2": rng.uniform(size=(n, 3)),
             "cat": rng.dirichlet(np.ones(6), size=n)}
    labels = {"g1": rng.choice([1, 0, 0, -1], size=(n, 4)),
              "g2": rng.choice([1, 0, 0], size=(n, 3)),
              "cat": rng.integers(-1, 6, size=n)}
    labels["g2"][:, 2] = 0  # An attribute without positives.
    res = evaluation.evaluate_multilabel(probs, labels, ["g1", "g2"],
                                         softmax_names=["cat"])
    scores = np.concatenate([probs["g1"], probs["g2"]], axis=1)
    targets = np.concatenate([labels["g1"], labels["g2"]], axis=1)
    for k in (3, 5):
        rank = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        per = []
        for j in range(7):
            rows = np.flatnonzero(targets[:, j] == 1)
            per.append(np.nan if not len(rows) else
                       np.mean([j in rank[r] for r in rows]))
        assert res["topk_recall"][str(k)] == pytest.approx(np.nanmean(per))
        assert res["groups"]["g1"][f"top{k}_recall"] == pytest.approx(
            np.nanmean(per[:4]))
        assert res["groups"]["g2"][f"top{k}_recall"] == pytest.approx(
            np.nanmean(per[4:]))
        y = labels["cat"]
        top = np.argsort(-probs["cat"], axis=1)[:, :k]
        acc = np.mean([y[i] in top[i] for i in np.flatnonzero(y >= 0)])
        assert res["softmax_topk_accuracy"]["cat"][str(k)] == \
            pytest.approx(acc)
    assert res["groups"]["g2"]["num_positive"] == int(
        (labels["g2"] == 1).sum())
    assert "| **all** |" in evaluation.multilabel_table(res)


# --------------------------------------------------------------------------
# End to end: annotation files -> shards -> a training step -> evaluation.


def _config(experiment, shards, **extra):
    overrides = {"model.preset": "tiny", "data.image_size": S,
                 "data.batch_size": 2, "data.shuffle_buffer": 4,
                 "data.shards_dir": shards, "shop.epochs": 1,
                 "shop.steps_per_epoch": 1, "shop.validation_steps": 1,
                 "street.epochs": 1, "street.steps_per_epoch": 1,
                 "street.validation_steps": 1}
    overrides.update(extra)
    return configs.build(experiment, overrides=[
        f"{k}={v}" for k, v in overrides.items()])


def test_c2s_end_to_end_mtct_and_evaluation(c2s, tmp_path):
    _, _, _, shards = c2s
    model_dir = str(tmp_path / "run")
    done = training.run(_config("deepfashion_c2s", shards), model_dir,
                        verbose=0)
    assert set(done) == {"shop", "street"}
    history = open(os.path.join(model_dir, "street", "history.csv")).read()
    # colour has 3 values: every one is in its top 3, so it tracks accuracy.
    assert "colour_binary_acc" in history and "category_acc" in history
    assert "top3_recall" not in history
    results = evaluation.evaluate(model_dir, split="test", domain="street",
                                  batch_size=4)
    ml = results["multilabel"]
    assert list(ml["groups"]) == ["colour", "pattern", "sleeve"]
    assert ml["num_images"] == 2 and ml["num_attributes"] == 8
    assert 0.0 <= ml["topk_recall"]["3"] <= ml["topk_recall"]["5"] <= 1.0
    assert set(results["ap"]) == {"category"}
    # Reports are <prefix>.{json,md,png}; the prefix ends "street_test".
    reports = sorted(glob.glob(os.path.join(model_dir, "eval",
                                            "*street_test.md")))
    assert len(reports) == 1
    for suffix in (".json", ".png"):
        assert os.path.isfile(reports[0][:-len(".md")] + suffix)
    with open(reports[0]) as f:
        assert "top-3 recall" in f.read()


def test_single_attribute_type_converts_trains_evaluates_and_exports(
        tmp_path):
    """A type of one binary attribute is a one-sigmoid multilabel head."""
    from mtct_tf import export_lib

    root, out = str(tmp_path / "c2s"), str(tmp_path / "out")
    # Type 4 ("hood") holds a single attribute; items 1-5 have a row.
    build_c2s(root, attrs=C2S_ATTRS + [("连帽", "hooded", 4)],
              types=C2S_TYPES + [("帽子", "hood")],
              extra_columns=[1, -1, 0, 1, -1])
    deepfashion.convert_consumer2shop(root, out)
    schema = AttributeSchema.load(os.path.join(out, "schema.json"))
    assert schema.names == ("category", "colour", "pattern", "sleeve",
                            "hood")
    assert schema["hood"].values == ("hooded",)
    assert schema["hood"].kind == MULTILABEL
    shards = os.path.join(out, "shards")
    convert.convert_manifest(os.path.join(out, "manifest.jsonl"), shards,
                             num_shards=1, workers=1, progress=False)
    train = _records(shards, "train", pipeline.load_schema(shards))
    # 1 / -1 / 0 in the file -> 1 / 0 / -1 (unknown).
    assert train[_c2s_name("id_00000001", "shop_01.jpg")]["labels"][
        "hood"] == [1]
    assert train[_c2s_name("id_00000002", "shop_01.jpg")]["labels"][
        "hood"] == [0]
    assert train[_c2s_name("id_00000003", "shop_01.jpg")]["labels"][
        "hood"] == [MISSING]

    model_dir = str(tmp_path / "run")
    done = training.run(_config("deepfashion_c2s", shards), model_dir,
                        verbose=0)
    assert set(done) == {"shop", "street"}
    history = open(os.path.join(model_dir, "street", "history.csv")).read()
    assert "hood_binary_acc" in history
    results = evaluation.evaluate(model_dir, split="test", domain="street",
                                  batch_size=4)
    ml = results["multilabel"]
    assert list(ml["groups"]) == ["colour", "pattern", "sleeve", "hood"]
    assert ml["num_attributes"] == 9

    net = runs.load_mtn(os.path.join(model_dir, "street", "model.keras"))
    assert net.num_values["hood"] == 1
    version_dir = export_lib.export_saved_model(net, schema,
                                                str(tmp_path / "serving"))
    loaded = tf.saved_model.load(version_dir)
    image = np.random.RandomState(0).uniform(0, 255, (2, S, S, 3))
    served = loaded.signatures["serving_tensors"](
        images=tf.constant(image, tf.float32))
    expected = net(image.astype("float32"), training=False)["hood"]
    probs = served["hood_probabilities"].numpy()
    assert probs.shape == (2, 1)
    np.testing.assert_allclose(probs, expected, atol=1e-5)
    assert np.all((probs > 0) & (probs < 1))
    assert served["hood_value"].numpy().tolist() == [b"hooded"] * 2

    from mtct_tf import predicting
    photo = glob.glob(os.path.join(root, "Img", "img", "*", "*", "*",
                                   "comsumer_01.jpg"))[0]
    for model in (version_dir, model_dir):
        top = predicting.load_predictor(model).predict_file(photo).top
        assert [v for v, _ in top["hood"]] == ["hooded"]
        assert 0 < top["hood"][0][1] < 1


def test_attributes_end_to_end_one_stage_and_evaluation(attr_data, tmp_path):
    _, _, _, shards = attr_data
    model_dir = str(tmp_path / "run")
    config = _config("deepfashion_attributes", shards, **{"street.epochs": 0})
    done = training.run(config, model_dir, verbose=0)
    assert set(done) == {"shop"} and done["shop"]["steps"] == 1
    results = evaluation.evaluate(model_dir, split="test", domain="shop",
                                  batch_size=4)
    assert list(results["multilabel"]["groups"]) == [
        "texture", "fabric", "shape", "part", "style"]
    assert set(results["multilabel"]["softmax_topk_accuracy"]) == {
        "category"}


def test_df2_end_to_end_shop_stage(df2, tmp_path):
    _, _, _, shards, _ = df2
    model_dir = str(tmp_path / "run")
    done = training.run(_config("deepfashion2", shards), model_dir,
                        stage="shop", verbose=0)
    assert done["shop"]["steps"] == 1
    net = runs.load_mtn(os.path.join(model_dir, "shop", "model.keras"))
    assert net.num_values == {"category": 13}


def test_detection_records_from_a_converted_manifest(c2s, tmp_path):
    script = os.path.join(REPO, "datasets", "make_detection_records.py")
    if not os.path.isfile(script):
        pytest.skip("datasets/make_detection_records.py is not present")
    _, out, _, _ = c2s
    records = str(tmp_path / "det")
    _load_script("make_detection_records").main(
        ["--manifest", os.path.join(out, "manifest.jsonl"), "--out", records,
         "--domain", "street"])
    names = os.listdir(records)
    assert any(n.startswith("train-") for n in names)
