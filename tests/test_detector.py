"""Tests of the garment detector (mtct_tf/detector/, mtct_tf/detect.py).

Fast tests check the pure box maths against Model Garden's own resizing, the
detection records against Model Garden's decoder, the presets, and the
cropper with a stand-in detector whose boxes are known. The ``large`` test
trains a tiny Faster R-CNN for 2 steps on generated scenes, evaluates,
exports, reloads both signatures and crops end to end.
"""

import glob
import json
import os

import numpy as np
import pytest
from PIL import Image

from mtct_tf import detector
from mtct_tf.attributes import Attribute, AttributeSchema
from mtct_tf.data import features

SCHEMA = AttributeSchema("det", [
    Attribute("colour", ("red", "green", "blue")),
    Attribute("sleeve", ("short", "long")),
])
RGB = {"red": (230, 20, 20), "green": (20, 210, 40), "blue": (30, 40, 220)}


def make_scenes(root, n, *, size=(64, 80), seed=0, no_box=()):
    """Noise images with one coloured 'garment' rectangle, plus a manifest.

    Item ``i`` has a shop image (flat grey, garment in the middle) and a
    street image (noise, garment at a random place). Street images whose
    index is in ``no_box`` have no ``bbox`` in the manifest.

    Returns:
        ``(manifest path, {id: (xmin, ymin, xmax, ymax)})``.
    """
    rng = np.random.default_rng(seed)
    h, w = size
    os.makedirs(os.path.join(root, "img"), exist_ok=True)
    lines, boxes = [], {}
    for i in range(n):
        colour = ("red", "green", "blue")[i % 3]
        split = ("train", "train", "val", "test")[i % 4]
        for domain in ("shop", "street"):
            if domain == "street":
                img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
                bw, bh = rng.integers(w // 3, w // 2), rng.integers(h // 3,
                                                                    h // 2)
                x0, y0 = rng.integers(0, w - bw), rng.integers(0, h - bh)
            else:
                img = np.full((h, w, 3), 200, np.uint8)
                bw, bh, x0, y0 = w // 2, h // 2, w // 4, h // 4
            box = tuple(int(v) for v in (x0, y0, x0 + bw, y0 + bh))
            img[box[1]:box[3], box[0]:box[2]] = RGB[colour]
            image_id = f"{domain}-{i}"
            rel = f"img/{image_id}.png"
            Image.fromarray(img).save(os.path.join(root, rel))
            boxes[image_id] = box
            lines.append({
                "id": image_id, "path": rel, "domain": domain,
                "item_id": f"it{i}", "split": split,
                "bbox": None if (domain == "street" and i in no_box)
                else list(box),
                "width": w, "height": h,
                "attributes": {"colour": colour,
                               "sleeve": ("short", "long", None)[i % 3]},
            })
    path = os.path.join(root, "manifest.jsonl")
    with open(path, "w") as f:
        f.writelines(json.dumps(line) + "\n" for line in lines)
    SCHEMA.save(os.path.join(root, "schema.json"))
    return path, boxes


def jpeg_of(root, name):
    """A street scene re-encoded as JPEG bytes."""
    import io

    buf = io.BytesIO()
    with Image.open(os.path.join(root, "img", name)) as im:
        im.convert("RGB").save(buf, "JPEG", quality=92)
    return buf.getvalue()


def check_mtn_export_with_detector(detector_export, encoded, base_dir):
    """The MTN exported with this Model Garden detector inside.

    Run by TF Serving's loader (TF1 session, tensor names) it must give
    what the TF2 reload gives, and the Keras model's outputs on the crop
    of the box it reports.
    """
    import tensorflow as tf
    from test_export import (
        SCHEMA as MTN_SCHEMA,
        TOL,
        keras_reference,
        make_net,
        max_abs_diff,
        run_session,
    )

    from mtct_tf import export_lib

    net = make_net()
    version_dir = export_lib.export_saved_model(
        net, MTN_SCHEMA, base_dir, margin=0.1, detector=detector_export,
        min_score=0.0, class_id=None)
    got = run_session(version_dir, export_lib.SIGNATURE_IMAGES, encoded)
    assert sorted(got) == sorted(
        export_lib.output_keys(MTN_SCHEMA, with_detector=True))
    fn = tf.saved_model.load(version_dir).signatures[
        export_lib.SIGNATURE_IMAGES]
    for k, v in fn(images=tf.constant(encoded)).items():
        v = v.numpy()
        if v.dtype.kind in "SO":
            assert list(got[k]) == list(v.astype(str)), k
        else:
            np.testing.assert_allclose(got[k], v, atol=TOL, err_msg=k)
    assert got["detected"].all()  # min_score 0: every photo has a box.
    _, ref = keras_reference(net, encoded, got["box"], margin=0.1)
    assert max_abs_diff(got, ref) <= TOL


def read_records(pattern):
    import tensorflow as tf

    return [tf.train.Example.FromString(r.numpy())
            for f in sorted(glob.glob(pattern))
            for r in tf.data.TFRecordDataset(f)]


def value(ex, key):
    f = ex.features.feature[key]
    return list(getattr(f, f.WhichOneof("kind")).value)


# --------------------------------------------------------------------------
# Boxes.


def test_rescale_boxes_inverts_model_garden_resize():
    """Boxes resized by Model Garden's own ops come back to the original."""
    import tensorflow as tf
    from official.vision.ops import preprocess_ops

    image = tf.zeros([100, 200, 3])
    # The first box stays inside every crop window of the 1.5x jitter.
    original = np.array([[10.0, 70.0, 50.0, 120.0], [10.0, 20.0, 50.0, 180.0]])
    for jitter in (1.0, 1.5):
        _, info = preprocess_ops.resize_and_crop_image(
            image, [128, 128], padded_size=[128, 128],
            aug_scale_min=jitter, aug_scale_max=jitter, seed=1)
        resized = preprocess_ops.resize_and_crop_boxes(
            tf.constant(original, tf.float32), info[2, :], info[1, :],
            info[3, :]).numpy()
        back = detector.rescale_boxes(resized[None], info.numpy()[None])[0]
        if jitter == 1.0:
            # 200 px wide -> 128: scale 0.64, no offset.
            np.testing.assert_allclose(info.numpy()[2], [0.64, 0.64])
            np.testing.assert_allclose(resized, original * 0.64, rtol=1e-6)
            np.testing.assert_allclose(back, original, atol=1e-3)
        else:
            assert info.numpy()[3].max() > 0  # A random crop offset.
            np.testing.assert_allclose(back[0], original[0], atol=1e-3)


def test_rescale_boxes_known_values_and_clipping():
    info = np.array([[[100, 200], [64, 128], [0.64, 0.64], [0, 0]],
                     [[50, 50], [128, 128], [2.56, 2.56], [10, 20]]])
    boxes = np.array([
        [[6.4, 12.8, 32.0, 115.2], [60.0, 120.0, 64.0, 128.0]],
        [[0.0, 0.0, 64.0, 64.0], [-30.0, -30.0, 200.0, 200.0]],
    ])
    out = detector.rescale_boxes(boxes, info)
    np.testing.assert_allclose(out[0, 0], [10, 20, 50, 180], atol=1e-9)
    np.testing.assert_allclose(out[0, 1], [93.75, 187.5, 100, 200])
    np.testing.assert_allclose(
        out[1, 0], [10 / 2.56, 20 / 2.56, 74 / 2.56, 84 / 2.56])
    np.testing.assert_allclose(out[1, 1], [0, 0, 50, 50])  # Clipped.
    np.testing.assert_allclose(
        detector.normalize_boxes(out[0, 0], 100, 200), [0.1, 0.1, 0.5, 0.9])


def test_expand_box_margin_and_clipping():
    assert detector.expand_box((10, 20, 30, 60), 0.0, 100, 100) == (
        10, 20, 30, 60)
    # 10 % of 20 px high / 40 px wide per side.
    assert detector.expand_box((10, 20, 30, 60), 0.1, 100, 100) == (
        8, 16, 32, 64)
    assert detector.expand_box((1, 2, 99.5, 99), 0.2, 100, 100) == (
        0, 0, 100, 100)
    top, left, bottom, right = detector.expand_box((5, 5, 5, 5), 0.1, 10, 10)
    assert bottom > top and right > left  # Never empty.


def test_choose_box_filters():
    boxes = np.array([[0, 0, 1, 1]] * 4, np.float32)
    scores = np.array([0.9, 0.95, 0.6, 0.99])
    classes = np.array([1, 2, 1, 1])
    # Index 3 is past num_detections, index 1 the wrong class.
    assert detector.choose_box(boxes, scores, classes, 3) == 0
    assert detector.choose_box(boxes, scores, classes, 3, class_id=None) == 1
    assert detector.choose_box(boxes, scores, classes, 4) == 3
    assert detector.choose_box(boxes, scores, classes, 3,
                               min_score=0.92) is None
    assert detector.choose_box(boxes, scores, classes, 0) is None
    nan = boxes.copy()
    nan[0, 0] = np.nan
    assert detector.choose_box(nan, scores, classes, 3) == 2


def test_box_iou():
    assert detector.box_iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert detector.box_iou((0, 0, 10, 10), (0, 5, 10, 15)) == pytest.approx(
        50 / 150)
    assert detector.box_iou((0, 0, 1, 1), (2, 2, 3, 3)) == 0.0


# --------------------------------------------------------------------------
# Records and config.


def test_detection_records_decode_with_model_garden(tmp_path):
    from official.vision.dataloaders import tf_example_decoder

    from mtct_tf.data import manifest

    path, boxes = make_scenes(str(tmp_path / "d"), 8, no_box=(1,))
    entries, _ = manifest.read_manifest(path, SCHEMA)
    out = str(tmp_path / "rec")
    os.makedirs(out)
    stale = os.path.join(out, "train-00000-of-00009.tfrecord")
    open(stale, "w").close()
    info = detector.write_detection_records(entries, out, domain="street",
                                            records_per_shard=2)
    assert info["images"] == {"train": 3, "val": 2, "test": 2}
    assert info["skipped"] == {"no_box": 1, "other_domain": 8}
    assert not os.path.exists(stale)
    assert sorted(os.listdir(out)) == sorted(
        ["detection_records.json", "test-00000-of-00001.tfrecord",
         "train-00000-of-00002.tfrecord", "train-00001-of-00002.tfrecord",
         "val-00000-of-00001.tfrecord"])

    decoder = tf_example_decoder.TfExampleDecoder()
    import tensorflow as tf
    raw = [r for f in sorted(glob.glob(os.path.join(out, "train-*")))
           for r in tf.data.TFRecordDataset(f)]
    ids = []
    for k, r in enumerate(raw):
        d = decoder.decode(r)
        image_id = tf.train.Example.FromString(r.numpy()).features.feature[
            detector.DET_IMAGE_ID].bytes_list.value[0].decode()
        ids.append(image_id)
        x0, y0, x1, y1 = boxes[image_id]
        assert int(d["source_id"]) == k + 1  # Numeric for the COCO evaluator.
        assert d["image"].shape == (64, 80, 3)
        np.testing.assert_allclose(d["groundtruth_boxes"].numpy(),
                                   [[y0 / 64, x0 / 80, y1 / 64, x1 / 80]],
                                   rtol=1e-6)
        assert d["groundtruth_classes"].numpy().tolist() == [1]
        assert d["groundtruth_area"].numpy()[0] == pytest.approx(
            (x1 - x0) * (y1 - y0))
        assert not d["groundtruth_is_crowd"].numpy().any()
    assert ids == ["street-0", "street-4", "street-5"]  # Manifest order.


def test_make_detection_records_script(tmp_path):
    import importlib.util

    path, _ = make_scenes(str(tmp_path / "d"), 4)
    spec = importlib.util.spec_from_file_location(
        "make_detection_records", os.path.join(
            os.path.dirname(__file__), "..", "datasets",
            "make_detection_records.py"))
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = str(tmp_path / "rec")
    script.main(["--manifest", path, "--out", out])
    with open(os.path.join(out, detector.RECORDS_INFO)) as f:
        info = json.load(f)
    # Both domains by default: 4 items x 2 images.
    assert info["images"] == {"train": 4, "val": 2, "test": 2}


def test_config_presets():
    small = detector.detector_config(
        "small", records="/r", steps=30, train_batch_size=2)
    m = small.task.model
    assert m.num_classes == 2 and m.input_size == [256, 256, 3]
    assert m.backbone.resnet.model_id == 18
    assert m.decoder.fpn.num_filters == 128 and m.include_mask is False
    assert small.task.init_checkpoint is None
    assert small.task.annotation_file is None
    assert small.runtime.mixed_precision_dtype == "float32"
    assert small.task.train_data.input_path == "/r/train-*-of-*.tfrecord"
    assert small.task.validation_data.input_path == "/r/val-*-of-*.tfrecord"
    assert small.task.train_data.global_batch_size == 2
    assert small.trainer.train_steps == 30
    lr = small.trainer.optimizer_config.learning_rate.stepwise
    assert lr.boundaries == [20, 26] and lr.values[0] == 0.02

    paper = detector.detector_config(
        "paper", records="/r", eval_split="test", input_size=1024,
        init_checkpoint="/ckpt/resnet50")
    assert paper.task.model.backbone.resnet.model_id == 50
    assert paper.task.model.input_size == [1024, 1024, 3]
    assert paper.task.init_checkpoint == "/ckpt/resnet50"
    assert paper.task.init_checkpoint_modules == "backbone"
    assert paper.task.validation_data.input_path == "/r/test-*-of-*.tfrecord"

    demo = detector.detector_config("demo", records="/r")
    m = demo.task.model
    assert m.input_size == [128, 128, 3] and m.backbone.resnet.model_id == 10
    assert (m.min_level, m.max_level, m.anchor.anchor_size) == (3, 5, 4.0)
    assert m.detection_head.num_convs == 0 and m.detection_head.fc_dims == 256
    assert m.roi_generator.num_proposals == 128
    assert m.roi_generator.test_num_proposals == 50
    assert demo.trainer.train_steps == 700
    assert demo.task.train_data.global_batch_size == 8
    # Levels 3-5 need a multiple of 32 only.
    assert detector.detector_config(
        "demo", input_size=160).task.model.input_size == [160, 160, 3]
    with pytest.raises(ValueError, match="multiple of 32"):
        detector.detector_config("demo", input_size=144)

    over = detector.detector_config(
        "small", params_override={"task": {"model": {"min_level": 3}}})
    assert over.task.model.min_level == 3
    with pytest.raises(ValueError, match="preset"):
        detector.detector_config("huge")
    with pytest.raises(ValueError, match="multiple of 64"):
        detector.detector_config("small", input_size=100)


# --------------------------------------------------------------------------
# Cropping with a stand-in detector.


class BoxDetector:
    """Stands in for the SavedModel: returns given boxes the way it does.

    Boxes are given in original pixels ``(xmin, ymin, xmax, ymax)`` per image
    (looked up by the image's top-left pixel values) and returned in the
    resized-input pixels of a ``size`` x ``size`` Model Garden input, with
    the matching ``image_info``.
    """

    def __init__(self, size, boxes_by_key, score=0.9, class_id=1):
        self.size, self.boxes, self.score = size, boxes_by_key, score
        self.class_id = class_id
        self.batches = []

    def __call__(self, inputs):
        import tensorflow as tf

        images = inputs.numpy()
        self.batches.append(len(images))
        out = {k: [] for k in ("detection_boxes", "detection_scores",
                               "detection_classes", "num_detections",
                               "image_info")}
        for image in images:
            h, w = image.shape[:2]
            s = min(self.size / h, self.size / w)
            box = self.boxes.get(image[:2, :2].tobytes())
            if box is None:
                b, n = np.zeros((1, 4)), 0
            else:
                x0, y0, x1, y1 = box
                b, n = np.array([[y0, x0, y1, x1]]) * s, 1
            out["detection_boxes"].append(b)
            out["detection_scores"].append([self.score])
            out["detection_classes"].append([self.class_id])
            out["num_detections"].append(n)
            out["image_info"].append(
                [[h, w], [self.size, self.size], [s, s], [0, 0]])
        return {k: tf.constant(np.asarray(v, np.float32))
                for k, v in out.items()}


def _key(path):
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))[:2, :2].tobytes()


