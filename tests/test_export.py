"""Export: TF Serving SavedModels (with and without detector) and .keras.

The SavedModels are loaded two ways and compared with the Keras model on the
same images: with ``tf.saved_model.load`` (the TF2 object graph) in a fresh
Python process that imports only TensorFlow, and with the TF1 session loader
(``tf.compat.v1.saved_model.loader.load``: the MetaGraph, the saver's restore
op, then the signature's tensors by name), which is the path TF Serving's
C++ ``LoadSavedModel`` and ``saved_model_cli run`` take.
"""

import io
import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from mtct_tf import attributes, detector, export_lib
from mtct_tf import model as model_lib
from mtct_tf.data import pipeline

SIZE = 32
SCHEMA = attributes.AttributeSchema(
    "t", [attributes.Attribute("colour", ("red", "green", "blue")),
          attributes.Attribute("sleeve", ("short", "long"))])
TOL = 1e-5


# --------------------------------------------------------------------------
# Helpers (test_predict.py imports them too).


def make_net(seed=0):
    """A tiny MTN whose outputs differ clearly from image to image.

    Fresh batch-norm statistics (mean 0, variance 1) shrink everything to
    near-uniform probabilities; one training-mode call with momentum 0 sets
    them to a batch's, so the comparisons below are not between constants.
    """
    keras.utils.set_random_seed(seed)
    net = model_lib.MTN(SCHEMA, preset="tiny", image_size=SIZE)
    x = np.stack([_resize(make_image(30 + i, 40 - i, seed=i))
                  for i in range(6)])
    bns = [la for la in net.layers
           if isinstance(la, keras.layers.BatchNormalization)]
    for layer in bns:
        layer.momentum = 0.0
    net(x, training=True)
    for layer in bns:
        layer.momentum = 0.99
    return net


