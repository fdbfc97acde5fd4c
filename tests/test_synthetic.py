"""Tests for the X-Domain-synth renderer (mtct_tf/data/synthetic.py)."""

import collections
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from mtct_tf.attributes import synth_schema
from mtct_tf.data import synthetic
from mtct_tf.data.manifest import read_manifest

SIZE = 64
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _render(out, **kwargs):
    kwargs = dict(dict(items=6, seed=0, image_size=SIZE, progress=False),
                  **kwargs)
    return synthetic.render_dataset(str(out), **kwargs)


def _files(root):
    """Relative path -> bytes for every file below ``root``."""
    out = {}
    for d, _, names in os.walk(root):
        for n in names:
            path = os.path.join(d, n)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = f.read()
    return out


def _pixels(rec):
    return np.asarray(Image.open(io.BytesIO(rec["jpeg"])), np.float32)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "ds"
    summary = _render(out)
    return out, summary


def test_layout_and_manifest_read(dataset):
    out, summary = dataset
    entries, problems = read_manifest(str(out / "manifest.jsonl"),
                                      synth_schema())
    assert problems == []
    assert len(entries) == summary["images"] == 6 * 4
    assert collections.Counter(e.domain for e in entries) == {
        "shop": 6, "street": 18}
    assert synth_schema().load(str(out / "schema.json")) == synth_schema()
    for e in entries:
        with Image.open(e.path) as img:
            assert img.format == "JPEG" and img.size == (SIZE, SIZE)
        assert (e.width, e.height) == (SIZE, SIZE)
    names = sorted(_files(out))
    assert not [n for n in names if n.endswith(".tmp")]
    assert len(names) == 24 + 2  # Images, schema.json, manifest.jsonl.


def test_same_seed_same_bytes_any_worker_count(dataset, tmp_path):
    out, _ = dataset
    _render(tmp_path / "again", workers=2)
    first, second = _files(out), _files(tmp_path / "again")
    assert sorted(first) == sorted(second)
    for name in first:
        assert first[name] == second[name], name


def test_different_seed_differs(dataset, tmp_path):
    out, _ = dataset
    _render(tmp_path / "other", seed=1)
    first, other = _files(out), _files(tmp_path / "other")
    assert first["manifest.jsonl"] != other["manifest.jsonl"]
    same = [n for n in first if n.endswith(".jpg") and first[n] == other[n]]
    assert same == []


def test_split_by_item(tmp_path):
    summary = _render(tmp_path / "ds", items=20, shop_per_item=1,
                      street_per_item=1, seed=3)
    assert summary["splits"] == {"train": 12, "val": 4, "test": 4}
    entries, _ = read_manifest(str(tmp_path / "ds" / "manifest.jsonl"),
                               synth_schema())
    split_of = collections.defaultdict(set)
    for e in entries:
        split_of[e.item_id].add(e.split)
    assert len(split_of) == 20
    assert all(len(s) == 1 for s in split_of.values())
    assert synthetic.assign_splits(5, 0, (1.0, 0.0, 0.0)) == ["train"] * 5
    with pytest.raises(ValueError, match="split_fractions"):
        synthetic.assign_splits(5, 0, (0.5, 0.2, 0.2))


def test_shop_bbox_is_tight_and_covers_the_garment():
    for i in range(12):
        rec = synthetic.render_item(i, 0, image_size=SIZE, street_per_item=0,
                                    missing_rate=0)["records"][0]
        x = _pixels(rec)
        x0, y0, x1, y1 = rec["bbox"]
        assert 0 <= x0 < x1 <= SIZE and 0 <= y0 < y1 <= SIZE
        diff = np.abs(x - x[0, 0]).max(-1)
        differs = diff > 10
        # The garment fills most of its box; the shadow falls right and
        # down, so above and left of the box is plain background (up to
        # JPEG ringing).
        assert differs[y0:y1, x0:x1].mean() > 0.5, i
        assert diff[:max(0, y0 - 2)].max(initial=0) < 25, i
        assert diff[:, :max(0, x0 - 2)].max(initial=0) < 25, i
        # Tight: the outermost rows and columns of the box hold garment.
        for edge in (differs[y0], differs[y1 - 1], differs[:, x0],
                     differs[:, x1 - 1]):
            assert edge.any(), i


