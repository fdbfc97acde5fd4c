"""EXIF orientation: the graph's reader and turner, the converter's box map.

Photos are stored sideways with a tag; every path must see them upright.
Expected pixels come from PIL's own ``transpose`` of the same decoded
pixels, so the comparison is exact.
"""

import io
import json
import struct

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageOps

from mtct_tf.data import convert, exif, pipeline

# Orientation -> the transpose that *stores* an upright image so that the
# tag turns it back (the inverse of exif.PIL_TRANSPOSE).
STORE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
         4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
         6: Image.Transpose.ROTATE_90, 7: Image.Transpose.TRANSVERSE,
         8: Image.Transpose.ROTATE_270}


def _upright():
    """A 40 x 24 (h x w) image with a bright mark near its top left."""
    img = np.full((40, 24, 3), 40, np.uint8)
    img[4:12, 2:10] = (250, 200, 10)
    img[30:, 16:] = (10, 90, 250)
    return img


def _tagged_jpeg(orientation, upright=None, app0=False, quality=100):
    upright = _upright() if upright is None else upright
    img = Image.fromarray(upright)
    if orientation != 1:
        img = img.transpose(STORE[orientation])
    tags = Image.Exif()
    tags[0x0112] = orientation
    buf = io.BytesIO()
    extra = {"dpi": (72, 72)} if app0 else {}
    img.save(buf, "JPEG", quality=quality, exif=tags, **extra)
    return buf.getvalue()


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("app0", [False, True])
def test_graph_orientation_matches_pil(orientation, app0):
    data = _tagged_jpeg(orientation, app0=app0)
    assert int(exif.jpeg_orientation(tf.constant(data))) == orientation
    assert exif.pil_orientation(Image.open(io.BytesIO(data))) == orientation
    stored = tf.io.decode_jpeg(data).numpy()
    # PIL turns the same decoded pixels by the same tag.
    img = Image.fromarray(stored)
    img.getexif()[0x0112] = orientation
    expected = np.asarray(ImageOps.exif_transpose(img))
    got = pipeline.decode_image(tf.constant(data)).numpy()
    np.testing.assert_array_equal(got, expected)


def test_upright_within_jpeg_noise_of_the_original():
    # The displayed image of every tagged file is the upright original:
    # within JPEG noise of it (mean error ~3.5 levels), ten times closer
    # than to a mirrored or turned copy (~33-36).
    upright = _upright()
    for orientation in range(1, 9):
        got = pipeline.decode_image(
            tf.constant(_tagged_jpeg(orientation))).numpy().astype(int)
        assert got.shape == (40, 24, 3)
        error = np.abs(got - upright).mean()
        assert error < 5
        for turn in (Image.Transpose.FLIP_LEFT_RIGHT,
                     Image.Transpose.FLIP_TOP_BOTTOM):
            other = np.asarray(Image.fromarray(upright).transpose(turn))
            assert np.abs(got - other).mean() > 5 * error


def _big_endian_exif_jpeg(orientation):
    """A JPEG whose APP1 holds a Motorola-order ("MM") TIFF header."""
    buf = io.BytesIO()
    Image.fromarray(_upright()).save(buf, "JPEG")
    plain = buf.getvalue()
    entry = struct.pack(">HHIHH", 0x0112, 3, 1, orientation, 0)
    ifd = struct.pack(">H", 2) + struct.pack(">HHII", 0x010F, 2, 1, 0) \
        + entry + struct.pack(">I", 0)
    tiff = b"MM\x00\x2a" + struct.pack(">I", 8) + ifd
    body = b"Exif\x00\x00" + tiff
    app1 = b"\xff\xe1" + struct.pack(">H", len(body) + 2) + body
    return plain[:2] + app1 + plain[2:]


def test_big_endian_tiff_header():
    data = _big_endian_exif_jpeg(6)
    assert exif.pil_orientation(Image.open(io.BytesIO(data))) == 6
    assert int(exif.jpeg_orientation(tf.constant(data))) == 6


@pytest.mark.parametrize("data", [
    b"", b"\xff\xd8", b"\xff\xd8\xff", b"garbage" * 50,
    b"\xff\xd8\xff\xe1\xff\xffExif\x00\x00MM\x00\x2a\xff\xff\xff\xff",
    b"\x89PNG\r\n\x1a\n" + b"\x00" * 40,
])
def test_any_bytes_read_as_upright(data):
    assert int(exif.jpeg_orientation(tf.constant(data))) == 1


def test_out_of_range_tag_is_ignored():
    data = _big_endian_exif_jpeg(9)
    assert int(exif.jpeg_orientation(tf.constant(data))) == 1


@pytest.mark.parametrize("orientation", range(1, 9))
def test_transpose_box_follows_the_pixels(orientation):
    stored = np.asarray(Image.fromarray(_upright()).transpose(
        STORE[orientation]) if orientation != 1 else _upright())
    ys, xs = np.where(stored[..., 0] > 200)
    box = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    h, w = stored.shape[:2]
    assert exif.transpose_box(box, orientation, w, h) == (2, 4, 10, 12)


def test_converter_stores_tagged_photos_upright(tmp_path):
    schema = {"name": "t", "attributes": [
        {"name": "category", "values": ["a", "b"]}]}
    (tmp_path / "schema.json").write_text(json.dumps(schema))
    lines = []
    for o in (1, 6, 3):
        data = _tagged_jpeg(o)
        (tmp_path / f"p{o}.jpg").write_bytes(data)
        stored = Image.open(io.BytesIO(data))
        w, h = stored.size
        # The mark's box in the stored pixels.
        arr = np.asarray(stored)
        ys, xs = np.where((arr[..., 0] > 200) & (arr[..., 2] < 80))
        box = [int(xs.min()), int(ys.min()), int(xs.max()) + 1,
               int(ys.max()) + 1]
        lines.append({"id": f"p{o}", "path": f"p{o}.jpg", "domain": "shop",
                      "item_id": f"p{o}", "split": "train", "bbox": box,
                      "width": w, "height": h,
                      "attributes": {"category": "a"}})
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(x) + "\n" for x in lines))
    summary = convert.convert_manifest(str(manifest), str(tmp_path / "out"),
                                       progress=False)
    assert summary["splits"]["train"]["reencoded"] == 2
    records = tf.data.TFRecordDataset(
        pipeline.shard_files(str(tmp_path / "out"), "train"))
    schema_obj = pipeline.load_schema(str(tmp_path / "out"))
    for serialized in records:
        r = pipeline.parse_example(serialized, schema_obj)
        image = pipeline.decode_image(r["encoded"]).numpy()
        assert image.shape == (40, 24, 3)
        # Stored upright: no tag left for a reader to honour.
        assert int(exif.jpeg_orientation(r["encoded"])) == 1
        np.testing.assert_allclose(r["bbox"].numpy(),
                                   [4 / 40, 2 / 24, 12 / 40, 10 / 24],
                                   atol=1e-6)