def test_crop_with_stand_in_detector(tmp_path):
    from mtct_tf.data import convert, pipeline

    root = str(tmp_path / "d")
    manifest_path, boxes = make_scenes(root, 8, no_box=(2, 3))
    shards = str(tmp_path / "shards")
    convert.convert_manifest(manifest_path, shards, num_shards=1, workers=1,
                             progress=False)
    # The detector finds street-0/1/2 at a box shifted from the truth;
    # nothing on the others.
    found = {}
    for i in (0, 1, 2):
        x0, y0, x1, y1 = boxes[f"street-{i}"]
        found[f"street-{i}"] = (x0 + 2, y0 + 1, x1 - 2, y1 - 1)
    fake = BoxDetector(128, {
        _key(os.path.join(root, f"img/{k}.png")): v for k, v in found.items()})
    out = str(tmp_path / "crops")
    stats = detector.crop_with_detector(
        fake, shards, out, margin=0.0, batch_size=3, progress=False)

    # street-3 has no detection and no box; 4..7 fall back to their box.
    assert (stats.detector, stats.ground_truth, stats.whole_image,
            stats.passed_through) == (3, 4, 1, 8)
    assert max(fake.batches) <= 3 and sum(fake.batches) == 8
    # IoU with the truth where the record has a box (street-2 has none).
    assert stats.mean_iou == pytest.approx(np.mean([
        detector.box_iou(*(np.array(b)[[1, 0, 3, 2]] for b in (
            found[k], boxes[k]))) for k in ("street-0", "street-1")]))

    schema = pipeline.load_schema(out)
    assert schema == SCHEMA
    summary = pipeline.load_summary(out)
    assert summary["crop"]["whole_image"] == 1
    assert pipeline.num_records(out, "train", "street") == 4
    originals = {}
    for split in ("train", "val", "test"):
        for f in pipeline.shard_files(shards, split):
            for ex in read_records(f):
                originals[value(ex, features.SOURCE_ID)[0].decode()] = ex
    crops = {}
    for split in ("train", "val", "test"):
        for ex in read_records(os.path.join(out, f"{split}-*.tfrecord")):
            crops[value(ex, features.SOURCE_ID)[0].decode()] = ex
            assert value(ex, features.SPLIT)[0].decode() == split
    assert sorted(crops) == sorted(originals)

    for image_id, ex in crops.items():
        before = originals[image_id]
        if image_id.startswith("shop"):  # Unchanged, byte for byte.
            assert ex.SerializeToString() == before.SerializeToString()
            continue
        # Every original key survives; labels and ids are unchanged.
        assert set(before.features.feature) <= set(ex.features.feature)
        for key in before.features.feature:
            if key.startswith(("image/attribute/", "image/item_id",
                               "image/domain", "image/split")):
                assert value(ex, key) == value(before, key), key
        how = value(ex, detector.CROP_SOURCE)[0].decode()
        i = int(image_id.split("-")[1])
        if image_id in found:
            assert how == "detector"
            x0, y0, x1, y1 = found[image_id]
        elif i == 3:
            assert how == "whole_image"
            x0, y0, x1, y1 = 0, 0, 80, 64
        else:
            assert how == "ground_truth"
            x0, y0, x1, y1 = boxes[image_id]
        assert value(ex, features.WIDTH) == [x1 - x0]
        assert value(ex, features.HEIGHT) == [y1 - y0]
        np.testing.assert_allclose(
            value(ex, detector.CROP_BBOX),
            [x0 / 80, y0 / 64, x1 / 80, y1 / 64], rtol=1e-6)
        assert [value(ex, k)[0] for k in (
            features.BBOX_XMIN, features.BBOX_YMIN, features.BBOX_XMAX,
            features.BBOX_YMAX)] == [0.0, 0.0, 1.0, 1.0]
        crop = np.asarray(Image.open(__import__("io").BytesIO(
            value(ex, features.ENCODED)[0])).convert("RGB"))
        with Image.open(os.path.join(root, f"img/{image_id}.png")) as im:
            full = np.asarray(im.convert("RGB"))
        np.testing.assert_array_equal(crop, full[y0:y1, x0:x1])  # PNG: exact.

    # The reader takes them like any shard set.
    ds = pipeline.make_dataset(out, image_size=16, batch_size=4,
                               training=False, split="train")
    images, labels = next(iter(ds))
    assert images.shape == (4, 16, 16, 3) and set(labels) == set(SCHEMA.names)


