"""Export: SavedModels for TF Serving and ``.keras`` files (SPEC §2.4).

``export_saved_model`` writes one TF Serving version directory::

    <base_dir>/<model_name>/<version>/
        saved_model.pb, variables/, fingerprint.pb
        assets.extra/schema.json        the attribute schema (value names)
        assets.extra/mtct_export.json   what was exported, and how
        assets.extra/tf_serving_warmup_requests   requests TF Serving
                                        replays at load (``warmup_requests``)

Signatures (``ServingModule``):

``serving_default``
    input ``images``: string [B], encoded JPEG / PNG photos of any sizes.
    Each is decoded and resized exactly as the evaluation pipeline does
    (``pipeline.decode_image`` then ``pipeline.crop_and_resize`` of the whole
    image), then the MTN runs on the batch.
``serving_tensors``
    input ``images``: float32 [B, S, S, 3] in [0, 255], already cropped and
    resized (for clients that do their own preprocessing).

Outputs of both, per attribute ``a`` (keys use ``_`` because TF Serving's
REST API passes output names through to JSON, where ``_`` needs no care):
``a_probabilities`` float32 [B, K], ``a_index`` int64 [B] (top value) and
``a_value`` string [B] (its name, looked up in the schema's value names baked
into the graph as a constant); plus ``embedding`` float32 [B, D].

With a detector (``detector=`` a Faster R-CNN SavedModel from
``mtct_tf.detect export``), ``serving_default`` takes whole street photos:
detector -> highest-scoring garment box with score >= ``min_score`` (else
the whole image) -> ``crop_and_resize`` with ``margin`` -> MTN, in one
graph. It adds ``box`` (float32 [B, 4], ymin, xmin, ymax, xmax normalised
to the original photo), ``box_pixels`` (the same in original pixels),
``box_score`` (float32 [B], 0 without a detection) and ``detected`` (bool
[B]). ``serving_tensors`` stays detector-free.

With a gallery (``gallery=`` a ``retrieval.Gallery``, e.g. from
``python -m mtct_tf.retrieve index``), both signatures also return the
street-to-shop top-k against it, by exact cosine search inside the graph:
``retrieved_items`` and ``retrieved_ids`` (string [B, k]) and
``retrieved_scores`` (float32 [B, k], best first). The gallery's
embeddings are a variable of the SavedModel (restored like the weights);
the gallery must come from the same run (for MTCT, embedded by its shop
stage: ``retrieval.gallery_stage``), which its ``info`` records.

Every output has the batch as its first dimension, as TF Serving's request
batching requires. The SavedModel loads both ways: through the MetaGraph
and its restore op (TF Serving, ``saved_model_cli run``,
``tf.compat.v1.saved_model.loader.load``) and through the object graph
(``tf.saved_model.load``); see ``ServingModule``.
"""

import functools
import json
import os
import re
import shutil
import tempfile
import time

import keras
import tensorflow as tf

from mtct_tf import attributes as attributes_lib
from mtct_tf import detector as detector_lib
from mtct_tf import fileio, runs
from mtct_tf.data import pipeline
from mtct_tf.data.features import GARMENT_CLASS

SIGNATURE_IMAGES = "serving_default"
SIGNATURE_TENSORS = "serving_tensors"
INPUT = "images"
EXTRA_DIR = "assets.extra"
# TF Serving replays these requests when it loads a version.
WARMUP_FILE = "tf_serving_warmup_requests"
META_FILE = "mtct_export.json"
DEFAULT_MIN_SCORE = 0.5


def output_keys(schema, *, with_detector=False, with_gallery=False):
    """The output names of the serving signatures, in order."""
    schema = attributes_lib.get_schema(schema)
    keys = []
    for name in schema.names:
        keys += [f"{name}_probabilities", f"{name}_index", f"{name}_value"]
    keys.append("embedding")
    if with_detector:
        keys += ["box", "box_pixels", "box_score", "detected"]
    if with_gallery:
        keys += ["retrieved_items", "retrieved_ids", "retrieved_scores"]
    return keys


def captured_variables(functions):
    """The tf.Variables that tf.functions with input signatures read.

    Each function is traced (once: the trace is cached) and its captured
    variables collected, without duplicates, in a stable order.
    """
    found = {}
    for fn in functions:
        for v in fn.get_concrete_function().variables:
            found.setdefault(id(v), v)
    return list(found.values())


