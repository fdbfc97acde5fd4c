"""export/serving_client.py: request shapes, and REST against a fake server.

TF Serving itself cannot run here; a local http.server answers in its
documented REST format instead.
"""

import base64
import importlib.util
import json
import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

PATH = os.path.join(os.path.dirname(__file__), os.pardir, "export",
                    "serving_client.py")


def _load_client():
    spec = importlib.util.spec_from_file_location("serving_client", PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


client = _load_client()


@pytest.fixture
def photos(tmp_path):
    paths = []
    for i, data in enumerate([b"\x89PNG\r\n\x1a\nfake png bytes \x00\xff",
                              bytes(range(256)) * 3]):
        path = tmp_path / f"p{i}.png"
        path.write_bytes(data)
        paths.append(str(path))
    return paths


def test_rest_url():
    assert client.rest_url() == "http://localhost:8501/v1/models/mtct:predict"
    assert client.rest_url("10.0.0.2", 9000, "shirts", 3) == (
        "http://10.0.0.2:9000/v1/models/shirts/versions/3:predict")


def test_rest_body_is_row_format_with_base64_file_bytes(photos):
    encoded = client.read_files(photos)
    body = client.rest_body(encoded)
    assert list(body) == ["signature_name", "instances"]
    assert body["signature_name"] == "serving_default"
    assert len(body["instances"]) == 2
    for inst, path in zip(body["instances"], photos):
        assert list(inst) == ["b64"]
        with open(path, "rb") as f:
            assert base64.b64decode(inst["b64"]) == f.read()
    assert body["instances"][0]["b64"] == base64.b64encode(
        b"\x89PNG\r\n\x1a\nfake png bytes \x00\xff").decode()
    # JSON-serialisable as is.
    assert json.loads(json.dumps(body)) == body
    assert client.rest_body(encoded, "serving_tensors")[
        "signature_name"] == "serving_tensors"


def test_missing_photo_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jpg"):
        client.read_files([str(tmp_path / "nope.jpg")])


class _FakeServing(BaseHTTPRequestHandler):
    """Answers :predict like TF Serving's REST API (row format)."""

    seen = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.seen.append((self.path, body, self.headers["Content-Type"]))
        if not self.path.startswith("/v1/models/mtct"):
            self._send(404, {"error": "Servable not found for request: "
                             f"Latest({self.path})"})
            return
        preds = []
        for inst in body["instances"]:
            n = len(base64.b64decode(inst["b64"]))
            k = n % 3
            probs = [0.1, 0.1, 0.1]
            probs[k] = 0.8
            preds.append({"colour_probabilities": probs, "colour_index": k,
                          "colour_value": ["red", "green", "blue"][k],
                          "embedding": [0.5, -0.5]})
        self._send(200, {"predictions": preds})

    def _send(self, code, obj):
        data = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    _FakeServing.seen = []
    httpd = HTTPServer(("127.0.0.1", 0), _FakeServing)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd.server_address[1]
    httpd.shutdown()
    httpd.server_close()


def test_rest_predict_against_a_fake_server(photos, server, capsys):
    encoded = client.read_files(photos)
    rows = client.rest_predict(encoded, host="127.0.0.1", port=server,
                               version=2)
    path, body, ctype = _FakeServing.seen[0]
    assert path == "/v1/models/mtct/versions/2:predict"
    assert ctype == "application/json"
    assert body == client.rest_body(encoded)
    ks = [len(b) % 3 for b in encoded]
    assert [r["colour_index"] for r in rows] == ks
    assert client.summarize(rows[0]) == {
        "colour": (["red", "green", "blue"][ks[0]], 0.8)}

    code = client.main(photos + ["--host", "127.0.0.1", "--rest_port",
                                 str(server)])
    assert code == 0
    out = capsys.readouterr().out
    assert f"colour: {['red', 'green', 'blue'][ks[1]]} (0.800)" in out


def test_rest_errors_carry_the_server_message(photos, server, capsys):
    with pytest.raises(RuntimeError, match="HTTP 404.*Servable not found"):
        client.rest_predict(client.read_files(photos), host="127.0.0.1",
                            port=server, model_name="other")
    code = client.main(photos + ["--host", "127.0.0.1", "--rest_port",
                                 str(server), "--model_name", "other"])
    assert code == 2 and "Servable not found" in capsys.readouterr().err


def test_dry_run_prints_the_request(photos, capsys):
    assert client.main(photos + ["--dry_run", "--version", "4"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(
        "POST http://localhost:8501/v1/models/mtct/versions/4:predict")
    body = json.loads(out[out.index("{"):])
    assert body["signature_name"] == "serving_default"
    assert len(body["instances"]) == 2


def test_grpc_without_the_package_says_how_to_install(photos, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_serving", None)
    monkeypatch.setitem(sys.modules, "tensorflow_serving.apis", None)
    with pytest.raises(ImportError, match=r"pip install -e \.\[serving\]"):
        client.grpc_request(client.read_files(photos))
    assert client.main(photos + ["--protocol", "grpc"]) == 2


def test_grpc_request_shape(photos):
    pytest.importorskip("tensorflow_serving.apis.predict_pb2",
                        reason="tensorflow-serving-api (extra 'serving')")
    encoded = client.read_files(photos)
    request = client.grpc_request(encoded, version=5)
    assert request.model_spec.name == "mtct"
    assert request.model_spec.signature_name == "serving_default"
    assert request.model_spec.version.value == 5
    assert list(request.inputs) == ["images"]
    tensor = request.inputs["images"]
    assert tensor.dtype == 7  # DT_STRING
    assert [d.size for d in tensor.tensor_shape.dim] == [2]
    assert list(tensor.string_val) == encoded


def test_grpc_predict_against_a_fake_server(photos):
    pytest.importorskip("tensorflow_serving.apis.prediction_service_pb2_grpc",
                        reason="tensorflow-serving-api (extra 'serving')")
    from concurrent import futures

    import grpc
    import numpy as np
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2
    from tensorflow_serving.apis import prediction_service_pb2_grpc as svc

    seen = []

    class Servicer(svc.PredictionServiceServicer):
        def Predict(self, request, context):
            seen.append(request)
            images = tf.make_ndarray(request.inputs["images"])
            n = len(images)
            response = predict_pb2.PredictResponse()
            response.outputs["colour_probabilities"].CopyFrom(
                tf.make_tensor_proto(np.tile([[0.2, 0.7, 0.1]], [n, 1])
                                     .astype(np.float32)))
            response.outputs["colour_index"].CopyFrom(
                tf.make_tensor_proto(np.ones([n], np.int64)))
            response.outputs["colour_value"].CopyFrom(
                tf.make_tensor_proto([b"green"] * n))
            return response

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    svc.add_PredictionServiceServicer_to_server(Servicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        rows = client.grpc_predict(client.read_files(photos),
                                   host="127.0.0.1", port=port)
    finally:
        server.stop(0)
    assert len(rows) == 2 and rows[1]["colour_value"] == "green"
    assert client.summarize(rows[0])["colour"] == ("green",
                                                   pytest.approx(0.7))
    assert list(seen[0].inputs["images"].string_val) == \
        client.read_files(photos)
