"""Sends photos to a TF Serving ``mtct`` model over REST or gRPC.

    python export/serving_client.py photo1.jpg [photo2.png ...] \
        [--protocol rest|grpc] [--host localhost] [--rest_port 8501] \
        [--grpc_port 8500] [--model_name mtct] [--version N] \
        [--signature serving_default] [--dry_run]

REST uses only the standard library (``urllib``). gRPC needs the
``tensorflow-serving-api`` package (a dependency of the project); it is
imported only when ``--protocol grpc`` is asked for. ``--dry_run`` prints the
request (REST: URL and JSON body, base64 shortened) without sending it.

Request shapes (see export/README.md):

* REST: ``POST http://HOST:8501/v1/models/mtct[/versions/N]:predict`` with
  ``{"signature_name": "serving_default", "instances": [{"b64": "..."}]}``;
  the signature has one named input (``images``), so each instance is that
  input's value and TF Serving decodes ``{"b64": ...}`` to the raw bytes.
  The answer is ``{"predictions": [{"colour_probabilities": [...],
  "colour_index": 2, "colour_value": "blue", ..., "embedding": [...]}]}``.
* gRPC: ``PredictionService/Predict`` on HOST:8500 with a ``PredictRequest``
  whose ``inputs["images"]`` is a DT_STRING tensor [B] of the file bytes.
"""

import argparse
import base64
import json
import sys
import urllib.error
import urllib.request

INPUT = "images"
DEFAULT_SIGNATURE = "serving_default"
GRPC_MISSING = (
    "gRPC needs the tensorflow-serving-api package, which is not installed. "
    "Install it with `pip install -e .[serving]` (or `pip install "
    "tensorflow-serving-api`), or use --protocol rest (standard library "
    "only).")


def read_files(paths):
    out = []
    for path in paths:
        try:
            with open(path, "rb") as f:
                out.append(f.read())
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: no such photo file") from None
    return out


def rest_url(host="localhost", port=8501, model_name="mtct", version=None):
    """``http://host:port/v1/models/<name>[/versions/<v>]:predict``."""
    version_part = f"/versions/{int(version)}" if version is not None else ""
    return f"http://{host}:{port}/v1/models/{model_name}{version_part}:predict"


def rest_body(encoded, signature=DEFAULT_SIGNATURE):
    """The REST predict request (row format) for a list of photo bytes."""
    return {
        "signature_name": signature,
        "instances": [{"b64": base64.b64encode(b).decode("ascii")}
                      for b in encoded],
    }