class ServingModule(tf.Module):
    """The exported graph: preprocessing, optional detector, MTN, names.

    Args:
        net: an ``MTN``.
        schema: its ``AttributeSchema`` (value names); must match its heads.
        margin: context added around a detector box on each side, as a
            fraction of the box size (``pipeline.crop_and_resize``). The
            whole-image path is unaffected (the enlarged box is clipped).
        detector: ``None``, or a detector SavedModel path.
        min_score: lowest detection score accepted.
        class_id: the detection class of garments (``None``: any class).
        gallery: ``None``, or a ``retrieval.Gallery`` of ``net``'s run
            (embedded by ``net`` or, for MTCT, by its shop stage):
            the signatures also return the ``top_k`` nearest gallery images.
        top_k: gallery neighbours returned (at most the gallery's size).
    """

    def __init__(self, net, schema, *, margin=0.0, detector=None,
                 min_score=DEFAULT_MIN_SCORE, class_id=GARMENT_CLASS,
                 gallery=None, top_k=10):
        super().__init__(name="mtct_serving")
        schema = attributes_lib.get_schema(schema)
        runs.check_schema(net, schema, "given for serving")
        if margin < 0:
            raise ValueError(
                f"`margin` must be >= 0. Received: margin={margin}")
        # Held through a plain callable, which tf.Module does not track: the
        # object graph gets the model's tf.Variables (below), not the model.
        self._net = functools.partial(net, training=False)
        self._embedding_dim = int(net.output["embedding"].shape[-1])
        self._schema = schema
        self._size = int(net.image_size)
        self._margin = float(margin)
        self._min_score = float(min_score)
        self._class_id = class_id
        self.with_gallery = gallery is not None
        if self.with_gallery:
            if gallery.embeddings.shape[1] != self._embedding_dim:
                raise ValueError(
                    f"the gallery's embeddings have {gallery.embeddings.shape[1]}"
                    f" dimensions, the model's {self._embedding_dim}: it was "
                    "embedded by another model")
            if len(gallery) == 0 or top_k < 1:
                raise ValueError(
                    "a baked-in gallery needs at least one image and "
                    f"top_k >= 1. Received: {len(gallery)} images, "
                    f"top_k={top_k}")
            self._top_k = min(int(top_k), len(gallery))
            self.gallery_embeddings = tf.Variable(
                gallery.embeddings, trainable=False, name="gallery_embeddings")
            self.gallery_items = tf.Variable(
                gallery.items, trainable=False, name="gallery_items")
            self.gallery_ids = tf.Variable(
                gallery.ids, trainable=False, name="gallery_ids")
        self.with_detector = detector is not None
        if self.with_detector:
            (self.detector, self._detect, self._detector_input,
             self._detector_dtype) = detector_lib.load_detector(detector)
        self.serve_images = tf.function(
            self._serve_images,
            input_signature=[tf.TensorSpec([None], tf.string, name=INPUT)])
        self.serve_tensors = tf.function(
            self._serve_tensors,
            input_signature=[tf.TensorSpec(
                [None, self._size, self._size, 3], tf.float32, name=INPUT)])
        # Keras 3 variables are not tf.Variables. Saved through a tracked
        # Keras model, each is exported as a new tf.Variable initialised
        # from the one the graph reads, and the MetaGraph's restore op (all
        # that TF Serving and the TF1 session loader run) fills the new
        # one: the variables the signatures read stay uninitialised, "Could
        # not find variable ...". Tracking the tf.Variables the traced
        # signatures capture saves each weight once, as the variable the
        # graph reads, which both loaders restore.
        self._serving_variables = captured_variables(
            [self.serve_images, self.serve_tensors])

    def signatures(self):
        return {SIGNATURE_IMAGES: self.serve_images,
                SIGNATURE_TENSORS: self.serve_tensors}

    def _net_outputs(self, images):
        out = self._net(images)
        return {k: tf.cast(v, tf.float32) for k, v in out.items()}

    def _empty_outputs(self):
        dims = {**self._schema.num_values, "embedding": self._embedding_dim}
        return {k: tf.zeros([0, d], tf.float32) for k, d in dims.items()}

    def _heads(self, images):
        # TF 2.20's graph-mode CPU Conv2D returns its input unchanged for an
        # empty batch, which then fails in batch norm; an empty request gets
        # empty outputs without running the network.
        out = tf.cond(tf.shape(images)[0] > 0,
                      lambda: self._net_outputs(images),
                      self._empty_outputs)
        result = {}
        for attribute in self._schema:
            probs = out[attribute.name]
            index = tf.argmax(probs, axis=-1, output_type=tf.int64)
            names = tf.constant(attribute.values, tf.string)
            result[f"{attribute.name}_probabilities"] = probs
            result[f"{attribute.name}_index"] = index
            result[f"{attribute.name}_value"] = tf.gather(names, index)
        result["embedding"] = out["embedding"]
        if self.with_gallery:
            # The gallery's rows are unit vectors (``retrieval.normalize``);
            # the floor of 1e-6 on the norm only matters for a zero query.
            query = keras.ops.normalize(out["embedding"], axis=-1,
                                        epsilon=1e-6)
            scores = tf.matmul(query, self.gallery_embeddings,
                               transpose_b=True)
            top = tf.math.top_k(scores, k=self._top_k)
            result.update(
                retrieved_scores=top.values,
                retrieved_items=tf.gather(self.gallery_items, top.indices),
                retrieved_ids=tf.gather(self.gallery_ids, top.indices))
        return result

    def _serve_tensors(self, images):
        return self._heads(images)

    def _whole_image(self, encoded):
        image = pipeline.decode_image(encoded)
        return pipeline.crop_and_resize(
            image, tf.constant([0.0, 0.0, 1.0, 1.0]), self._size, 0.0)

    def _detect_and_crop(self, encoded):
        image = pipeline.decode_image(encoded)
        shape = tf.shape(image)
        detections = self._detect(**{
            self._detector_input:
                tf.cast(image, self._detector_dtype)[tf.newaxis]})
        box, pixels, score, detected = detector_lib.choose_box_in_graph(
            detections, shape[0], shape[1], min_score=self._min_score,
            class_id=self._class_id)
        crop = pipeline.crop_and_resize(image, box, self._size, self._margin)
        return crop, box, pixels, score, detected

    def _serve_images(self, images):
        crop_spec = tf.TensorSpec([self._size, self._size, 3], tf.float32)
        if not self.with_detector:
            crops = tf.map_fn(self._whole_image, images,
                              fn_output_signature=crop_spec)
            return self._heads(crops)
        box_spec = tf.TensorSpec([4], tf.float32)
        crops, box, pixels, score, detected = tf.map_fn(
            self._detect_and_crop, images,
            fn_output_signature=(crop_spec, box_spec, box_spec,
                                 tf.TensorSpec([], tf.float32),
                                 tf.TensorSpec([], tf.bool)))
        result = self._heads(crops)
        result.update(box=box, box_pixels=pixels, box_score=score,
                      detected=detected)
        return result


