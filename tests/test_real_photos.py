"""Real photos end to end: importer, EXIF, a training step, export, serving.

A handful of the CC0 phone photos of ``clothing-dataset-small`` (read in
place from ``../shared/data``; linked into a temporary class-per-folder
tree, never copied) go through ``datasets/convert_image_folder.py``, one
step of the ``real_photos`` experiment, the TF Serving export, the session
loader (TF Serving's path), ``predict`` and the serving client. Where the
dataset is absent (a user's clone) every test here is skipped, and says
why.
"""

import base64
import io
import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from test_export import run_session
from test_serving_client import client

from mtct_tf import configs, export_lib, predicting, runs, training
from mtct_tf.data import exif, pipeline

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, os.pardir, "shared", "data",
                    "clothing-dataset-small")
PER_SPLIT = {"train": 3, "validation": 1, "test": 1}

pytestmark = pytest.mark.skipif(
    not os.path.isdir(DATA),
    reason=f"the real photos are not at {os.path.abspath(DATA)} (git clone "
    "https://github.com/alexeygrigorev/clothing-dataset-small there to run "
    "these tests)")


def _tree(root):
    """The first photos of every class and split, linked into ``root``."""
    for split, n in PER_SPLIT.items():
        for cls in sorted(os.listdir(os.path.join(DATA, split))):
            os.makedirs(os.path.join(root, split, cls))
            for name in sorted(os.listdir(os.path.join(DATA, split, cls)))[:n]:
                os.symlink(os.path.join(DATA, split, cls, name),
                           os.path.join(root, split, cls, name))
    return root