def test_street_bbox_holds_the_garment_colour():
    closer, total = 0, 0
    for i in range(10):
        item = synthetic.render_item(i, 0, image_size=SIZE, missing_rate=0)
        colour = np.array(synthetic.PALETTE[item["attributes"]["colour"]])
        for rec in item["records"][1:]:
            x = _pixels(rec)
            x0, y0, x1, y1 = rec["bbox"]
            assert 0 <= x0 < x1 <= SIZE and 0 <= y0 < y1 <= SIZE
            assert 0.35 * SIZE - 2 <= max(x1 - x0, y1 - y0) <= 0.7 * SIZE + 2
            inside = np.zeros((SIZE, SIZE), bool)
            inside[y0:y1, x0:x1] = True
            dist = np.abs(x - colour).sum(-1)
            closer += np.median(dist[inside]) < np.median(dist[~inside])
            total += 1
    assert closer / total >= 0.85, (closer, total)


def test_street_is_harder_version_of_shop():
    item = synthetic.render_item(4, 0, image_size=SIZE, missing_rate=0)
    shop, *street = item["records"]
    assert [r["domain"] for r in item["records"]] == ["shop"] + ["street"] * 3
    assert all(r["attributes"] == shop["attributes"] for r in street)

    def clutter(r):  # Colour spread outside the garment box.
        outside = np.ones((SIZE, SIZE), bool)
        x0, y0, x1, y1 = r["bbox"]
        outside[y0:y1, x0:x1] = False
        return _pixels(r)[outside].std(0).mean()

    assert clutter(shop) < 3
    assert min(clutter(r) for r in street) > 15


def test_missing_rate_is_honoured():
    labels = []
    for i in range(40):
        for rec in synthetic.render_item(
                i, 5, image_size=32, missing_rate=0.3)["records"]:
            labels += [v for k, v in rec["attributes"].items()
                       if k != "sleeve_shape"]
    rate = np.mean([v is None for v in labels])
    assert abs(rate - 0.3) < 0.04, rate
    rec = synthetic.render_item(0, 5, image_size=32, missing_rate=0.0)
    assert all(r["attributes"] == rec["attributes"] for r in rec["records"])


def test_every_value_appears_and_sleeve_shape_follows_sleeves():
    counts = collections.defaultdict(collections.Counter)
    for i in range(150):
        attrs = synthetic.render_item(i, 7, image_size=32, street_per_item=0,
                                      missing_rate=0)["attributes"]
        for k, v in attrs.items():
            counts[k][v] += 1
        assert (attrs["sleeve_shape"] is None) == (
            attrs["sleeve_length"] == "sleeveless")
    for a in synth_schema():
        for value in a.values:
            assert counts[a.name][value] >= 5, (a.name, value, counts[a.name])


@pytest.mark.parametrize("name", synth_schema().names)
def test_every_value_is_drawn_differently(name):
    """Forcing one attribute's values on one item changes the shop image."""
    base = {"sleeve_length": "long"} if name == "sleeve_shape" else {}
    images = {}
    for value in synth_schema()[name].values:
        rec = synthetic.render_item(
            3, 0, image_size=SIZE, street_per_item=0,
            attributes=dict(base, **{name: value}))["records"][0]
        images[value] = _pixels(rec)
    values = list(images)
    for i, a in enumerate(values):
        for b in values[i + 1:]:
            changed = (np.abs(images[a] - images[b]).max(-1) > 40).mean()
            assert changed > 0.004, (name, a, b, changed)


def test_shop_colour_is_the_dominant_garment_colour():
    for i in range(30):
        item = synthetic.render_item(i, 2, image_size=SIZE, street_per_item=0)
        x = _pixels(item["records"][0])
        x0, y0, x1, y1 = item["records"][0]["bbox"]
        crop = x[y0:y1, x0:x1].reshape(-1, 3)
        fg = crop[np.abs(crop - x[0, 0]).max(-1) > 30]  # Not background.
        share = {name: (np.abs(fg - rgb).max(-1) < 45).mean()
                 for name, rgb in synthetic.PALETTE.items()}
        truth = item["attributes"]["colour"]
        if truth != "white":  # White garments blend into light backgrounds.
            assert max(share, key=share.get) == truth, (i, truth, share)