def next_version(model_dir):
    """1 + the largest integer version directory in ``model_dir`` (or 1)."""
    if not os.path.isdir(model_dir):
        return 1
    versions = [int(d) for d in os.listdir(model_dir)
                if re.fullmatch(r"\d+", d)
                and os.path.isdir(os.path.join(model_dir, d))]
    return max(versions, default=0) + 1


def export_saved_model(net, schema, base_dir, model_name="mtct", version=None,
                       margin=0.0, detector=None, *,
                       min_score=DEFAULT_MIN_SCORE, class_id=GARMENT_CLASS,
                       gallery=None, top_k=10):
    """Writes a TF Serving version directory for ``net``.

    The SavedModel is written into a hidden temporary directory beside the
    version (TF Serving only loads directories named by an integer) and
    renamed into place when complete, so a crash never leaves a half
    version that a running server would pick up.

    Args:
        net: an ``MTN``.
        schema: its ``AttributeSchema`` (or a built-in name / JSON path).
        base_dir: the model base directory's parent.
        model_name: TF Serving's model name (the ``base_path`` leaf).
        version: a positive int, or ``None`` for the next free integer.
        margin: context around detector boxes (see ``ServingModule``).
        detector: ``None`` or a detector SavedModel path (see the module
            docstring).
        min_score, class_id: detector box selection.
        gallery, top_k: a ``retrieval.Gallery`` to search in the graph (see
            the module docstring) and how many neighbours to return.

    Returns:
        The version directory path.

    Raises:
        FileExistsError: ``version`` exists already (versions are never
            overwritten: a server may have loaded it).
        ValueError: the schema does not match the model, or a bad version.
    """
    schema = attributes_lib.get_schema(schema)
    model_dir = os.path.join(os.fspath(base_dir), model_name)
    os.makedirs(model_dir, exist_ok=True)
    if version is None:
        version = next_version(model_dir)
    if isinstance(version, bool) or not isinstance(version, int) or \
            version < 1:
        raise ValueError(
            f"`version` must be a positive int. Received: version={version!r}")
    final = os.path.join(model_dir, str(version))
    if os.path.exists(final):
        raise FileExistsError(
            f"{final} exists; TF Serving versions are never overwritten. "
            "Leave version=None for the next free one.")
    start = time.time()
    module = ServingModule(net, schema, margin=margin, detector=detector,
                           min_score=min_score, class_id=class_id,
                           gallery=gallery, top_k=top_k)
    tmp = tempfile.mkdtemp(prefix=f".tmp-{version}-", dir=model_dir)
    try:
        tf.saved_model.save(module, tmp, signatures=module.signatures())
        extra = os.path.join(tmp, EXTRA_DIR)
        os.makedirs(extra, exist_ok=True)
        schema.save(os.path.join(extra, runs.SCHEMA_FILE))
        write_warmup_requests(os.path.join(extra, WARMUP_FILE), model_name,
                              int(net.image_size))
        meta = {
            "model_name": model_name,
            "version": version,
            "image_size": int(net.image_size),
            "attributes": list(schema.names),
            "signatures": {
                SIGNATURE_IMAGES: "images: string [B] JPEG/PNG",
                SIGNATURE_TENSORS: (f"images: float32 [B, {net.image_size}, "
                                    f"{net.image_size}, 3] in [0, 255]"),
            },
            "outputs": output_keys(schema, with_detector=bool(detector),
                                   with_gallery=gallery is not None),
            "gallery": ({"images": len(gallery), "top_k": module._top_k,
                         "info": gallery.info}
                        if gallery is not None else None),
            "detector": os.path.abspath(detector) if detector else None,
            "margin": margin,
            "min_score": min_score if detector else None,
            "class_id": class_id if detector else None,
            "model_config": net.get_config(),
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
            "seconds": round(time.time() - start, 2),
        }
        fileio.write_json(os.path.join(extra, META_FILE), meta)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def warmup_requests(model_name, image_size):
    """TF Serving warm-up requests: ``[(signature, {input: ndarray})]``.

    Both signatures, at batch 1 and 2, JPEG and PNG photos of two sizes (one
    grey), so that loading a version traces every path a first request could
    take (decoding each format, the resize, the detector when present).
    """
    import io

    import numpy as np
    from PIL import Image

    def encoded(h, w, fmt, grey=False):
        rng = np.random.default_rng(h * w)
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        image = Image.fromarray(pixels)
        if grey:
            image = image.convert("L")
        buf = io.BytesIO()
        image.save(buf, format=fmt)
        return buf.getvalue()

    photos = [encoded(96, 64, "JPEG"), encoded(48, 80, "PNG", grey=True)]
    tensors = np.zeros((1, image_size, image_size, 3), np.float32)
    return [
        (SIGNATURE_IMAGES, {INPUT: np.array(photos[:1], dtype=object)}),
        (SIGNATURE_IMAGES, {INPUT: np.array(photos, dtype=object)}),
        (SIGNATURE_TENSORS, {INPUT: tensors}),
    ]