def _sideways(path, quality=100):
    """``(upright, tagged)`` JPEG bytes of a photo: the same pixels, once
    as they are and once stored turned with EXIF orientation 6."""
    with Image.open(path) as im:
        img = im.convert("RGB")
    up, side = io.BytesIO(), io.BytesIO()
    img.save(up, "JPEG", quality=quality)
    tags = Image.Exif()
    tags[0x0112] = 6
    img.transpose(Image.Transpose.ROTATE_90).save(side, "JPEG",
                                                  quality=quality, exif=tags)
    return up.getvalue(), side.getvalue()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Photos imported, one step of ``real_photos`` trained, exported."""
    base = tmp_path_factory.mktemp("real")
    photos = _tree(str(base / "photos"))
    out = str(base / "data")
    script = os.path.join(ROOT, "datasets", "convert_image_folder.py")
    done = subprocess.run([sys.executable, script, "--root", photos,
                           "--out", out, "--quiet"], capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
    config = configs.build("real_photos", overrides=[
        f"data.shards_dir={out}/shards", "data.batch_size=4",
        # The small NIN: from its initialisation its answers already depend
        # on the photo, which the EXIF comparison below needs.
        "model.backbone=nin", "model.preset=small",
        "shop.epochs=1", "shop.steps_per_epoch=1", "shop.validation_steps=1"])
    model_dir = str(base / "run")
    training.run(config, model_dir, verbose=0)
    net, schema, _ = runs.load_model_and_schema(model_dir)
    # One step leaves the batch-norm statistics near their start (mean 0,
    # variance 1), and every photo near the same answer; set them to a
    # batch of real photos' so that answers differ from photo to photo
    # and a comparison between two of them can fail.
    images, _ = next(iter(pipeline.make_dataset(
        os.path.join(out, "shards"), split="train", batch_size=30,
        image_size=net.image_size, training=False)))
    norms = [la for la in net.layers
             if isinstance(la, keras.layers.BatchNormalization)]
    for layer in norms:
        layer.momentum = 0.0
    net(images, training=True)
    for layer in norms:
        layer.momentum = 0.9
    net.save(os.path.join(runs.stage_dir(model_dir, "shop"), runs.MODEL_FILE))
    version = export_lib.export_saved_model(net, schema, str(base / "serve"))
    return photos, out, config, model_dir, net, schema, version


def test_importer_reads_the_real_layout(trained):
    photos, out, *_ = trained
    report = json.load(open(os.path.join(out, "conversion.json")))
    assert report["layout"] == "split folders"
    assert report["images"] == 50
    summary = json.load(open(os.path.join(out, "shards", "summary.json")))
    assert {s: v["records"] for s, v in summary["splits"].items()} == {
        "train": 30, "val": 10, "test": 10}
    schema = pipeline.load_schema(os.path.join(out, "shards"))
    assert schema["category"].values == tuple(sorted(
        os.listdir(os.path.join(DATA, "train"))))
    # Untagged RGB JPEGs are kept byte for byte.
    assert summary["splits"]["train"]["reencoded"] == 0


def test_session_loader_matches_keras_on_real_jpegs(trained):
    *_, out, config, _, net, schema, version = trained
    files = pipeline.shard_files(os.path.join(out, "shards"), "test")
    records = [pipeline.parse_example(s, schema)
               for s in tf.data.TFRecordDataset(files)]
    encoded = np.array([r["encoded"].numpy() for r in records], object)
    ds = pipeline.make_dataset(files, schema, image_size=net.image_size,
                               batch_size=len(encoded), training=False,
                               margin=config.data.margin)
    images, _ = next(iter(ds))
    ref = net.predict_on_batch(images)["category"]
    got = run_session(version, export_lib.SIGNATURE_IMAGES, encoded)
    np.testing.assert_array_equal(got["category_index"], ref.argmax(-1))
    np.testing.assert_allclose(got["category_probabilities"], ref, atol=1e-4)
    assert list(got["category_value"]) == [
        schema["category"].values[k] for k in ref.argmax(-1)]


def test_sideways_photo_gets_the_upright_answer(trained, tmp_path):
    photos, _, _, model_dir, net, schema, version = trained
    first = os.path.join(photos, "test", "shirt",
                         sorted(os.listdir(os.path.join(photos, "test",
                                                        "shirt")))[0])
    upright, tagged = _sideways(first)
    assert int(exif.jpeg_orientation(tf.constant(tagged))) == 6
    # The serving graph (TF Serving's path) turns it back.
    got = run_session(version, export_lib.SIGNATURE_IMAGES,
                      np.array([upright, tagged], object))
    assert got["category_index"][0] == got["category_index"][1]
    p = got["category_probabilities"]
    same = np.abs(p[0] - p[1]).max()
    # Without its tag the sideways photo is another picture to the model:
    # the comparison above can tell.
    untagged = io.BytesIO()
    Image.open(io.BytesIO(tagged)).save(untagged, "JPEG", quality=100)
    other = run_session(version, export_lib.SIGNATURE_IMAGES,
                        np.array([untagged.getvalue()], object))
    print(f"upright vs tagged {same:.2g}, vs untagged "
          f"{np.abs(p[0] - other['category_probabilities'][0]).max():.2g}")
    assert np.abs(p[0] - other["category_probabilities"][0]).max() > 3 * same
    # predict (the same graph in-process) too, and its PNG is upright.
    (tmp_path / "up.jpg").write_bytes(upright)
    (tmp_path / "side.jpg").write_bytes(tagged)
    predictor = predicting.load_predictor(model_dir)
    a = predictor.predict_file(str(tmp_path / "up.jpg"), top_k=3)
    b = predictor.predict_file(str(tmp_path / "side.jpg"), top_k=3)
    assert [v for v, _ in a.top["category"]] == [
        v for v, _ in b.top["category"]]
    png = predicting.annotate(tagged, b, str(tmp_path / "side.png"))
    with Image.open(png) as im, Image.open(io.BytesIO(upright)) as up:
        # Photo scaled by an integer factor, panel to its right: the
        # upright photo is taller than wide, as the annotation is.
        assert im.size[1] >= up.size[1] and up.size[1] > up.size[0]


class _ModelServer(BaseHTTPRequestHandler):
    """TF Serving's REST :predict, answered by a real SavedModel."""

    signature = None

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        images = tf.constant([base64.b64decode(i["b64"])
                              for i in body["instances"]])
        out = self.signature(images=images)
        rows = []
        for k in range(len(body["instances"])):
            rows.append({
                key: (v[k].numpy().decode() if v.dtype == tf.string
                      else v[k].numpy().tolist())
                for key, v in out.items()})
        data = json.dumps({"predictions": rows}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def test_serving_client_sends_sideways_photos_as_they_are(trained, tmp_path):
    *_, version = trained
    loaded = tf.saved_model.load(version)
    _ModelServer.signature = loaded.signatures[export_lib.SIGNATURE_IMAGES]
    httpd = HTTPServer(("127.0.0.1", 0), _ModelServer)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        photos = trained[0]
        first = os.path.join(photos, "test", "hat", sorted(os.listdir(
            os.path.join(photos, "test", "hat")))[0])
        upright, tagged = _sideways(first)
        paths = []
        for name, data in (("up.jpg", upright), ("side.jpg", tagged)):
            (tmp_path / name).write_bytes(data)
            paths.append(str(tmp_path / name))
        encoded = client.read_files(paths)
        # The client sends the file's bytes untouched: the graph honours
        # the tag.
        assert encoded == [upright, tagged]
        rows = client.rest_predict(encoded, host="127.0.0.1",
                                   port=httpd.server_address[1])
        assert rows[0]["category_value"] == rows[1]["category_value"]
        assert np.abs(np.subtract(rows[0]["category_probabilities"],
                                  rows[1]["category_probabilities"])
                      ).max() < 0.02
    finally:
        httpd.shutdown()
        httpd.server_close()