def rest_predict(encoded, *, host="localhost", port=8501, model_name="mtct",
                 version=None, signature=DEFAULT_SIGNATURE, timeout=30.0):
    """POSTs a predict request; returns the ``predictions`` list.

    Raises:
        RuntimeError: an HTTP error (with TF Serving's ``error`` message) or
            an answer without ``predictions``.
    """
    url = rest_url(host, port, model_name, version)
    data = json.dumps(rest_body(encoded, signature)).encode("utf-8")
    request = urllib.request.Request(
        url, data=data, method="POST",
        headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            answer = json.loads(response.read().decode("utf-8"))
    except urllib.error.HTTPError as e:
        body = e.read().decode("utf-8", "replace")
        try:
            body = json.loads(body).get("error", body)
        except ValueError:
            pass
        raise RuntimeError(f"{url}: HTTP {e.code}: {body}") from None
    if "predictions" not in answer:
        raise RuntimeError(f"{url}: no 'predictions' in the answer: "
                           f"{str(answer)[:500]}")
    return answer["predictions"]


def _grpc_modules():
    try:
        import grpc
        from tensorflow_serving.apis import (
            predict_pb2,
            prediction_service_pb2_grpc,
        )
    except ImportError as e:
        raise ImportError(f"{GRPC_MISSING} ({e})") from None
    return grpc, predict_pb2, prediction_service_pb2_grpc


def grpc_request(encoded, *, model_name="mtct", version=None,
                 signature=DEFAULT_SIGNATURE):
    """A ``tensorflow_serving.apis.predict_pb2.PredictRequest``."""
    import tensorflow as tf

    _, predict_pb2, _ = _grpc_modules()
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = int(version)
    request.inputs[INPUT].CopyFrom(tf.make_tensor_proto(
        list(encoded), dtype=tf.string, shape=[len(encoded)]))
    return request


def grpc_predict(encoded, *, host="localhost", port=8500, model_name="mtct",
                 version=None, signature=DEFAULT_SIGNATURE, timeout=30.0):
    """Calls ``PredictionService/Predict``; returns a list of dicts like REST.

    String outputs come back as ``bytes`` decoded to ``str``.
    """
    import tensorflow as tf

    grpc, _, service = _grpc_modules()
    request = grpc_request(encoded, model_name=model_name, version=version,
                           signature=signature)
    with grpc.insecure_channel(f"{host}:{port}") as channel:
        response = service.PredictionServiceStub(channel).Predict(
            request, timeout=timeout)
    outputs = {k: tf.make_ndarray(v) for k, v in response.outputs.items()}
    rows = []
    for i in range(len(encoded)):
        row = {}
        for k, v in outputs.items():
            value = v[i]
            if isinstance(value, bytes):
                value = value.decode("utf-8")
            row[k] = value.tolist() if hasattr(value, "tolist") else value
        rows.append(row)
    return rows


def summarize(prediction):
    """``{attribute: (value name, probability)}`` of one prediction row."""
    out = {}
    for key, value in prediction.items():
        if not key.endswith("_value"):
            continue
        name = key[:-len("_value")]
        probs = prediction.get(f"{name}_probabilities")
        index = prediction.get(f"{name}_index")
        p = float(probs[int(index)]) if probs is not None and \
            index is not None else float("nan")
        out[name] = (value, p)
    return out


def _shorten(body):
    short = dict(body)
    short["instances"] = [
        {"b64": (i["b64"][:32] + f"... ({len(i['b64'])} chars)")
         if len(i["b64"]) > 40 else i["b64"]} for i in body["instances"]]
    return short


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("photos", nargs="+", help="JPEG / PNG files")
    p.add_argument("--protocol", choices=("rest", "grpc"), default="rest")
    p.add_argument("--host", default="localhost")
    p.add_argument("--rest_port", type=int, default=8501)
    p.add_argument("--grpc_port", type=int, default=8500)
    p.add_argument("--model_name", default="mtct")
    p.add_argument("--version", type=int)
    p.add_argument("--signature", default=DEFAULT_SIGNATURE)
    p.add_argument("--timeout", type=float, default=30.0)
    p.add_argument("--dry_run", action="store_true",
                   help="print the request instead of sending it")
    args = p.parse_args(argv)
    try:
        encoded = read_files(args.photos)
        if args.dry_run:
            if args.protocol == "rest":
                print("POST", rest_url(args.host, args.rest_port,
                                       args.model_name, args.version))
                print(json.dumps(_shorten(rest_body(encoded,
                                                    args.signature)),
                                 indent=1))
            else:
                print(grpc_request(encoded, model_name=args.model_name,
                                   version=args.version,
                                   signature=args.signature))
            return 0
        if args.protocol == "rest":
            rows = rest_predict(
                encoded, host=args.host, port=args.rest_port,
                model_name=args.model_name, version=args.version,
                signature=args.signature, timeout=args.timeout)
        else:
            rows = grpc_predict(
                encoded, host=args.host, port=args.grpc_port,
                model_name=args.model_name, version=args.version,
                signature=args.signature, timeout=args.timeout)
    except (FileNotFoundError, ImportError, RuntimeError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for path, row in zip(args.photos, rows):
        print(path)
        if "box" in row:
            print(f"  box {row['box']} score {row.get('box_score')}")
        for name, (value, prob) in summarize(row).items():
            print(f"  {name}: {value} ({prob:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