def test_contact_sheet(dataset, tmp_path):
    out, _ = dataset
    path = synthetic.contact_sheet(str(out), str(tmp_path / "sheet.png"),
                                   n_items=3)
    with Image.open(path) as img:
        w, h = img.size
    assert h == 3 * (124 + 4) + 4 and w == 190 + 4 * (SIZE + 4)
    records = synthetic.render_item(0, 0, image_size=SIZE)["records"]
    synthetic.contact_sheet(records, str(tmp_path / "s2.png"), n_items=1)
    assert os.path.getsize(tmp_path / "s2.png") > 1000


def test_cli(tmp_path):
    out = tmp_path / "cli"
    run = subprocess.run(
        [sys.executable, os.path.join(ROOT, "datasets", "make_synthetic.py"),
         "--out", str(out), "--items", "2", "--image_size", "32",
         "--street_per_item", "1", "--missing_rate", "0", "--quiet"],
        capture_output=True, text=True, cwd=str(tmp_path), check=True)
    assert json.loads(run.stdout)["images"] == 4
    lines = (out / "manifest.jsonl").read_text().splitlines()
    assert len(lines) == 4
    bad = subprocess.run(
        [sys.executable, os.path.join(ROOT, "datasets", "make_synthetic.py"),
         "--out", str(out), "--items", "0"], capture_output=True, text=True)
    assert bad.returncode == 2 and "items=0" in bad.stderr


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="missing_rate=1.5"):
        _render(tmp_path / "x", missing_rate=1.5)
    with pytest.raises(KeyError, match="cape"):
        synthetic.render_item(0, 0, attributes={"category": "cape"})


def test_interrupted_rewrite_leaves_no_manifest(tmp_path, monkeypatch):
    _render(tmp_path / "ds")
    real = synthetic.render_item

    def failing(index, *args, **kwargs):
        if index == 3:
            raise RuntimeError("interrupted")
        return real(index, *args, **kwargs)

    monkeypatch.setattr(synthetic, "render_item", failing)
    with pytest.raises(RuntimeError, match="interrupted"):
        _render(tmp_path / "ds")
    assert not (tmp_path / "ds" / "manifest.jsonl").exists()
    assert not [n for n in _files(tmp_path / "ds") if n.endswith(".tmp")]


def test_paper_regime_few_street_items_each_paired(tmp_path):
    summary = _render(tmp_path / "ds", items=30, street_items=10,
                      street_per_item=2, seed=5)
    assert summary["street_items"] == 10
    assert summary["shop"] == 30 and summary["street"] == 20
    # Street items are split on their own, with exact counts.
    assert summary["street_splits"] == {"train": 6, "val": 2, "test": 2}
    assert summary["splits"] == {"train": 18, "val": 6, "test": 6}
    entries, problems = read_manifest(str(tmp_path / "ds" / "manifest.jsonl"),
                                      synth_schema())
    assert problems == []
    by_item = collections.defaultdict(lambda: collections.Counter())
    split_of = {}
    for e in entries:
        by_item[e.item_id][e.domain] += 1
        assert split_of.setdefault(e.item_id, e.split) == e.split
    # Every item has its shop image; every street image has its shop pair.
    assert all(c["shop"] == 1 for c in by_item.values())
    assert sorted(c["street"] for c in by_item.values()) == [0] * 20 + [2] * 10
    chosen = synthetic.street_items_of(30, 5, 10)
    assert {f"it{i:05d}" for i in np.flatnonzero(chosen)} == {
        k for k, c in by_item.items() if c["street"]}
    # A street item's shop image is the one it has without street images.
    item = int(np.flatnonzero(chosen)[0])
    alone = synthetic.render_item(item, 5, image_size=SIZE, street_per_item=0)
    with open(tmp_path / "ds" / alone["records"][0]["path"], "rb") as f:
        assert f.read() == alone["records"][0]["jpeg"]
    with pytest.raises(ValueError, match="street_items"):
        synthetic.street_items_of(5, 0, 6)