def write_warmup_requests(path, model_name, image_size):
    """Writes ``assets.extra/tf_serving_warmup_requests``.

    The format TF Serving reads at load time (its "SavedModel Warmup"
    guide): a TFRecord file of serialised ``PredictionLog`` protos, each
    holding a ``PredictRequest``. Without it the first real request pays
    the tracing and kernel set-up.
    """
    from tensorflow_serving.apis import model_pb2, predict_pb2
    from tensorflow_serving.apis import prediction_log_pb2

    with tf.io.TFRecordWriter(path) as writer:
        for signature, inputs in warmup_requests(model_name, image_size):
            request = predict_pb2.PredictRequest(
                model_spec=model_pb2.ModelSpec(
                    name=model_name, signature_name=signature))
            for key, value in inputs.items():
                request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
            log = prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())
    return path


def read_export_info(version_dir):
    """``(schema, metadata dict)`` stored in a version's ``assets.extra``."""
    extra = os.path.join(os.fspath(version_dir), EXTRA_DIR)
    schema = attributes_lib.AttributeSchema.load(
        os.path.join(extra, runs.SCHEMA_FILE))
    with open(os.path.join(extra, META_FILE)) as f:
        return schema, json.load(f)


def export_keras(net, path, *, verify=True):
    """Saves ``net`` as a ``.keras`` file atomically.

    Written under a temporary name in the same directory, then renamed.
    With ``verify``, the temporary file is first loaded back in safe mode
    (no arbitrary code), so a file that only unsafe loading could read is
    never published.

    Returns:
        ``path``.
    """
    path = os.fspath(path)
    if not path.endswith(".keras"):
        raise ValueError(f"`path` must end with .keras. Received: path={path}")
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    with fileio.replacing(path, ".keras") as tmp:
        net.save(tmp)
        if verify:
            runs.load_keras(tmp)
    return path


def is_saved_model(path):
    return os.path.isfile(os.path.join(os.fspath(path), "saved_model.pb"))


def latest_version_dir(path):
    """``path`` if it is a SavedModel, else its newest integer version."""
    path = os.fspath(path)
    if is_saved_model(path):
        return path
    if os.path.isdir(path):
        versions = sorted(
            (int(d) for d in os.listdir(path)
             if re.fullmatch(r"\d+", d)
             and is_saved_model(os.path.join(path, d))), reverse=True)
        if versions:
            return os.path.join(path, str(versions[0]))
    return None