def make_image(h, w, seed=0, grey=False):
    """A smooth colour gradient plus noise, uint8 [h, w, 3] (or [h, w])."""
    rng = np.random.RandomState(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = rng.uniform(0, 255, 3)
    slope = rng.uniform(-4, 4, (2, 3))
    image = (base + y[..., None] * slope[0] + x[..., None] * slope[1]
             + rng.normal(0, 12, (h, w, 3)))
    image = np.clip(image, 0, 255).astype(np.uint8)
    return image[..., 0] if grey else image


def encode(image, fmt="PNG"):
    buf = io.BytesIO()
    kwargs = {"quality": 92} if fmt == "JPEG" else {}
    Image.fromarray(image).save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def _resize(image, box=(0.0, 0.0, 1.0, 1.0), margin=0.0):
    return pipeline.crop_and_resize(
        tf.constant(image), tf.constant(box), SIZE, margin).numpy()


def keras_reference(net, encoded, boxes=None, margin=0.0):
    """Keras-side outputs: decode, crop_and_resize, predict_on_batch.

    PNG is decoded with PIL (lossless: any decoder gives the same pixels).
    JPEG is decoded with the training pipeline's ``decode_image``: PIL's
    libjpeg and TensorFlow's differ by up to 3 grey levels on our test
    photos (0.006 in probability, 0.1 in the embedding), and serving must
    match training, which decodes with TensorFlow.
    """
    crops = []
    for i, data in enumerate(encoded):
        with Image.open(io.BytesIO(data)) as im:
            if im.format == "JPEG":
                image = pipeline.decode_image(tf.constant(data)).numpy()
            else:
                image = np.asarray(im.convert("RGB"))
        box = (0.0, 0.0, 1.0, 1.0) if boxes is None else boxes[i]
        crops.append(_resize(image, box, margin))
    crops = np.stack(crops).astype(np.float32)
    return crops, {k: np.asarray(v)
                   for k, v in net.predict_on_batch(crops).items()}


class FakeDetector(tf.Module):
    """Model Garden's detector interface on a fixed set of boxes.

    Like ``DetectionModule``: ``image_tensor`` takes uint8 [B, H, W, 3]
    named ``inputs``, "resizes" the longest side to ``size`` pixels and
    returns boxes in that resized frame (ymin, xmin, ymax, xmax pixels),
    with ``image_info`` = [[h, w], [scaled h, w], [scale, scale], [0, 0]].
    The scores are multiplied by 0.1 on dark photos (mean < 25), so one
    detector gives both the detected and the fallback path. The boxes and
    scores are variables, as a real detector's weights are.
    """

    def __init__(self, boxes, scores, classes, size=64):
        super().__init__()
        self.boxes = tf.Variable(np.asarray(boxes, np.float32))
        self.scores = tf.Variable(np.asarray(scores, np.float32))
        self.classes = tf.Variable(np.asarray(classes, np.float32))
        self.size = float(size)

    @tf.function(input_signature=[
        tf.TensorSpec([None, None, None, 3], tf.uint8, name="inputs")])
    def image_tensor(self, inputs):
        shape = tf.cast(tf.shape(inputs), tf.float32)
        h, w = shape[1], shape[2]
        scale = self.size / tf.maximum(h, w)
        b = tf.shape(inputs)[0]
        dark = tf.reduce_mean(tf.cast(inputs, tf.float32)) < 25.0
        scores = self.scores * tf.where(dark, 0.1, 1.0)
        pixels = self.boxes * tf.stack([h, w, h, w]) * scale
        info = tf.stack([[h, w], [h * scale, w * scale], [scale, scale],
                         [0.0, 0.0]])
        return {
            "detection_boxes": tf.tile(pixels[None], [b, 1, 1]),
            "detection_scores": tf.tile(scores[None], [b, 1]),
            "detection_classes": tf.tile(self.classes[None], [b, 1]),
            "num_detections": tf.fill([b], tf.shape(scores)[0]),
            "image_info": tf.tile(info[None], [b, 1, 1]),
        }


# Box 1 outscores box 0 but is class 2 (not a garment); box 2 is a garment
# with a lower score: box 0 is the answer.
FAKE_BOXES = [[0.1, 0.2, 0.6, 0.7], [0.0, 0.0, 0.5, 0.5],
              [0.3, 0.3, 0.9, 0.9]]
FAKE_SCORES = [0.9, 0.95, 0.6]
FAKE_CLASSES = [1, 2, 1]


def fake_detector(path):
    """Saves a ``FakeDetector`` SavedModel at ``path``; returns the path."""
    module = FakeDetector(FAKE_BOXES, FAKE_SCORES, FAKE_CLASSES)
    tf.saved_model.save(module, path, signatures={
        "image_tensor": module.image_tensor,
        "serving_default": module.image_tensor})
    return path


# A script run by a fresh interpreter: TensorFlow only.
TF_ONLY = textwrap.dedent("""
    import json, sys
    import numpy as np
    import tensorflow as tf
    from tensorflow.core.protobuf import saved_model_pb2
    from tensorflow.python.framework import op_def_registry

    # TF 2.20's own `import tensorflow` imports a few keras.src modules;
    # loading and running the model must add none.
    baseline = set(sys.modules)

    version_dir, inputs, out = sys.argv[1:4]
    loaded = tf.saved_model.load(version_dir)
    data = np.load(inputs, allow_pickle=False)
    encoded = [bytes(b) for b in data["encoded"]]
    results = {}
    for n in (1, 5):
        fn = loaded.signatures["serving_default"]
        for k, v in fn(images=tf.constant(encoded[:n])).items():
            results[f"images{n}/{k}"] = v.numpy()
    fn = loaded.signatures["serving_tensors"]
    for k, v in fn(images=tf.constant(data["crops"])).items():
        results[f"tensors/{k}"] = v.numpy()

    sm = saved_model_pb2.SavedModel()
    with open(version_dir + "/saved_model.pb", "rb") as f:
        sm.ParseFromString(f.read())
    ops = set()
    for meta in sm.meta_graphs:
        ops |= {n.op for n in meta.graph_def.node}
        for fdef in meta.graph_def.library.function:
            ops |= {n.op for n in fdef.node_def}
    unregistered = sorted(o for o in ops if op_def_registry.get(o) is None)
    not_raw = sorted(o for o in ops if not hasattr(tf.raw_ops, o))
    banned = sorted(
        m for m in sys.modules
        if m.split(".")[0] in ("mtct_tf", "official")
        or (m not in baseline and m.split(".")[0] in ("keras", "tf_keras")))
    results = {k: (v.astype(str) if v.dtype.kind in "SO" else v)
               for k, v in results.items()}
    np.savez(out, **results)
    print(json.dumps({"ops": sorted(ops), "unregistered": unregistered,
                      "not_raw_ops": not_raw, "banned_modules": banned}))
""")


def run_tf_only(tmp_path, version_dir, encoded, crops):
    script = tmp_path / "tf_only.py"
    script.write_text(TF_ONLY)
    inputs = tmp_path / "inputs.npz"
    np.savez(inputs, encoded=np.array(encoded, dtype=object).astype(bytes),
             crops=crops)
    out = tmp_path / "out.npz"
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    proc = subprocess.run(
        [sys.executable, str(script), version_dir, str(inputs), str(out)],
        capture_output=True, text=True, env=env, cwd=str(tmp_path),
        timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    with np.load(out, allow_pickle=False) as f:
        return info, {k: f[k] for k in f.files}


def photos():
    """Five photos: sizes differ, one JPEG, one greyscale PNG, one dark."""
    return [
        encode(make_image(40, 30, seed=1)),
        encode(make_image(37, 52, seed=2), "JPEG"),
        encode(make_image(64, 64, seed=3, grey=True)),
        encode(make_image(20, 33, seed=4)),
        encode((make_image(50, 45, seed=5) * 0.1).astype(np.uint8)),
    ]


def more_photos():
    """``photos()`` plus a greyscale JPEG and a larger colour JPEG."""
    return photos() + [
        encode(make_image(45, 38, seed=6, grey=True), "JPEG"),
        encode(make_image(90, 70, seed=7), "JPEG"),
    ]


def run_session(version_dir, signature, images):
    """Runs a signature the way TF Serving does: TF1 loader, tensor names.

    ``tf.compat.v1.saved_model.loader.load`` imports the MetaGraph into a
    fresh graph and runs the saver's restore op; the signature is then run
    by its input and output tensor names in a ``tf.compat.v1.Session``.

    Returns:
        output key -> numpy array (strings as ``str``).
    """
    graph = tf.Graph()
    with graph.as_default(), tf.compat.v1.Session(graph=graph) as sess:
        meta = tf.compat.v1.saved_model.loader.load(
            sess, [tf.saved_model.SERVING], version_dir)
        sig = meta.signature_def[signature]
        assert list(sig.inputs) == [export_lib.INPUT]
        fetches = {k: t.name for k, t in sig.outputs.items()}
        out = sess.run(fetches, {sig.inputs[export_lib.INPUT].name: images})
    return {k: (v.astype(str) if v.dtype.kind in "SO" else v)
            for k, v in out.items()}


def max_abs_diff(got, ref, n=None):
    """Largest |SavedModel - Keras| over the probabilities and embedding.

    Also checks the index and value outputs against the Keras argmax.
    """
    n = len(ref["embedding"]) if n is None else n
    diff = np.max(np.abs(got["embedding"] - ref["embedding"][:n]))
    for a in SCHEMA:
        probs = ref[a.name][:n]
        assert got[f"{a.name}_probabilities"].shape == (n, a.num_values)
        diff = max(diff, np.max(np.abs(got[f"{a.name}_probabilities"]
                                       - probs)))
        np.testing.assert_array_equal(got[f"{a.name}_index"],
                                      np.argmax(probs, -1))
        assert list(got[f"{a.name}_value"]) == [
            a.values[k] for k in np.argmax(probs, -1)]
    return float(diff)


# --------------------------------------------------------------------------
# Fixtures: one export of each kind, shared by the tests of this module.


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    base = tmp_path_factory.mktemp("serving")
    net = make_net()
    version_dir = export_lib.export_saved_model(net, SCHEMA, str(base))
    return net, str(base), version_dir


@pytest.fixture(scope="module")
def exported_with_detector(tmp_path_factory, exported):
    net, base, _ = exported
    det = fake_detector(str(tmp_path_factory.mktemp("det") / "saved_model"))
    version_dir = export_lib.export_saved_model(
        net, SCHEMA, base, margin=0.1, detector=det, min_score=0.5)
    return net, base, version_dir


# --------------------------------------------------------------------------
# Tests.


def test_serving_layout_versions_and_metadata(exported, exported_with_detector):
    net, base, v1 = exported
    _, _, v2 = exported_with_detector
    model_dir = os.path.join(base, "mtct")
    assert v1 == os.path.join(model_dir, "1")
    assert v2 == os.path.join(model_dir, "2")
    # Only complete integer versions: no temporary directory is left.
    assert sorted(os.listdir(model_dir)) == ["1", "2"]
    assert os.path.isfile(os.path.join(v1, "saved_model.pb"))
    schema, meta = export_lib.read_export_info(v2)
    assert schema == SCHEMA
    assert meta["image_size"] == SIZE and meta["margin"] == 0.1
    assert meta["outputs"][-4:] == ["box", "box_pixels", "box_score",
                                    "detected"]
    assert export_lib.next_version(model_dir) == 3
    with pytest.raises(FileExistsError, match="never overwritten"):
        export_lib.export_saved_model(net, SCHEMA, base, version=1)
    assert sorted(os.listdir(model_dir)) == ["1", "2"]


def test_schema_must_match_the_heads(tmp_path):
    net = model_lib.MTN(SCHEMA, preset="tiny", image_size=16)
    other = attributes.AttributeSchema(
        "o", [attributes.Attribute("colour", ("a", "b", "c")),
              attributes.Attribute("sleeve", ("a", "b", "c"))])
    with pytest.raises(ValueError, match="does not match"):
        export_lib.export_saved_model(net, other, str(tmp_path))
    assert not os.listdir(tmp_path / "mtct")


@pytest.fixture(scope="module")
def tf_only(exported, tmp_path_factory):
    """The plain export run by a TensorFlow-only process, + Keras outputs."""
    net, _, version_dir = exported
    encoded = photos()
    crops, ref = keras_reference(net, encoded)
    info, got = run_tf_only(tmp_path_factory.mktemp("tf_only"), version_dir,
                            encoded, crops)
    return info, got, ref


def test_tf_only_reload_matches_keras(tf_only):
    info, got, ref = tf_only
    # The check must be able to fail: the photos give different outputs.
    assert np.ptp(ref["colour"], axis=0).max() > 0.05
    assert info["banned_modules"] == []
    max_diff = 0.0
    for n in (1, 5):
        for a in SCHEMA:
            probs = got[f"images{n}/{a.name}_probabilities"]
            assert probs.shape == (n, a.num_values)
            max_diff = max(max_diff, np.max(np.abs(probs - ref[a.name][:n])))
            np.testing.assert_array_equal(
                got[f"images{n}/{a.name}_index"],
                np.argmax(ref[a.name][:n], -1))
            assert list(got[f"images{n}/{a.name}_value"]) == [
                a.values[k] for k in np.argmax(ref[a.name][:n], -1)]
        emb = got[f"images{n}/embedding"]
        max_diff = max(max_diff, np.max(np.abs(emb - ref["embedding"][:n])))
    for a in SCHEMA:
        max_diff = max(max_diff, np.max(np.abs(
            got[f"tensors/{a.name}_probabilities"] - ref[a.name])))
    print(f"max abs diff SavedModel vs Keras: {max_diff:.3g}")
    assert max_diff <= TOL


def test_graph_has_only_core_tensorflow_ops(tf_only):
    info, _, _ = tf_only
    assert info["unregistered"] == []
    assert info["not_raw_ops"] == []
    # Preprocessing is inside the graph, not left to the client.
    assert {"DecodeImage", "ResizeBilinear", "Conv2D"} <= set(info["ops"])


def test_saved_model_cli_lists_the_signatures(exported_with_detector):
    _, _, version_dir = exported_with_detector
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    proc = subprocess.run([cli, "show", "--all", "--dir", version_dir],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = proc.stdout
    for name in ("signature_def['serving_default']",
                 "signature_def['serving_tensors']",
                 "inputs['images']", "outputs['colour_probabilities']",
                 "outputs['sleeve_value']", "outputs['box_pixels']",
                 "outputs['embedding']"):
        assert name in text, name
    assert "DT_STRING" in text and f"(-1, {SIZE}, {SIZE}, 3)" in text


def test_session_loader_matches_keras(exported):
    # TF Serving's path: a variable the restore op misses fails every
    # request with "Could not find variable ...".
    net, _, version_dir = exported
    encoded = more_photos()
    crops, ref = keras_reference(net, encoded)
    assert np.ptp(ref["colour"], axis=0).max() > 0.05
    diffs = []
    for n in (1, len(encoded)):
        got = run_session(version_dir, export_lib.SIGNATURE_IMAGES,
                          encoded[:n])
        assert sorted(got) == sorted(export_lib.output_keys(SCHEMA))
        diffs.append(max_abs_diff(got, ref, n))
    got = run_session(version_dir, export_lib.SIGNATURE_TENSORS, crops)
    diffs.append(max_abs_diff(got, ref))
    print(f"max abs diff session loader vs Keras: {max(diffs):.3g}")
    assert max(diffs) <= TOL
    empty = run_session(version_dir, export_lib.SIGNATURE_IMAGES,
                        np.array([], object))
    assert empty["colour_probabilities"].shape == (0, 3)


def test_session_loader_with_detector_matches_keras(exported_with_detector):
    net, _, version_dir = exported_with_detector
    encoded = more_photos()
    # FakeDetector scores dark photos (mean < 25) below min_score: those
    # fall back to the whole photo.
    dark = [float(tf.reduce_mean(tf.cast(pipeline.decode_image(b),
                                         tf.float32))) < 25.0
            for b in encoded]
    assert any(dark) and not all(dark)
    expected = [[0.0, 0.0, 1.0, 1.0] if d else FAKE_BOXES[0] for d in dark]
    crops, ref = keras_reference(net, encoded, expected, margin=0.1)
    got = run_session(version_dir, export_lib.SIGNATURE_IMAGES, encoded)
    assert sorted(got) == sorted(
        export_lib.output_keys(SCHEMA, with_detector=True))
    np.testing.assert_array_equal(got["detected"], np.logical_not(dark))
    np.testing.assert_allclose(got["box_score"],
                               np.where(dark, 0.0, 0.9), atol=1e-6)
    np.testing.assert_allclose(got["box"], expected, atol=1e-5)
    diff = max_abs_diff(got, ref)
    # serving_tensors stays detector-free in the detector export.
    tensors = run_session(version_dir, export_lib.SIGNATURE_TENSORS, crops)
    assert sorted(tensors) == sorted(export_lib.output_keys(SCHEMA))
    diff = max(diff, max_abs_diff(tensors, ref))
    print(f"max abs diff session loader with detector: {diff:.3g}")
    assert diff <= TOL


def test_saved_model_cli_run_gives_every_output(exported_with_detector,
                                                tmp_path):
    net, _, version_dir = exported_with_detector
    encoded = more_photos()[:3]
    inputs = str(tmp_path / "in.npy")
    np.save(inputs, np.array(encoded, dtype=object))
    out = tmp_path / "out"
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run(
        [cli, "run", "--dir", version_dir, "--tag_set", "serve",
         "--signature_def", "serving_default",
         "--inputs", f"images={inputs}", "--outdir", str(out)],
        capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    keys = export_lib.output_keys(SCHEMA, with_detector=True)
    assert sorted(os.listdir(out)) == sorted(f"{k}.npy" for k in keys)
    got = {k: np.load(out / f"{k}.npy", allow_pickle=True) for k in keys}
    got = {k: (v.astype(str) if v.dtype.kind in "SO" else v)
           for k, v in got.items()}
    # None of these three photos is dark: all cropped to box 0.
    np.testing.assert_array_equal(got["detected"], [True] * 3)
    _, ref = keras_reference(net, encoded, [FAKE_BOXES[0]] * 3, margin=0.1)
    assert max_abs_diff(got, ref) <= TOL


def test_warmup_requests_parse_and_run_as_tf_serving_replays_them(
        exported, exported_with_detector):
    """assets.extra/tf_serving_warmup_requests: TFRecord of PredictionLog."""
    from tensorflow_serving.apis import prediction_log_pb2

    for version_dir in (exported[2], exported_with_detector[2]):
        path = os.path.join(version_dir, "assets.extra",
                            "tf_serving_warmup_requests")
        logs = [prediction_log_pb2.PredictionLog.FromString(r.numpy())
                for r in tf.data.TFRecordDataset(path)]
        assert 0 < len(logs) <= 1000  # TF Serving reads at most 1000.
        signatures = set()
        for log in logs:
            assert log.WhichOneof("log_type") == "predict_log"
            request = log.predict_log.request
            assert request.model_spec.name == "mtct"
            signatures.add(request.model_spec.signature_name)
            assert list(request.inputs) == [export_lib.INPUT]
            images = tf.make_ndarray(request.inputs[export_lib.INPUT])
            # Replayed through the loader TF Serving uses, each request
            # answers with every output of its signature, one row per input.
            out = run_session(version_dir, request.model_spec.signature_name,
                              images)
            assert out["embedding"].shape[0] == len(images) > 0
            for a in SCHEMA:
                probs = out[f"{a.name}_probabilities"]
                np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)
        assert signatures == {export_lib.SIGNATURE_IMAGES,
                              export_lib.SIGNATURE_TENSORS}


def test_malformed_bytes_give_invalid_argument(exported):
    net, _, version_dir = exported
    fn = tf.saved_model.load(version_dir).signatures["serving_default"]
    good = photos()[0]
    for bad in (b"not an image", good[:40]):
        with pytest.raises(tf.errors.InvalidArgumentError) as e:
            fn(images=tf.constant([good, bad]))
        msg = str(e.value).lower()
        assert "jpeg" in msg or "png" in msg or "image" in msg
    # The process and the model survive: the next request works.
    out = fn(images=tf.constant([good]))
    _, ref = keras_reference(net, [good])
    np.testing.assert_allclose(out["colour_probabilities"].numpy(),
                               ref["colour"], atol=TOL)


def test_empty_batch(exported):
    _, _, version_dir = exported
    fn = tf.saved_model.load(version_dir).signatures["serving_default"]
    out = fn(images=tf.constant([], tf.string))
    assert out["colour_probabilities"].shape == (0, 3)
    assert out["colour_value"].shape == (0,)


def test_detector_export_matches_keras_on_the_chosen_crop(
        exported_with_detector, tmp_path):
    net, _, version_dir = exported_with_detector
    encoded = photos()
    sizes = [Image.open(io.BytesIO(b)).size[::-1] for b in encoded]
    # Box 0 is the best garment box; on the dark photo (index 4, mean < 25)
    # it scores 0.09 < 0.5, so that photo falls back to the whole image.
    expected = [FAKE_BOXES[0]] * 4 + [[0.0, 0.0, 1.0, 1.0]]
    crops, ref = keras_reference(net, encoded, expected, margin=0.1)
    info, got = run_tf_only(tmp_path, version_dir, encoded, crops)
    assert info["banned_modules"] == [] and info["unregistered"] == []

    np.testing.assert_array_equal(got["images5/detected"],
                                  [True, True, True, True, False])
    np.testing.assert_allclose(got["images5/box_score"],
                               [0.9, 0.9, 0.9, 0.9, 0.0], atol=1e-6)
    np.testing.assert_allclose(got["images5/box"], expected, atol=1e-5)
    pixels = [np.array(b) * [h, w, h, w] for b, (h, w) in zip(expected,
                                                               sizes)]
    np.testing.assert_allclose(got["images5/box_pixels"], pixels, atol=1e-4)
    max_diff = 0.0
    for n in (1, 5):
        for a in SCHEMA:
            max_diff = max(max_diff, np.max(np.abs(
                got[f"images{n}/{a.name}_probabilities"] - ref[a.name][:n])))
    print(f"max abs diff with detector: {max_diff:.3g}")
    assert max_diff <= TOL
    # The crop matters: the whole-image prediction is different.
    _, whole = keras_reference(net, encoded[:1])
    assert np.max(np.abs(whole["colour"][0] - ref["colour"][0])) > 1e-3


def test_choose_box_against_numpy():
    # Resized frame: scale 0.5, offset (2, 4); original photo 100 x 80.
    info = np.array([[[100, 80], [50, 40], [0.5, 0.5], [2, 4]]], np.float32)
    boxes = np.array([[[10, 10, 30, 30], [0, 0, 40, 40], [5, 5, 45, 38],
                       [np.nan, 0, 1, 1], [1, 1, 2, 2]]], np.float32)
    scores = np.array([[0.7, 0.8, 0.6, 0.99, 0.95]], np.float32)
    classes = np.array([[1, 2, 1, 1, 1]], np.float32)
    det = {"detection_boxes": boxes, "detection_scores": scores,
           "detection_classes": classes,
           "num_detections": np.array([4], np.int32), "image_info": info}

    def choose(**kw):
        return [np.asarray(t) for t in detector.choose_box_in_graph(
            det, tf.constant(100), tf.constant(80), **kw)]

    # Index 3 has NaN, 4 is past num_detections, 1 is class 2: index 0.
    norm, pixels, score, found = choose(min_score=0.5, class_id=1)
    want = (boxes[0, 0] + [2, 4, 2, 4]) / 0.5
    np.testing.assert_allclose(pixels, want)
    np.testing.assert_allclose(norm, want / [100, 80, 100, 80], rtol=1e-6)
    assert found and score == pytest.approx(0.7)
    # Any class: index 1; its box is clipped to the 100 x 80 photo.
    _, pixels, score, _ = choose(min_score=0.5, class_id=None)
    np.testing.assert_allclose(pixels, [4, 8, 84, 80])
    assert score == pytest.approx(0.8)
    # Nothing passes: the whole photo.
    norm, pixels, score, found = choose(min_score=0.85, class_id=1)
    assert not found and score == 0.0
    np.testing.assert_allclose(norm, [0, 0, 1, 1])
    np.testing.assert_allclose(pixels, [0, 0, 100, 80])
    # No detections at all.
    empty = {k: v[:, :0] if k != "num_detections" and k != "image_info"
             else v for k, v in det.items()}
    empty["num_detections"] = np.array([0], np.int32)
    out = detector.choose_box_in_graph(
        empty, tf.constant(100), tf.constant(80), min_score=0.5, class_id=1)
    assert not bool(out[3])


def test_keras_file_round_trip_is_exact(tmp_path):
    net = make_net(seed=3)
    path = str(tmp_path / "sub" / "mtct.keras")
    assert export_lib.export_keras(net, path) == path
    assert os.listdir(tmp_path / "sub") == ["mtct.keras"]
    loaded = keras.saving.load_model(path, safe_mode=True, compile=False)
    assert isinstance(loaded, model_lib.MTN)
    crops, ref = keras_reference(net, photos())
    out = loaded.predict_on_batch(crops)
    for k in ref:
        np.testing.assert_array_equal(np.asarray(out[k]), ref[k])
    with pytest.raises(ValueError, match="end with .keras"):
        export_lib.export_keras(net, str(tmp_path / "m.h5"))


def test_export_cli(tmp_path):
    net = make_net(seed=1)
    keras_path = export_lib.export_keras(net, str(tmp_path / "m.keras"))
    schema_path = str(tmp_path / "schema.json")
    SCHEMA.save(schema_path)
    script = os.path.join(os.path.dirname(__file__), os.pardir, "export",
                          "export_saved_model.py")
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    proc = subprocess.run(
        [sys.executable, script, "--model", keras_path, "--schema",
         schema_path, "--export_dir", str(tmp_path / "serving"),
         "--version", "7", "--keras_out", str(tmp_path / "copy.keras")],
        capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout[proc.stdout.index("{"):])
    version_dir = str(tmp_path / "serving" / "mtct" / "7")
    assert summary["saved_model"] == version_dir
    assert os.path.isfile(os.path.join(version_dir, "saved_model.pb"))
    assert os.path.isfile(tmp_path / "copy.keras")
    fn = tf.saved_model.load(version_dir).signatures["serving_default"]
    good = photos()[1]
    _, ref = keras_reference(net, [good])
    np.testing.assert_allclose(
        fn(images=tf.constant([good]))["sleeve_probabilities"].numpy(),
        ref["sleeve"], atol=TOL)


def test_baked_gallery_returns_exact_search_top_k(tmp_path, exported):
    """A gallery in the graph: the session loader (TF Serving's path)
    returns the same neighbours and scores as exact search in NumPy."""
    from mtct_tf import retrieval

    net, _, _ = exported
    encoded = more_photos()
    crops, ref = keras_reference(net, encoded)
    rng = np.random.default_rng(0)
    # Gallery: the photos' own embeddings (each its own nearest) plus
    # random distractors.
    dim = ref["embedding"].shape[1]
    emb = np.concatenate([ref["embedding"], rng.normal(size=(20, dim))])
    n = len(emb)
    gallery = retrieval.Gallery(emb, [f"img{i}" for i in range(n)],
                                [f"item{i % 9}" for i in range(n)],
                                {"model": "test"})
    version_dir = export_lib.export_saved_model(
        net, SCHEMA, str(tmp_path), gallery=gallery, top_k=4)
    got = run_session(version_dir, export_lib.SIGNATURE_IMAGES, encoded)
    assert sorted(got) == sorted(export_lib.output_keys(
        SCHEMA, with_gallery=True))
    want = retrieval.ExactSearch(gallery.embeddings).search(
        ref["embedding"], 4)
    indices, scores = want
    np.testing.assert_array_equal(got["retrieved_ids"],
                                  gallery.ids[indices])
    np.testing.assert_array_equal(got["retrieved_items"],
                                  gallery.items[indices])
    np.testing.assert_allclose(got["retrieved_scores"], scores, atol=1e-4)
    assert list(got["retrieved_ids"][:, 0]) == [
        f"img{i}" for i in range(len(encoded))]
    tensors = run_session(version_dir, export_lib.SIGNATURE_TENSORS, crops)
    np.testing.assert_array_equal(tensors["retrieved_ids"],
                                  got["retrieved_ids"])
    _, info = export_lib.read_export_info(version_dir)
    assert info["gallery"] == {"images": n, "top_k": 4,
                               "info": {"model": "test"}}
    small = retrieval.Gallery(emb[:2, :5], ["a", "b"], ["x", "y"])
    with pytest.raises(ValueError, match="embedded by another model"):
        export_lib.export_saved_model(net, SCHEMA, str(tmp_path),
                                      gallery=small)