def test_crop_from_manifest_with_margin_and_min_score(tmp_path):
    root = str(tmp_path / "d")
    manifest_path, boxes = make_scenes(root, 4)
    key = _key(os.path.join(root, "img/street-0.png"))
    out = str(tmp_path / "crops")
    stats = detector.crop_with_detector(
        BoxDetector(128, {key: boxes["street-0"]}, score=0.3), manifest_path,
        out, min_score=0.5, progress=False)
    assert (stats.detector, stats.ground_truth) == (0, 4)  # Score too low.
    stats = detector.crop_with_detector(
        BoxDetector(128, {key: boxes["street-0"]}, score=0.3, class_id=2),
        manifest_path, out, min_score=0.2, class_id=None, margin=0.25,
        progress=False)
    assert (stats.detector, stats.ground_truth) == (1, 3)
    ex = {value(e, features.SOURCE_ID)[0]: e
          for e in read_records(os.path.join(out, "train-*.tfrecord"))}
    x0, y0, x1, y1 = boxes["street-0"]
    top, left, bottom, right = detector.expand_box(
        (y0, x0, y1, x1), 0.25, 64, 80)
    assert value(ex[b"street-0"], features.WIDTH) == [right - left]
    assert value(ex[b"street-0"], features.HEIGHT) == [bottom - top]
    assert value(ex[b"street-0"], detector.CROP_SCORE) == [
        pytest.approx(0.3)]
    with pytest.raises(ValueError, match="margin"):
        detector.crop_with_detector(lambda inputs: None, manifest_path, out,
                                    margin=1.5)


