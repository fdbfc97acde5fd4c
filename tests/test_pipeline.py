"""Tests of the tf.data reader (mtct_tf/data/pipeline.py)."""

import io
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf
from conftest import BACKGROUND, COLOURS, TINY_SCHEMA
from PIL import Image

from mtct_tf.data import convert, pipeline


def _png(array):
    out = io.BytesIO()
    Image.fromarray(array).save(out, "PNG")
    return out.getvalue()


def _split_image(height=32, width=32):
    """Left half red, right half blue (uint8)."""
    image = np.zeros((height, width, 3), np.uint8)
    image[:, : width // 2] = COLOURS["red"]
    image[:, width // 2:] = COLOURS["blue"]
    return image


# --------------------------------------------------------------------------
# Files.


def test_shard_files_sorted_and_complete(tiny_shards):
    _, out, _ = tiny_shards
    files = pipeline.shard_files(out, "train")
    assert [os.path.basename(f) for f in files] == [
        "train-00000-of-00002.tfrecord", "train-00001-of-00002.tfrecord"]
    assert pipeline.load_schema(out) == TINY_SCHEMA
    assert pipeline.num_records(out, "train") == 8
    assert pipeline.num_records(out, "train", "street") == 4


def test_shard_files_errors(tiny_shards, tmp_path):
    _, out, _ = tiny_shards
    empty = str(tmp_path / "empty")
    os.makedirs(empty)
    with pytest.raises(FileNotFoundError) as info:
        pipeline.shard_files(empty, "train")
    assert empty in str(info.value)
    assert "train-NNNNN-of-NNNNN.tfrecord" in str(info.value)
    with pytest.raises(ValueError, match="split must be one of"):
        pipeline.shard_files(out, "training")

    broken = str(tmp_path / "broken")
    shutil.copytree(out, broken)
    os.remove(os.path.join(broken, "train-00001-of-00002.tfrecord"))
    with pytest.raises(ValueError, match="Incomplete or mixed set"):
        pipeline.shard_files(broken, "train")
    assert len(pipeline.shard_files(broken, "val")) == 2
    # Shards without summary.json (e.g. the detector's crops) are fine ...
    os.remove(os.path.join(broken, "summary.json"))
    assert len(pipeline.shard_files(broken, "val")) == 2
    # ... but not with a temporary shard left by a killed conversion.
    open(os.path.join(broken, ".val-00001-of-00002.tfrecord.tmp"), "w").close()
    with pytest.raises(ValueError, match="Unfinished conversion"):
        pipeline.shard_files(broken, "val")
    assert len(pipeline.shard_files(broken, "test")) == 2
    with pytest.raises(FileNotFoundError, match="schema.json"):
        pipeline.load_schema(empty)


# --------------------------------------------------------------------------
# One record.


def test_parse_example(tiny_shards):
    dataset, out, _ = tiny_shards
    lines = {line["id"]: line for line in dataset.lines}
    seen = set()
    for path in pipeline.shard_files(out, "train"):
        for raw in tf.data.TFRecordDataset(path):
            r = pipeline.parse_example(raw, TINY_SCHEMA)
            image_id = r["source_id"].numpy().decode()
            line = lines[image_id]
            seen.add(image_id)
            assert r["domain"].numpy().decode() == line["domain"]
            assert r["item_id"].numpy().decode() == line["item_id"]
            assert r["bbox"].dtype == tf.float32
            box = line["bbox"]
            want = [0, 0, 1, 1] if box is None else [
                box[1] / 40, box[0] / 32, box[3] / 40, box[2] / 32]
            np.testing.assert_allclose(r["bbox"].numpy(), want, rtol=1e-6)
            codes = TINY_SCHEMA.encode(line["attributes"])
            for name, label in r["labels"].items():
                assert label.dtype == tf.int32 and label.shape == ()
                assert int(label) == codes[name]
            raw_image = pipeline.decode_image(r["encoded"])
            assert raw_image.dtype == tf.uint8
            assert raw_image.shape == (40, 32, 3)
    assert len(seen) == 8


def test_decode_image_greyscale_and_rgba():
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    out = pipeline.decode_image(_png(grey)).numpy()
    assert out.shape == (3, 4, 3)
    np.testing.assert_array_equal(out, np.repeat(grey[..., None], 3, -1))
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 255
    out = pipeline.decode_image(_png(rgba)).numpy()
    assert out.shape == (2, 2, 3) and (out[..., 0] == 200).all()


def test_square_crop_keeps_the_aspect_ratio():
    # A 2-wide, 8-tall white bar on black in a 16x16 image: a square crop
    # keeps it a quarter as wide as tall; a plain crop stretches it.
    image = np.zeros((16, 16, 3), np.uint8)
    image[4:12, 7:9] = 255
    box = [4 / 16, 7 / 16, 12 / 16, 9 / 16]
    sq = pipeline.crop_and_resize(image, box, 8).numpy()[..., 0]
    np.testing.assert_array_equal(sq[:, :3], 0)
    np.testing.assert_array_equal(sq[:, 3:5], 255)
    np.testing.assert_array_equal(sq[:, 5:], 0)
    plain = pipeline.crop_and_resize(image, box, 8, square=False).numpy()
    assert (plain == 255).all()


def test_crop_and_resize_coordinates():
    """Box arithmetic, without the square expansion."""
    image = _split_image()
    red, blue = COLOURS["red"], COLOURS["blue"]
    # The whole image to 2x2: half-pixel centres fall on pixels 7.5 and
    # 23.5, inside the red and the blue half.
    out = pipeline.crop_and_resize(image, [0.0, 0.0, 1.0, 1.0], 2,
                                   square=False).numpy()
    assert out.dtype == np.float32 and out.shape == (2, 2, 3)
    np.testing.assert_array_equal(out[:, 0], [red, red])
    np.testing.assert_array_equal(out[:, 1], [blue, blue])
    # The middle half (columns 8..24): same picture.
    mid = pipeline.crop_and_resize(image, [0.0, 0.25, 1.0, 0.75], 2,
                                   square=False).numpy()
    np.testing.assert_array_equal(mid, out)
    # Left quarter only: all red.
    left = pipeline.crop_and_resize(image, [0.0, 0.0, 1.0, 0.25], 4,
                                    square=False).numpy()
    assert (left == np.float32(red)).all()
    # A margin of 1/2 box per side turns the middle half into everything.
    big = pipeline.crop_and_resize(image, [0.0, 0.25, 1.0, 0.75], 8,
                                   margin=0.5, square=False)
    np.testing.assert_array_equal(
        big, pipeline.crop_and_resize(image, [0.0, 0.0, 1.0, 1.0], 8,
                                      square=False))
    # Margins are clipped at the image border: x in [-0.5, 0.75] -> [0, 0.75].
    clipped = pipeline.crop_and_resize(image, [0.0, 0.0, 1.0, 0.25], 4,
                                       margin=2.0, square=False).numpy()
    np.testing.assert_array_equal(clipped, pipeline.crop_and_resize(
        image, [0.0, 0.0, 1.0, 0.75], 4, square=False))
    assert (clipped[:, 0] == np.float32(red)).all()
    assert (clipped[:, -1] == np.float32(blue)).all()
    # A degenerate box still gives one pixel, not an error.
    dot = pipeline.crop_and_resize(image, [0.5, 0.9, 0.5, 0.9], 3,
                                   square=False).numpy()
    assert (dot == np.float32(blue)).all()


def test_crop_and_resize_matches_numpy_on_pixel_boxes():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (40, 32, 3), dtype=np.uint8)
    box = [8 / 40, 4 / 32, 32 / 40, 28 / 32]  # Rows 8..32, columns 4..28.
    crop = image[8:32, 4:28].astype(np.float32)
    # Resized to its own size: the identity.
    same = pipeline.crop_and_resize(image, box, 24).numpy()
    np.testing.assert_array_equal(same, crop)
    # Halved: bilinear with half-pixel centres samples between pixel pairs,
    # i.e. averages 2x2 blocks.
    half = pipeline.crop_and_resize(image, box, 12).numpy()
    blocks = crop.reshape(12, 2, 12, 2, 3).mean(axis=(1, 3))
    np.testing.assert_allclose(half, blocks, atol=1e-3)
    # Pixel edges whose normalised float32 coordinates land just above
    # (30 / 50 * 50 > 30) or below (31 / 56 * 56 < 31) the integer: the box
    # must still be exactly rows 15..30, columns 31..46.
    image = rng.integers(0, 256, (50, 56, 3), dtype=np.uint8)
    out = pipeline.crop_and_resize(
        image, [15 / 50, 31 / 56, 30 / 50, 46 / 56], 15).numpy()
    np.testing.assert_array_equal(out, image[15:30, 31:46].astype(np.float32))


def test_preprocess_eval_and_training():
    image = _split_image(32, 32)
    encoded = tf.constant(_png(image))
    box = tf.constant([0.0, 0.0, 1.0, 1.0])
    eval_out = pipeline.preprocess(encoded, box, image_size=2, training=False,
                                   margin=0.0).numpy()
    np.testing.assert_array_equal(
        eval_out, pipeline.crop_and_resize(image, box, 2).numpy())

    def train(seed):
        return pipeline.preprocess(encoded, box, image_size=8, training=True,
                                   seed=seed).numpy()

    a, b = train(1), train(1)
    assert a.shape == (8, 8, 3) and a.dtype == np.float32
    assert 0.0 <= a.min() and a.max() <= 255.0
    np.testing.assert_array_equal(a, b)
    outs = [train(s) for s in range(8)]
    assert len({o.tobytes() for o in outs}) == 8
    # Flips happen for some seeds: red (R > B) sometimes on the right.
    right_is_red = [o[:, -1, 0].mean() > o[:, -1, 2].mean() for o in outs]
    assert any(right_is_red) and not all(right_is_red)


def test_item_kept_deterministic_and_nested():
    ids = tf.constant([f"it{i:02d}" for i in range(6)])
    kept = {f: set(np.flatnonzero(pipeline.item_kept(ids, f).numpy()))
            for f in (0.25, 0.5, 0.75, 1.0)}
    # Fingerprint64 is fixed: these sets must never change between versions,
    # or small-data experiments would silently use other items.
    assert kept[0.25] == {0, 1, 4}
    assert kept[0.5] == {0, 1, 3, 4}
    assert kept[0.25] <= kept[0.5] <= kept[0.75] <= kept[1.0]
    assert kept[1.0] == set(range(6))
    many = tf.constant([f"item{i}" for i in range(4000)])
    assert abs(pipeline.item_kept(many, 0.3).numpy().mean() - 0.3) < 0.03


# --------------------------------------------------------------------------
# Datasets.


def _collect(ds):
    images, labels, meta = [], {n: [] for n in TINY_SCHEMA.names}, []
    for batch in ds:
        images.append(batch[0].numpy())
        for n in TINY_SCHEMA.names:
            labels[n].append(batch[1][n].numpy())
        if len(batch) == 3:
            meta.extend(batch[2]["source_id"].numpy().astype(str))
    return (np.concatenate(images), {n: np.concatenate(v) for n, v in
                                     labels.items()}, meta)


def test_make_dataset_eval_values(tiny_shards):
    dataset, out, _ = tiny_shards
    lines = {line["id"]: line for line in dataset.lines}
    ds = pipeline.make_dataset(out, split="train", image_size=8, batch_size=3,
                               training=False, margin=0.0, with_meta=True)
    images, labels, ids = _collect(ds)
    assert images.dtype == np.float32 and images.shape == (8, 8, 8, 3)
    assert sorted(ids) == sorted(i for i, line in lines.items()
                                 if line["split"] == "train")
    for k, image_id in enumerate(ids):
        # The box (or the whole shop image) is a flat garment colour: the
        # crop must be that colour, not the background.
        garment = np.asarray(dataset.garment[image_id], np.float32)
        np.testing.assert_allclose(images[k][1:-1, 1:-1].mean((0, 1)),
                                   garment, atol=8, err_msg=image_id)
        codes = TINY_SCHEMA.encode(lines[image_id]["attributes"])
        for name in TINY_SCHEMA.names:
            assert labels[name][k] == codes[name], (image_id, name)
    # Eval order is deterministic.
    assert _collect(ds)[2] == ids
    # The margin brings in background around the street boxes.
    wide = pipeline.make_dataset(out, split="train", image_size=8,
                                 batch_size=8, training=False, margin=0.2,
                                 with_meta=True, domain="street")
    images, _, ids = _collect(wide)
    assert len(ids) == 4
    for image in images:
        np.testing.assert_allclose(image[0, 0], BACKGROUND, atol=8)


def test_make_dataset_whole_image_and_list_of_files(tiny_shards):
    _, out, _ = tiny_shards
    files = pipeline.shard_files(out, "test")
    ds = pipeline.make_dataset(files, TINY_SCHEMA, image_size=8, batch_size=2,
                               training=False, crop_to_bbox=False,
                               with_meta=True, domain="street")
    images, _, ids = _collect(ds)
    assert ids == ["it05-street"]
    assert np.allclose(images[0][0, 0], BACKGROUND, atol=8)  # Uncropped.
    with pytest.raises(ValueError, match="schema is required"):
        pipeline.make_dataset(files, None, image_size=8, batch_size=2,
                              training=False)
    with pytest.raises(ValueError, match="pass split="):
        pipeline.make_dataset(out, image_size=8, batch_size=2, training=False)
    with pytest.raises(ValueError, match="domain must be"):
        pipeline.make_dataset(out, split="val", image_size=8, batch_size=2,
                              training=False, domain="catwalk")
    with pytest.raises(ValueError, match="label_fraction"):
        pipeline.make_dataset(out, split="val", image_size=8, batch_size=2,
                              training=False, label_fraction=0.0)


def test_domain_filter(tiny_shards):
    _, out, _ = tiny_shards
    for domain in ("shop", "street"):
        ds = pipeline.make_dataset(out, split="train", image_size=4,
                                   batch_size=8, training=False,
                                   domain=domain, with_meta=True)
        batches = list(ds)
        assert len(batches) == 1
        domains = batches[0][2]["domain"].numpy().astype(str)
        assert list(domains) == [domain] * 4


def test_label_fraction_drops_unkept_items(tiny_shards):
    _, out, _ = tiny_shards

    def items(fraction):
        ds = pipeline.make_dataset(out, split="train", image_size=4,
                                   batch_size=8, training=False,
                                   label_fraction=fraction, with_meta=True)
        return sorted(i for b in ds for i in b[2]["item_id"].numpy().astype(
            str))

    half = items(0.5)
    assert half == sorted(["it00", "it01", "it03"] * 2)  # Both domains.
    assert items(0.5) == half
    assert set(items(0.25)) <= set(half)


def test_make_dataset_training(tiny_shards):
    _, out, _ = tiny_shards
    ds = pipeline.make_dataset(out, split="train", image_size=8, batch_size=3,
                               training=True, seed=7, shuffle_buffer=8)
    assert ds.element_spec[0].shape.as_list() == [3, 8, 8, 3]
    assert ds.element_spec[1]["colour"].shape.as_list() == [3]
    assert ds.element_spec[1]["colour"].dtype == tf.int32
    batches = list(ds.take(6))  # 18 > 8 records: repeats.
    assert len(batches) == 6
    for images, _ in batches:
        assert images.numpy().min() >= 0 and images.numpy().max() <= 255
    # A seed makes shuffling and augmentation reproducible.
    again = list(pipeline.make_dataset(
        out, split="train", image_size=8, batch_size=3, training=True,
        seed=7, shuffle_buffer=8).take(6))
    for (a, la), (b, lb) in zip(batches, again):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
        for name in TINY_SCHEMA.names:
            np.testing.assert_array_equal(la[name], lb[name])
    other = list(pipeline.make_dataset(
        out, split="train", image_size=8, batch_size=3, training=True,
        seed=8, shuffle_buffer=8).take(6))
    assert any(not np.array_equal(a.numpy(), b.numpy())
               for (a, _), (b, _) in zip(batches, other))
    # Finite when asked.
    once = pipeline.make_dataset(out, split="train", image_size=8,
                                 batch_size=3, training=True, repeat=False)
    assert sum(int(b[0].shape[0]) for b in once) == 6  # 8 // 3 * 3


def test_cache(tiny_shards, tmp_path):
    _, out, _ = tiny_shards
    for cache in (True, str(tmp_path / "cache")):
        ds = pipeline.make_dataset(out, split="val", image_size=4,
                                   batch_size=2, training=False, cache=cache,
                                   with_meta=True)
        first, second = _collect(ds)[2], _collect(ds)[2]
        assert first == second and len(first) == 2


def test_feature_spec_matches_features_module():
    keys = set(convert.feature_spec(TINY_SCHEMA))
    assert {"image/attribute/category", "image/attribute/colour",
            "image/attribute/sleeve", "image/encoded",
            "image/source_id"} <= keys


def test_colour_jitter_ranges_and_determinism():
    seed = tf.constant([3, 4], tf.int64)
    # On flat images saturation and contrast do nothing, so
    # out = v * gain + delta per channel: two levels give gain and delta.
    lo, hi = 80.0, 160.0
    out_lo = pipeline.colour_jitter(tf.fill([4, 4, 3], lo), seed).numpy()
    out_hi = pipeline.colour_jitter(tf.fill([4, 4, 3], hi), seed).numpy()
    gain = (out_hi[0, 0] - out_lo[0, 0]) / (hi - lo)
    delta = out_lo[0, 0] - lo * gain
    g, d = pipeline.CHANNEL_GAIN_JITTER, pipeline.BRIGHTNESS_JITTER * 255
    assert np.all(np.abs(gain - 1) <= g + 1e-5)
    assert len(set(np.round(gain, 5))) == 3  # A cast, not a brightness.
    assert np.ptp(delta) < 1e-3 and abs(delta[0]) <= d + 1e-3
    image = np.random.RandomState(0).uniform(0, 255, (6, 6, 3)).astype(
        "float32")
    a = pipeline.colour_jitter(image, seed).numpy()
    np.testing.assert_array_equal(a, pipeline.colour_jitter(image,
                                                            seed).numpy())
    assert not np.array_equal(a, pipeline.colour_jitter(
        image, tf.constant([3, 5], tf.int64)).numpy())
    assert a.min() >= 0 and a.max() <= 255


def test_box_jitter_keeps_aspect_and_the_whole_garment():
    """Training crops scale both sides alike and never cut the garment
    (length and shape are read from its proportions and hem)."""
    box = np.array([0.3, 0.35, 0.7, 0.55], np.float32)  # 0.4 x 0.2.
    for s in range(50):
        j = pipeline._jitter_box(box, tf.constant([s, 1], tf.int64)).numpy()
        h, w = j[2] - j[0], j[3] - j[1]
        assert h / w == pytest.approx(2.0, rel=1e-5)
        assert 1.0 - 1e-6 <= h / 0.4 <= 1 + pipeline.BOX_SCALE_JITTER + 1e-6
        # The crop (box plus the 0.1 margin) holds the garment box.
        m = 0.1
        assert j[0] - m * h <= box[0] + 1e-6 and j[2] + m * h >= box[2] - 1e-6
        assert j[1] - m * w <= box[1] + 1e-6 and j[3] + m * w >= box[3] - 1e-6
    # End to end: a red garment in a grey image stays whole in the crop.
    image = np.full((100, 100, 3), 128, np.uint8)
    image[30:70, 35:55] = COLOURS["red"]
    encoded = tf.constant(_png(image))
    for s in range(12):
        out = pipeline.preprocess(encoded, box, image_size=50, training=True,
                                  seed=s).numpy()
        red = (out[..., 0] - out[..., 2]) > 60
        rows, cols = np.flatnonzero(red.any(1)), np.flatnonzero(red.any(0))
        assert rows[0] > 0 and rows[-1] < 49 and cols[0] > 0 and cols[-1] < 49
        assert (rows[-1] - rows[0] + 1) / (cols[-1] - cols[0] + 1) == (
            pytest.approx(2.0, rel=0.12))


def test_random_resized_crop_stays_in_the_region_and_varies():
    """``augment="crop"``: crops of the box region, of at least
    ``min_area`` of it, different per seed, reproducible per seed."""
    image = np.full((120, 90, 3), 128, np.uint8)
    # Four coloured quadrants inside the box rows 20-100, columns 10-70.
    image[20:60, 10:40] = COLOURS["red"]
    image[20:60, 40:70] = COLOURS["green"]
    image[60:100, 10:40] = COLOURS["blue"]
    image[60:100, 40:70] = COLOURS["white"]
    box = tf.constant([20 / 120, 10 / 90, 100 / 120, 70 / 90])
    outs = []
    for s in range(20):
        seed = tf.constant([s, 3], tf.int64)
        out = pipeline.random_resized_crop(image, box, 16, 0.0, seed,
                                           min_area=0.3).numpy()
        again = pipeline.random_resized_crop(image, box, 16, 0.0, seed,
                                             min_area=0.3).numpy()
        np.testing.assert_array_equal(out, again)
        # Nothing of the grey outside the box.
        grey = np.all(np.abs(out - 128) < 20, axis=-1)
        assert not grey.any()
        outs.append(out)
    # (Two crops inside one flat quadrant may coincide.)
    assert len({o.tobytes() for o in outs}) >= 15
    # The whole region when min_area is 1 (aspect 60 / 80 is in range).
    whole = pipeline.random_resized_crop(image, box, 16, 0.0,
                                         tf.constant([0, 0], tf.int64),
                                         min_area=1.0).numpy()
    expected = pipeline.crop_and_resize(image, box, 16, square=False).numpy()
    np.testing.assert_allclose(whole, expected, atol=1e-4)


def test_crop_augmentation_through_make_dataset(tiny_shards):
    _, out, _ = tiny_shards
    kwargs = dict(split="train", image_size=8, batch_size=4, training=True,
                  seed=5, shuffle_buffer=8, augment="crop", min_area=0.5)
    a = next(iter(pipeline.make_dataset(out, **kwargs)))[0].numpy()
    b = next(iter(pipeline.make_dataset(out, **kwargs)))[0].numpy()
    np.testing.assert_array_equal(a, b)
    box = next(iter(pipeline.make_dataset(
        out, **{**kwargs, "augment": "box"})))[0].numpy()
    assert not np.array_equal(a, box)
    with pytest.raises(ValueError, match="augment must be one of"):
        pipeline.make_dataset(out, **{**kwargs, "augment": "mixup"})


def test_shrink_keeps_small_images_and_scales_large_ones():
    # Smooth content (noise enlarged 5x), so that any fair downscale of it
    # is about the mean of each 2 x 2 block.
    noise = np.random.RandomState(0).randint(0, 255, (8, 6, 3), np.uint8)
    image = np.asarray(Image.fromarray(noise).resize((30, 40),
                                                     Image.BICUBIC))
    np.testing.assert_array_equal(pipeline.shrink(image, 30.0).numpy(), image)
    np.testing.assert_array_equal(pipeline.shrink(image, 64.0).numpy(), image)
    small = pipeline.shrink(image, 15.0).numpy()
    assert small.shape == (20, 15, 3) and small.dtype == np.uint8
    blocks = image.reshape(20, 2, 15, 2, 3).mean((1, 3))
    assert np.abs(small - blocks).mean() < 3


@pytest.mark.parametrize("training", [False, True])
def test_decode_cache_gives_the_decoded_images(tiny_shards, training):
    """With a cache side above every image's, the cached pipeline yields
    exactly what decoding every epoch yields in its first epoch (8 train
    records: 2 batches), and the same twice. Later epochs reshuffle the
    records but not the files: the cache holds the first pass's file
    order, so only their set of records is the same."""
    _, out, _ = tiny_shards
    kwargs = dict(split="train", image_size=8, batch_size=4,
                  training=training, seed=3, shuffle_buffer=8,
                  with_meta=True)
    plain = list(pipeline.make_dataset(out, **kwargs).take(4))
    ds = pipeline.make_dataset(out, decode_cache=64, **kwargs)
    cached = list(ds.take(4))
    for (a, la, _), (b, lb, _) in zip(plain[:2], cached[:2]):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
        np.testing.assert_array_equal(la["colour"], lb["colour"])

    def ids(batches):
        return sorted(i for _, _, m in batches
                      for i in m["source_id"].numpy())

    assert len(cached) == (4 if training else 2)
    if training:
        assert ids(plain[2:4]) == ids(cached[2:4]) == ids(cached[:2])
    if not training:
        np.testing.assert_array_equal(
            next(iter(ds))[0].numpy(), cached[0][0].numpy())
    # A smaller side shrinks the cached pixels: close, not equal.
    shrunk = next(iter(pipeline.make_dataset(out, decode_cache=16,
                                             **kwargs)))[0].numpy()
    assert not np.array_equal(shrunk, plain[0][0].numpy())
    assert np.abs(shrunk - plain[0][0].numpy()).mean() < 25
