"""Tests of manifest -> TFRecord conversion (mtct_tf/data/convert.py)."""

import glob
import importlib.util
import io
import json
import os
import re
import signal
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from conftest import HEIGHT, TINY_SCHEMA, TRANSPARENT_ROWS, WIDTH
from PIL import Image

from mtct_tf.data import convert, pipeline
from mtct_tf.data.manifest import ManifestError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _doc_feature_spec():
    """The ``feature_spec`` function of docs/DATA_FORMAT.md, executed."""
    with open(os.path.join(REPO, "docs", "DATA_FORMAT.md"),
              encoding="utf-8") as f:
        text = f.read()
    block = re.search(r"### Feature spec.*?```python\n(.*?)```", text,
                      re.DOTALL).group(1)
    namespace = {}
    exec(block, namespace)  # noqa: S102 - our own documentation.
    return namespace["feature_spec"]


def _records(out_dir, split):
    """Parsed records of a split, read with the documented plain spec."""
    spec = _doc_feature_spec()(TINY_SCHEMA.names)
    out = []
    for path in pipeline.shard_files(out_dir, split):
        for raw in tf.data.TFRecordDataset(path):
            parsed = tf.io.parse_single_example(raw, spec)
            out.append({
                k: (v.values.numpy().tolist() if isinstance(v, tf.SparseTensor)
                    else v.numpy())
                for k, v in parsed.items()
            })
    return out


