"""The class-per-folder importer (data/image_folder.py and its script).

Folders are made here in the exact layout of Keras'
``image_dataset_from_directory`` / torchvision's ``ImageFolder``.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from mtct_tf.data import convert, image_folder, manifest, pipeline

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLOURS = {"coat": (200, 30, 30), "dress": (30, 200, 30),
           "hat": (30, 30, 200)}


def _photo(path, colour, size=(20, 16)):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", size, colour).save(path, "JPEG", quality=95)


def _split_tree(root, counts=None):
    """ROOT/{train,validation,test}/<class>/<n>.jpg."""
    counts = counts or {"train": 3, "validation": 1, "test": 1}
    for split, n in counts.items():
        for cls, colour in COLOURS.items():
            for i in range(n):
                _photo(os.path.join(root, split, cls, f"{cls}{i}.jpg"),
                       colour)
    return root


def _flat_tree(root, n=20):
    for cls, colour in COLOURS.items():
        for i in range(n):
            _photo(os.path.join(root, cls, f"{cls}{i}.jpg"), colour)
    return root


def _lines(out):
    with open(os.path.join(out, "manifest.jsonl"), encoding="utf-8") as f:
        return [json.loads(x) for x in f]


def test_split_folders_become_splits_and_classes(tmp_path):
    root = _split_tree(str(tmp_path / "photos"))
    out = str(tmp_path / "out")
    report = image_folder.import_image_folder(root, out)
    assert report["layout"] == "split folders"
    lines = _lines(out)
    assert len(lines) == 15
    counts = {}
    for line in lines:
        split, cls = line["split"], line["attributes"]["category"]
        counts[split, cls] = counts.get((split, cls), 0) + 1
        # The class is the folder the photo is in.
        assert f"/{cls}/" in line["path"]
        assert line["bbox"] is None
        assert line["domain"] == "shop"
    assert counts == {(s, c): n for s, n in
                      (("train", 3), ("val", 1), ("test", 1))
                      for c in COLOURS}
    schema = json.load(open(os.path.join(out, "schema.json")))
    assert schema["attributes"][0]["values"] == sorted(COLOURS)
    # The photos are read through the link, never copied.
    assert os.path.realpath(os.path.join(out, "images")) == root
    summary = convert.convert_manifest(os.path.join(out, "manifest.jsonl"),
                                       os.path.join(out, "shards"),
                                       progress=False)
    assert summary["splits"]["train"]["records"] == 9
    assert summary["splits"]["train"]["reencoded"] == 0


def test_val_folder_name_is_accepted(tmp_path):
    root = _split_tree(str(tmp_path / "p"), {"train": 2, "val": 1})
    image_folder.import_image_folder(root, str(tmp_path / "out"))
    splits = {x["split"] for x in _lines(str(tmp_path / "out"))}
    assert splits == {"train", "val"}


def _import(root, out, **kwargs):
    image_folder.import_image_folder(root, out, **kwargs)
    return _lines(out)


def test_seeded_split_is_stable_and_keeps_fractions(tmp_path):
    root = _flat_tree(str(tmp_path / "flat"), n=200)
    a = _import(root, str(tmp_path / "a"), seed=3)
    b = _import(root, str(tmp_path / "b"), seed=3)
    splits = [x["split"] for x in a]
    assert splits == [x["split"] for x in b]
    n = len(splits)
    assert abs(splits.count("test") / n - 0.1) < 0.04
    assert abs(splits.count("val") / n - 0.1) < 0.04
    # A photo's split depends on its own name only: adding photos moves
    # none of the others.
    _photo(os.path.join(root, "coat", "extra.jpg"), COLOURS["coat"])
    before = {x["id"]: x["split"] for x in a}
    c = _import(root, str(tmp_path / "c"), seed=3)
    assert len(c) == n + 1
    assert all(before[x["id"]] == x["split"] for x in c if x["id"] in before)
    other = _import(root, str(tmp_path / "d"), seed=4)
    assert [x["split"] for x in other if x["id"] in before] != splits


def test_empty_class_folder_is_an_error(tmp_path):
    root = _split_tree(str(tmp_path / "p"))
    os.makedirs(os.path.join(root, "train", "scarf"))
    with pytest.raises(image_folder.ImageFolderError,
                       match=r"train/scarf holds no image"):
        image_folder.import_image_folder(root, str(tmp_path / "out"))
    assert not os.path.exists(tmp_path / "out" / "manifest.jsonl")


def test_class_in_test_but_not_train_is_an_error(tmp_path):
    root = _split_tree(str(tmp_path / "p"))
    _photo(os.path.join(root, "test", "Hat", "x.jpg"), (1, 2, 3))
    with pytest.raises(image_folder.ImageFolderError,
                       match=r"test has class folder\(s\) \['Hat'\]"):
        image_folder.import_image_folder(root, str(tmp_path / "out"))


def test_file_that_is_not_an_image(tmp_path):
    root = _split_tree(str(tmp_path / "p"))
    # By extension: named in the error, or skipped when asked.
    notes = os.path.join(root, "train", "coat", "notes.txt")
    open(notes, "w").write("not a photo")
    with pytest.raises(image_folder.ImageFolderError,
                       match=r"train/coat/notes.txt"):
        image_folder.import_image_folder(root, str(tmp_path / "o1"))
    report = image_folder.import_image_folder(root, str(tmp_path / "o2"),
                                              ignore_other_files=True)
    assert report["images"] == 15
    # By content: a .jpg that is not one is named with its path.
    os.remove(notes)
    bad = os.path.join(root, "train", "coat", "broken.jpg")
    open(bad, "wb").write(b"\x00" * 50)
    with pytest.raises(manifest.ManifestError, match="broken.jpg"):
        image_folder.import_image_folder(root, str(tmp_path / "o3"))
    report = image_folder.import_image_folder(root, str(tmp_path / "o4"),
                                              skip_bad=True)
    assert report["images"] == 15
    assert "broken.jpg" in report["skipped_missing_images"][0]


def test_hidden_files_are_not_photos(tmp_path):
    root = _split_tree(str(tmp_path / "p"))
    open(os.path.join(root, "train", "coat", ".DS_Store"), "w").write("x")
    os.makedirs(os.path.join(root, ".cache"))
    report = image_folder.import_image_folder(root, str(tmp_path / "o"))
    assert report["images"] == 15


def test_both_val_and_validation_is_an_error(tmp_path):
    root = _split_tree(str(tmp_path / "p"))
    _split_tree(root, {"val": 1})
    with pytest.raises(image_folder.ImageFolderError, match="both val/"):
        image_folder.import_image_folder(root, str(tmp_path / "o"))


def test_csv_adds_attributes_domain_and_items(tmp_path):
    root = _flat_tree(str(tmp_path / "flat"), n=4)
    rows = ["path,colour,domain,item,fit"]
    for cls in COLOURS:
        for i in range(4):
            rows.append(f"{cls}/{cls}{i}.jpg,{'dark' if i % 2 else 'light'}"
                        f",{'street' if i == 3 else ''},{cls}-{i // 2},"
                        f"{'' if i == 0 else 'loose'}")
    # By file name too, when unique.
    rows[-1] = rows[-1].replace("hat/hat3.jpg", "hat3.jpg")
    table = tmp_path / "labels.csv"
    table.write_text("\n".join(rows) + "\n")
    # "fit" has one value only: not an attribute.
    with pytest.raises(image_folder.ImageFolderError, match=r"\['fit'\]"):
        image_folder.import_image_folder(root, str(tmp_path / "o"),
                                         csv_path=str(table))
    table.write_text("\n".join(r.replace(",loose", ",tight")
                               if "0.jpg" in r or "1.jpg" in r else r
                               for r in rows) + "\n")
    image_folder.import_image_folder(root, str(tmp_path / "o"),
                                     csv_path=str(table))
    lines = {x["id"]: x for x in _lines(str(tmp_path / "o"))}
    assert lines["hat/hat3"]["domain"] == "street"
    assert lines["hat/hat0"]["domain"] == "shop"
    assert lines["coat/coat1"]["attributes"] == {
        "category": "coat", "colour": "dark", "fit": "tight"}
    assert lines["coat/coat0"]["attributes"]["fit"] is None
    # Photos of one item share a split.
    for cls in COLOURS:
        for item in (0, 1):
            ids = [f"{cls}/{cls}{2 * item + k}" for k in (0, 1)]
            assert lines[ids[0]]["item_id"] == f"{cls}-{item}"
            assert lines[ids[0]]["split"] == lines[ids[1]]["split"]
    schema = json.load(open(tmp_path / "o" / "schema.json"))
    assert [a["name"] for a in schema["attributes"]] == [
        "category", "colour", "fit"]


@pytest.mark.parametrize("rows, match", [
    (["name,colour", "a.jpg,red"], r"line 1: no key column 'path'"),
    (["path,colour", "coat/coat0.jpg,red", "nope.jpg,blue"],
     r"labels.csv, line 3: path='nope.jpg' names no photo"),
    (["path,colour", "coat/coat0.jpg,red", "coat/coat0,blue"],
     r"line 3: coat/coat0.jpg has a row already"),
    (["path,domain,colour", "coat/coat0.jpg,shopfront,red"],
     r"line 2: domain 'shopfront'"),
    (["path,category", "coat/coat0.jpg,red"], r"column 'category'"),
    (["path,sleeve length", "coat/coat0.jpg,red"],
     r"column 'sleeve length' cannot name an attribute"),
])
def test_csv_errors_name_the_line(tmp_path, rows, match):
    root = _flat_tree(str(tmp_path / "flat"), n=2)
    table = tmp_path / "labels.csv"
    table.write_text("\n".join(rows) + "\n")
    with pytest.raises(image_folder.ImageFolderError, match=match):
        image_folder.import_image_folder(root, str(tmp_path / "o"),
                                         csv_path=str(table))


def test_script_writes_shards_and_reports_errors(tmp_path):
    root = _split_tree(str(tmp_path / "p"))
    out = str(tmp_path / "out")
    script = os.path.join(ROOT, "datasets", "convert_image_folder.py")
    done = subprocess.run([sys.executable, script, "--root", root, "--out",
                           out, "--quiet"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "15 photos (split folders)" in done.stdout
    files = pipeline.shard_files(os.path.join(out, "shards"), "train")
    ds = pipeline.make_dataset(files, pipeline.load_schema(
        os.path.join(out, "shards")), image_size=8, batch_size=9,
        training=False)
    images, labels = next(iter(ds))
    # Each photo is its class's colour, and the label is its folder.
    for image, label in zip(images.numpy(), labels["category"].numpy()):
        colour = COLOURS[sorted(COLOURS)[label]]
        np.testing.assert_allclose(image.mean((0, 1)), colour, atol=6)
    os.makedirs(os.path.join(root, "test", "scarf"))
    done = subprocess.run([sys.executable, script, "--root", root, "--out",
                           str(tmp_path / "o2"), "--quiet"],
                          capture_output=True, text=True)
    assert done.returncode == 1
    assert "test/scarf holds no image" in done.stderr