# --------------------------------------------------------------------------
# End to end with a real (tiny, barely trained) Faster R-CNN.


@pytest.mark.large
def test_train_evaluate_export_crop_end_to_end(tmp_path):
    import tensorflow as tf

    from mtct_tf import detect
    from mtct_tf.data import manifest

    root = str(tmp_path / "d")
    manifest_path, _ = make_scenes(root, 8, size=(96, 128))
    entries, _ = manifest.read_manifest(manifest_path, SCHEMA)
    records = str(tmp_path / "rec")
    detector.write_detection_records(entries, records, domain="street")
    model_dir = str(tmp_path / "model")
    common = ["--records", records, "--model_dir", model_dir,
              "--input_size", "128", "--batch_size", "2",
              "--eval_batch_size", "2"]
    detect.main(["train", *common, "--steps", "2", "--eval_split", "test"])
    assert tf.train.latest_checkpoint(model_dir).endswith("ckpt-2")
    with open(os.path.join(model_dir, "eval_metrics.json")) as f:
        metrics = json.load(f)
    assert metrics["num_images"] == 2 and metrics["step"] == 2
    assert 0.0 <= metrics["AP50"] <= 1.0 and "AP75" in metrics["metrics"]

    detect.main(["evaluate", *common])
    detect.main(["export", "--model_dir", model_dir])
    saved = os.path.join(model_dir, "export", "saved_model")
    loaded = tf.saved_model.load(saved)
    assert {"serving_default", "image_tensor", "image_bytes"} <= set(
        loaded.signatures)
    with open(os.path.join(root, "img/street-0.png"), "rb") as f:
        png = f.read()
    image = tf.io.decode_png(png)[None]
    by_tensor = loaded.signatures["image_tensor"](inputs=image)
    by_bytes = loaded.signatures["image_bytes"](inputs=tf.constant([png]))
    two = loaded.signatures["image_tensor"](inputs=tf.concat([image] * 2, 0))
    for k in ("detection_boxes", "detection_scores", "image_info"):
        np.testing.assert_allclose(by_tensor[k].numpy(), by_bytes[k].numpy(),
                                   atol=1e-5)
        np.testing.assert_allclose(two[k].numpy()[1], by_tensor[k].numpy()[0],
                                   atol=1e-4)
    np.testing.assert_allclose(by_tensor["image_info"].numpy()[0],
                               [[96, 128], [128, 128], [1, 1], [0, 0]])

    check_mtn_export_with_detector(os.path.join(model_dir, "export"),
                                   [png, jpeg_of(root, "street-1.png")],
                                   str(tmp_path / "serving"))

    out = str(tmp_path / "crops")
    stats = detector.crop_with_detector(
        os.path.join(model_dir, "export"), manifest_path, out, min_score=0.0,
        batch_size=3, progress=False)
    assert stats.street == 8 and stats.passed_through == 8
    assert stats.detector == 8  # min_score 0: every image has a box.
    assert stats.images_per_second > 0
    crops = read_records(os.path.join(out, "*.tfrecord"))
    assert len(crops) == 16