def _load_cli():
    spec = importlib.util.spec_from_file_location(
        "convert_manifest_cli", os.path.join(REPO, "datasets",
                                             "convert_manifest.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _finished_shards(out_dir):
    return sorted(n for n in os.listdir(out_dir) if convert.SHARD_RE.match(n))


def test_doc_spec_equals_library_spec():
    assert _doc_feature_spec()(TINY_SCHEMA.names) == convert.feature_spec(
        TINY_SCHEMA)


def test_round_trip_every_field(tiny_shards):
    dataset, out, _ = tiny_shards
    lines = {line["id"]: line for line in dataset.lines}
    records = [r for split in ("train", "val", "test")
               for r in _records(out, split)]
    assert sorted(r["image/source_id"].decode() for r in records) == sorted(
        lines)
    for r in records:
        line = lines[r["image/source_id"].decode()]
        assert r["image/domain"].decode() == line["domain"]
        assert r["image/item_id"].decode() == line["item_id"]
        assert r["image/split"].decode() == line["split"]
        assert (r["image/height"], r["image/width"]) == (HEIGHT, WIDTH)
        codes = TINY_SCHEMA.encode(line["attributes"])
        for name in TINY_SCHEMA.names:
            assert r[f"image/attribute/{name}"] == codes[name], name
        box = line["bbox"]
        if box is None:
            for key in ("xmin", "ymin", "xmax", "ymax"):
                assert r[f"image/object/bbox/{key}"] == []
            assert r["image/object/class/label"] == []
            assert r["image/object/area"] == []
        else:
            want = [box[0] / WIDTH, box[1] / HEIGHT, box[2] / WIDTH,
                    box[3] / HEIGHT]
            got = [r[f"image/object/bbox/{k}"][0]
                   for k in ("xmin", "ymin", "xmax", "ymax")]
            np.testing.assert_allclose(got, want, rtol=1e-6)
            assert r["image/object/class/label"] == [1]
            assert r["image/object/class/text"] == [b"garment"]
            assert r["image/object/is_crowd"] == [0]
            np.testing.assert_allclose(
                r["image/object/area"],
                [(box[2] - box[0]) * (box[3] - box[1])])
        decoded = np.asarray(Image.open(io.BytesIO(r["image/encoded"])))
        assert decoded.shape == (HEIGHT, WIDTH, 3)
        # Only the RGB PNG input (it00-street) stays PNG.
        fmt = "png" if line["id"] == "it00-street" else "jpeg"
        assert r["image/format"].decode() == fmt
        expected = dataset.expected[line["id"]].astype(int)
        # Kept files decode exactly; re-encoded ones lose a little more at
        # the box edges (chroma subsampling); wrong colour handling (say,
        # inverted CMYK) would be off by ~100.
        error = np.abs(decoded.astype(int) - expected)
        if line["id"] in ("it00-shop", "it00-street"):
            assert error.max() == 0
        assert error.mean() < 5, line["id"]
        centre = dataset.garment[line["id"]]
        cy, cx = (HEIGHT // 2, WIDTH // 2) if box is None else (
            (box[1] + box[3]) // 2, (box[0] + box[2]) // 2)
        np.testing.assert_allclose(decoded[cy, cx], centre, atol=6)


def test_formats_kept_or_reencoded(tiny_shards):
    dataset, out, summary = tiny_shards
    by_id = {r["image/source_id"].decode(): r for r in _records(out, "train")}
    root = dataset.root
    # Plain RGB JPEG and RGB PNG are stored byte for byte.
    for image_id, ext, fmt in (("it00-shop", "jpg", "jpeg"),
                               ("it00-street", "png", "png")):
        domain = image_id.split("-")[1]
        with open(f"{root}/images/{domain}/{image_id}.{ext}", "rb") as f:
            assert by_id[image_id]["image/encoded"] == f.read()
        assert by_id[image_id]["image/format"].decode() == fmt
    # Greyscale, CMYK, RGBA, palette -> RGB JPEG.
    for image_id in ("it01-shop", "it01-street", "it02-shop", "it02-street"):
        encoded = by_id[image_id]["image/encoded"]
        img = Image.open(io.BytesIO(encoded))
        assert (img.format, img.mode) == ("JPEG", "RGB"), image_id
        assert by_id[image_id]["image/format"] == b"jpeg"
    # The RGBA image's transparent rows are composited on white.
    rgba = np.asarray(Image.open(io.BytesIO(
        by_id["it01-street"]["image/encoded"])))
    assert rgba[-TRANSPARENT_ROWS + 1:].min() >= 250
    assert rgba[: -TRANSPARENT_ROWS - 1].max() <= 240
    assert summary["splits"]["train"]["reencoded"] == 4
    assert summary["splits"]["train"]["formats"] == {"jpeg": 7, "png": 1}


def test_layout_and_summary(tiny_shards):
    _, out, summary = tiny_shards
    assert sorted(os.listdir(out)) == [
        "schema.json", "summary.json",
        "test-00000-of-00002.tfrecord", "test-00001-of-00002.tfrecord",
        "train-00000-of-00002.tfrecord", "train-00001-of-00002.tfrecord",
        "val-00000-of-00002.tfrecord", "val-00001-of-00002.tfrecord",
    ]
    with open(os.path.join(out, "summary.json"), encoding="utf-8") as f:
        assert json.load(f) == summary
    assert pipeline.load_schema(out) == TINY_SCHEMA
    train = summary["splits"]["train"]
    assert summary["records"] == 12
    assert train["records"] == 8
    assert train["domains"] == {"shop": 4, "street": 4}
    assert train["items"] == 4
    # colour: it02-street is null; sleeve: item 1 null, item 3 absent.
    assert train["missing_labels"] == {"category": 0, "colour": 1,
                                       "sleeve": 4}
    assert summary["splits"]["val"]["missing_labels"]["sleeve"] == 0
    assert summary["splits"]["test"]["domains"] == {"shop": 1, "street": 1}
    assert summary["skipped"] == [] and summary["num_skipped"] == 0


def test_records_shuffled_seeded_and_independent_of_workers(
        tiny_dataset, tmp_path, monkeypatch):
    def order(out):
        return [r["image/source_id"].decode() for r in _records(out, "train")]

    def shard_bytes(out):
        names = _finished_shards(out)
        return {n: open(os.path.join(out, n), "rb").read() for n in names}

    serial = str(tmp_path / "serial")
    convert.convert_manifest(tiny_dataset.manifest, serial, num_shards=1,
                             workers=1, progress=False)
    # So that the 12 images really go through a process pool.
    monkeypatch.setattr(convert, "_CHUNK", 2)
    monkeypatch.setattr(convert, "_MIN_IMAGES_PER_WORKER", 1)
    contexts, get_context = [], convert.multiprocessing.get_context
    monkeypatch.setattr(convert.multiprocessing, "get_context",
                        lambda method: contexts.append(method)
                        or get_context(method))
    parallel = str(tmp_path / "parallel")
    convert.convert_manifest(tiny_dataset.manifest, parallel, num_shards=1,
                             workers=2, progress=False)
    assert contexts == ["spawn"]
    assert shard_bytes(serial) == shard_bytes(parallel)
    in_file_order = [line["id"] for line in tiny_dataset.lines
                     if line["split"] == "train"]
    assert sorted(order(serial)) == sorted(in_file_order)
    assert order(serial) != in_file_order
    reseeded = str(tmp_path / "reseeded")
    convert.convert_manifest(tiny_dataset.manifest, reseeded, num_shards=1,
                             workers=1, progress=False, seed=1)
    assert order(reseeded) != order(serial)


def _break_line(dataset, case):
    """Makes line 3 (or the file behind it) bad; returns the expected error."""
    lines = [dict(line) for line in dataset.lines]
    bad = lines[2]  # it01-shop: greyscale JPEG, width/height given.
    path = os.path.join(dataset.root, bad["path"])
    if case == "unknown_value":
        bad["attributes"] = {"colour": "purple"}
        expected = "unknown value 'purple' for attribute 'colour'"
    elif case == "unknown_attribute":
        bad["attributes"] = {"hood": "yes"}
        expected = "unknown attribute 'hood'"
    elif case == "missing_field":
        del bad["item_id"]
        expected = r"missing field\(s\) item_id"
    elif case == "bad_json":
        lines[2] = '{"id": "x", '
        expected = "not valid JSON"
    elif case == "non_utf8":
        lines[2] = json.dumps(bad).encode().replace(b"it01-shop", b"it\xff")
        expected = "not UTF-8"
    elif case == "duplicate_id":
        bad["id"] = lines[0]["id"]
        expected = "duplicate id 'it00-shop' \\(first on line 1\\)"
    elif case == "outside_root":
        bad["path"] = "../escape.jpg"
        expected = "leaves the dataset root"
    elif case == "missing_file":
        os.remove(path)
        expected = "does not exist"
    elif case == "undecodable":
        with open(path, "wb") as f:
            f.write(b"this is not a JPEG file at all")
        expected = "cannot be decoded as an image"
    elif case == "truncated":
        with open(path, "rb") as f:
            data = f.read()
        with open(path, "wb") as f:
            f.write(data[: len(data) // 2])
        expected = "cannot be decoded as an image"
    elif case == "size_mismatch":
        bad["width"] = WIDTH + 1
        expected = f"is {WIDTH}x{HEIGHT} .* but the manifest says width=33"
    elif case == "bbox_outside_image":
        # No width / height in the manifest: only the image can tell.
        del bad["width"], bad["height"]
        bad["bbox"] = [0, 0, WIDTH, HEIGHT + 1]
        expected = f"bbox .* lies outside the {WIDTH}x{HEIGHT} image"
    elif case == "bbox_outside_manifest_size":
        bad["bbox"] = [0, 0, WIDTH + 2, HEIGHT]
        expected = f"lies outside the {WIDTH}x{HEIGHT} image"
    else:
        raise AssertionError(case)
    dataset.write_manifest(lines)
    return expected


ERROR_CASES = [
    "unknown_value", "unknown_attribute", "missing_field", "bad_json",
    "non_utf8", "duplicate_id", "outside_root", "missing_file", "undecodable",
    "truncated", "size_mismatch", "bbox_outside_image",
    "bbox_outside_manifest_size",
]


@pytest.mark.parametrize("case", ERROR_CASES)
def test_bad_line_error_names_manifest_line(tiny_dataset, tmp_path, case):
    expected = _break_line(tiny_dataset, case)
    out = str(tmp_path / "out")
    with pytest.raises(ManifestError) as info:
        convert.convert_manifest(tiny_dataset.manifest, out, workers=1,
                                 progress=False)
    message = str(info.value)
    assert message.startswith(f"{tiny_dataset.manifest}, line 3: "), message
    assert re.search(expected, message), message
    if os.path.isdir(out):
        assert os.listdir(out) == []  # Not even temporary files.


def test_empty_manifest(tiny_dataset, tmp_path):
    tiny_dataset.write_manifest(["", "   "])
    with pytest.raises(ManifestError, match=re.escape(
            f"{tiny_dataset.manifest}: no valid manifest line (the file is "
            "empty)")):
        convert.convert_manifest(tiny_dataset.manifest, str(tmp_path / "o"),
                                 workers=1, progress=False)


def test_decompression_bomb_refused(tiny_dataset, tmp_path):
    assert convert.MAX_PIXELS == 40_000_000
    with pytest.raises(ManifestError, match=r"line \d+: image .* 32x40 = "
                       r"1280 pixels, more than the limit of 1000"):
        convert.convert_manifest(tiny_dataset.manifest, str(tmp_path / "o"),
                                 workers=1, progress=False, max_pixels=1000)


def test_skip_bad_skips_and_reports(tiny_dataset, tmp_path, capsys):
    lines = [dict(line) for line in tiny_dataset.lines]
    lines[1]["attributes"] = {"colour": "purple"}           # line 2
    lines[4]["path"] = "images/none.jpg"                     # line 5
    with open(os.path.join(tiny_dataset.root, lines[7]["path"]), "wb") as f:
        f.write(b"garbage")                                  # line 8
    tiny_dataset.write_manifest(lines)
    out = str(tmp_path / "out")
    cli = _load_cli()
    assert cli.main(["--manifest", tiny_dataset.manifest, "--out", out,
                     "--skip_bad", "--workers", "1", "--num_shards", "1",
                     "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "9 records" in printed and "skipped 3" in printed
    summary = pipeline.load_summary(out)
    assert summary["records"] == 9 and summary["num_skipped"] == 3
    m = tiny_dataset.manifest
    assert [s.split(": ")[0] for s in summary["skipped"]] == [
        f"{m}, line 2", f"{m}, line 5", f"{m}, line 8"]
    assert "unknown value 'purple'" in summary["skipped"][0]
    assert "does not exist" in summary["skipped"][1]
    assert "cannot be decoded" in summary["skipped"][2]
    ids = {r["image/source_id"].decode() for split in ("train", "val", "test")
           for r in _records(out, split)}
    assert ids == {line["id"] for i, line in enumerate(lines)
                   if i not in (1, 4, 7)}


def test_cli_error_exit_status(tiny_dataset, tmp_path, capsys):
    _break_line(tiny_dataset, "unknown_value")
    cli = _load_cli()
    assert cli.main(["--manifest", tiny_dataset.manifest, "--out",
                     str(tmp_path / "o"), "--quiet", "--workers", "1"]) == 1
    assert f"{tiny_dataset.manifest}, line 3: unknown value" in (
        capsys.readouterr().err)


def test_schema_resolution(tiny_dataset, tmp_path):
    os.remove(os.path.join(tiny_dataset.root, "schema.json"))
    with pytest.raises(FileNotFoundError, match="schema.json does not exist"):
        convert.convert_manifest(tiny_dataset.manifest, str(tmp_path / "a"),
                                 workers=1, progress=False)
    path = str(tmp_path / "elsewhere.json")
    TINY_SCHEMA.save(path)
    summary = convert.convert_manifest(
        tiny_dataset.manifest, str(tmp_path / "b"), schema=path, workers=1,
        progress=False)
    assert summary["schema"] == "tiny" and summary["records"] == 12
    # A built-in schema by name: the tiny labels are not in it.
    with pytest.raises(ManifestError, match="line 1: unknown attribute"):
        convert.convert_manifest(tiny_dataset.manifest, str(tmp_path / "c"),
                                 schema="xdomain", workers=1, progress=False)


def test_resize_shorter_side_and_rescaled_boxes(tiny_dataset, tmp_path):
    out = str(tmp_path / "out")
    convert.convert_manifest(tiny_dataset.manifest, out, resize=16,
                             num_shards=1, workers=1, progress=False)
    records = {r["image/source_id"].decode(): r for r in _records(out, "train")}
    r = records["it00-street"]  # STREET_BOX (6, 8, 26, 32) on 32x40.
    assert (r["image/width"], r["image/height"]) == (16, 20)
    assert r["image/format"] == b"jpeg"
    np.testing.assert_allclose(
        [r[f"image/object/bbox/{k}"][0] for k in ("xmin", "ymin", "xmax",
                                                   "ymax")],
        [6 / 32, 8 / 40, 26 / 32, 32 / 40], rtol=1e-6)
    np.testing.assert_allclose(r["image/object/area"], [20 * 24 / 4])
    decoded = np.asarray(Image.open(io.BytesIO(r["image/encoded"])))
    assert decoded.shape == (20, 16, 3)
    np.testing.assert_allclose(decoded[10, 8], (220, 30, 30), atol=8)
    # Images already small enough are not touched.
    out2 = str(tmp_path / "out2")
    convert.convert_manifest(tiny_dataset.manifest, out2, resize=32,
                             num_shards=1, workers=1, progress=False)
    kept = {r["image/source_id"].decode(): r for r in _records(out2, "train")}
    with open(os.path.join(tiny_dataset.root, "images/shop/it00-shop.jpg"),
              "rb") as f:
        assert kept["it00-shop"]["image/encoded"] == f.read()


def test_failure_midway_leaves_no_finished_shard(tiny_dataset, tmp_path,
                                                 monkeypatch):
    out = str(tmp_path / "out")
    convert.convert_manifest(tiny_dataset.manifest, out, num_shards=2,
                             workers=1, progress=False)
    real = convert.make_example
    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5:
            raise OSError("disk full (simulated)")
        return real(*args, **kwargs)

    monkeypatch.setattr(convert, "make_example", failing)
    with pytest.raises(OSError, match="simulated"):
        convert.convert_manifest(tiny_dataset.manifest, out, num_shards=3,
                                 workers=1, progress=False)
    # The earlier conversion is gone, the new one left nothing behind.
    assert sorted(os.listdir(out)) == ["schema.json"]
    with pytest.raises(FileNotFoundError, match="No shards of split 'train'"):
        pipeline.shard_files(out, "train")
    monkeypatch.setattr(convert, "make_example", real)
    convert.convert_manifest(tiny_dataset.manifest, out, num_shards=3,
                             workers=1, progress=False)
    # The new set is complete.
    assert _finished_shards(out) == [
        convert.shard_name(s, i, 3) for s in ("test", "train", "val")
        for i in range(3)]
    assert len(pipeline.shard_files(out, "train")) == 3


_KILL_SCRIPT = """
import os, signal, sys
from mtct_tf.data import convert
real, calls = convert.make_example, []
def dying(*args, **kwargs):
    calls.append(1)
    if len(calls) == 5:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(*args, **kwargs)
convert.make_example = dying
convert.convert_manifest(sys.argv[1], sys.argv[2], num_shards=2, workers=1,
                         progress=False)
"""


def test_sigkill_leaves_no_finished_shard_and_rerun_completes(tiny_dataset,
                                                             tmp_path):
    out = str(tmp_path / "out")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run(
        [sys.executable, "-c", _KILL_SCRIPT, tiny_dataset.manifest, out],
        env=env, capture_output=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    names = os.listdir(out)
    assert names and all(n.startswith(".") and n.endswith(".tmp")
                         for n in names), names
    assert _finished_shards(out) == []
    with pytest.raises(FileNotFoundError, match="No shards"):
        pipeline.shard_files(out, "train")
    convert.convert_manifest(tiny_dataset.manifest, out, num_shards=2,
                             workers=1, progress=False)
    assert not glob.glob(os.path.join(out, ".*"))
    assert len(_records(out, "train")) == 8
