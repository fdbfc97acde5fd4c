"""Attribute predictions for single photos, through the serving graph.

``Predictor`` runs exactly what TF Serving runs: an exported SavedModel's
``serving_default`` signature, or, for a ``.keras`` model or a training run,
the same ``export_lib.ServingModule`` built in memory (decode, optional
detector, ``crop_and_resize``, MTN). So ``python -m mtct_tf.predict`` and a
served model answer the same for the same bytes.
"""

import dataclasses
import io
import math
import os
import re

import numpy as np
import tensorflow as tf

from mtct_tf import attributes as attributes_lib
from mtct_tf import export_lib, fileio, runs
from mtct_tf.detector import boxes

# Annotation: images are scaled up (nearest) until their long side reaches
# this many pixels, so that a 64 px demo photo still shows a readable box.
ANNOTATION_SIDE = 384
BOX_COLOUR = (255, 40, 40)
ANNOTATED_COLOUR = (40, 200, 60)


@dataclasses.dataclass
class Prediction:
    """One photo's answer.

    Attributes:
        top: attribute name -> ``[(value name, probability), ...]``, most
            probable first.
        box: ``(ymin, xmin, ymax, xmax)`` normalised to the photo, or
            ``None`` without a detector.
        box_pixels: the same box in photo pixels, or ``None``.
        score: the detection score (0.0 when the whole photo was used).
        detected: whether a detection passed the score threshold.
    """

    top: dict
    box: tuple = None
    box_pixels: tuple = None
    score: float = 0.0
    detected: bool = False

    def to_dict(self):
        return {
            "attributes": {
                name: [{"value": v, "probability": p} for v, p in values]
                for name, values in self.top.items()},
            "box": self.box, "box_pixels": self.box_pixels,
            "score": self.score, "detected": self.detected,
        }


@dataclasses.dataclass
class Annotation:
    """What a manifest says of a photo (to set beside a prediction).

    Attributes:
        path: the photo file.
        labels: attribute name -> annotated value name, ``None`` = missing.
        box_pixels: the annotated garment box ``(ymin, xmin, ymax, xmax)``
            in photo pixels, or ``None``.
        where: the manifest line it came from.
    """

    path: str
    labels: dict
    box_pixels: tuple = None
    where: str = ""


def find_annotation(manifest_path, schema, *, photo=None, split=None,
                    domain=None):
    """The annotation of ``photo`` in a manifest, or of the first line of a
    split and domain (a fixed rule for choosing a photo, not a pick).

    Args:
        manifest_path: a ``manifest.jsonl`` (docs/DATA_FORMAT.md).
        schema: the model's ``AttributeSchema`` (value names).
        photo: a photo path: its line is found by the file it names.
        split, domain: without ``photo``: the first line (in file order)
            of this split and domain.

    Returns:
        An ``Annotation``.

    Raises:
        ValueError: no such line (the message names the manifest).
    """
    from mtct_tf.data import manifest as manifest_lib

    entries, _ = manifest_lib.read_manifest(manifest_path, schema,
                                            allow_outside_root=True)
    if photo is not None:
        target = os.path.realpath(photo)
        found = [e for e in entries if os.path.realpath(e.path) == target]
        what = f"no line of {manifest_path} names {photo}"
    else:
        found = [e for e in entries
                 if e.split == split and e.domain == domain]
        what = (f"{manifest_path} has no {domain} photo in split "
                f"{split!r}")
    if not found:
        raise ValueError(what)
    entry = found[0]
    box = None
    if entry.bbox is not None:
        x0, y0, x1, y1 = entry.bbox
        box = (y0, x0, y1, x1)
    labels = {a.name: a.decode(entry.labels.get(a.name, a.missing_code))
              for a in schema}
    return Annotation(entry.path, labels, box,
                      f"{manifest_path}, line {entry.line}")


class Predictor:
    """Predicts attributes of encoded photos with a model and its schema.

    Build with ``load_predictor``.

    Attributes:
        schema: the ``AttributeSchema`` (value names).
        with_detector: whether a detector picks the garment box.
        source: what was loaded (for messages).
    """

    def __init__(self, fn, schema, with_detector, source, keep=None):
        self._fn = fn
        self._keep = keep  # Keeps a loaded SavedModel's variables alive.
        self.schema = schema
        self.with_detector = with_detector
        self.source = source

    def raw(self, encoded):
        """Serving outputs (numpy) of a list of encoded photos."""
        out = self._fn(images=tf.constant(list(encoded), tf.string))
        return {k: v.numpy() for k, v in out.items()}

    def predict_bytes(self, encoded, *, top_k=3, name="image"):
        """``Prediction`` of one encoded photo.

        Raises:
            ValueError: the bytes are not a JPEG / PNG image (names
                ``name``).
        """
        if top_k < 1:
            raise ValueError(f"`top_k` must be >= 1. Received: top_k={top_k}")
        try:
            out = self.raw([encoded])
        except tf.errors.InvalidArgumentError as e:
            text = e.message or str(e)
            refused = re.search(r"image refused: [^\]\n]*", text)
            if refused:  # pipeline.decode_image's decompression-bomb check.
                raise ValueError(f"{name}: {refused.group(0)}") from None
            reason = _op_message(text)
            raise ValueError(
                f"{name}: cannot decode it as a JPEG or PNG image "
                f"({reason})") from None
        top = {}
        for attribute in self.schema:
            probs = out[f"{attribute.name}_probabilities"][0]
            order = np.argsort(-probs, kind="stable")[:top_k]
            top[attribute.name] = [
                (attribute.values[k], float(probs[k])) for k in order]
        if not self.with_detector:
            return Prediction(top)
        return Prediction(
            top, box=tuple(float(v) for v in out["box"][0]),
            box_pixels=tuple(float(v) for v in out["box_pixels"][0]),
            score=float(out["box_score"][0]),
            detected=bool(out["detected"][0]))

    def predict_file(self, path, *, top_k=3):
        """``Prediction`` of a photo file.

        Raises:
            FileNotFoundError: no such file (the message names it).
            ValueError: the file is not a decodable image (names it).
        """
        return self.predict_bytes(read_photo(path), top_k=top_k, name=path)


def _op_message(text):
    """The failing op's own message in a TensorFlow error's text.

    Graph errors start "Graph execution error:" and a stack of our source
    lines; eager ones wrap the message in "{{function_node ...}}" and
    "[Op:...]".
    """
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("Graph execution error",
                                        "Detected at node", "File ", "[[")):
            continue
        line = re.sub(r"\{\{[^}]*\}\}\s*", "", line)
        return re.sub(r"\s*\[Op:.*$", "", line) or "unknown error"
    return "unknown error"


def read_photo(path):
    """The bytes of a photo file; ``FileNotFoundError`` names a missing one."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such photo file")
    with open(path, "rb") as f:
        return f.read()


def load_predictor(model, *, schema=None, stage=None, detector=None,
                   margin=None, min_score=export_lib.DEFAULT_MIN_SCORE):
    """Loads a model for ``Predictor``.

    Args:
        model: a training run directory, a ``.keras`` file, a SavedModel
            version directory, or a TF Serving model directory (its newest
            version is used).
        schema: schema name or JSON (default: found as
            ``runs.load_model_and_schema`` says; a SavedModel carries
            its own in ``assets.extra``).
        stage: the stage of a run directory.
        detector: a detector SavedModel to crop the garment first (not with
            a SavedModel ``model``: export it ``--with_detector`` instead).
        margin: context around a detector box; default: the run's
            ``data.margin``, else 0.1.
        min_score: lowest detection score accepted.

    Returns:
        A ``Predictor``.
    """
    version_dir = export_lib.latest_version_dir(model)
    if version_dir is not None:
        saved_schema, meta = export_lib.read_export_info(version_dir)
        has_detector = bool(meta.get("detector"))
        if detector is not None:
            raise ValueError(
                f"{version_dir} is a SavedModel"
                f"{' that already has a detector' if has_detector else ''}; "
                "a detector cannot be added to it here. Export the model "
                "with --with_detector, or pass its .keras file or run "
                "directory.")
        if schema is not None:
            saved_schema = attributes_lib.get_schema(schema)
        loaded = tf.saved_model.load(version_dir)
        fn = loaded.signatures[export_lib.SIGNATURE_IMAGES]
        return Predictor(fn, saved_schema, has_detector, version_dir,
                         keep=loaded)
    net, schema, run_margin = runs.load_model_and_schema(
        model, schema=schema, stage=stage)
    if margin is None:
        margin = run_margin if run_margin is not None else 0.1
    module = export_lib.ServingModule(
        net, schema, margin=margin, detector=detector, min_score=min_score)
    return Predictor(module.serve_images, schema, detector is not None,
                     os.fspath(model), keep=module)


def _font(size):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one bitmap size only.
        return ImageFont.load_default()


def annotate(encoded, prediction, path, annotation=None):
    """Writes a PNG: the photo (boxes drawn) beside a panel of top-1 values.

    Args:
        encoded: the photo's bytes.
        prediction: its ``Prediction`` (the detector's box in red, or
            orange when no detection passed and the whole photo was used).
        path: the PNG to write (written atomically).
        annotation: optional ``Annotation``: its box is drawn in green and
            each attribute's line gains the annotated value and whether the
            top-1 is right.

    Returns:
        ``path``.
    """
    from PIL import Image, ImageDraw, ImageOps

    with Image.open(io.BytesIO(encoded)) as im:
        # Upright, as the serving graph saw it (its box is in these pixels).
        photo = ImageOps.exif_transpose(im).convert("RGB")
    w, h = photo.size
    scale = max(1, math.ceil(ANNOTATION_SIDE / max(w, h)))
    photo = photo.resize((w * scale, h * scale), Image.NEAREST)
    draw = ImageDraw.Draw(photo)
    width = max(2, photo.size[0] // 150)
    drawn = []
    if annotation is not None and annotation.box_pixels is not None:
        drawn.append((annotation.box_pixels, ANNOTATED_COLOUR))
    if prediction.box_pixels is not None:
        drawn.append((prediction.box_pixels, BOX_COLOUR if prediction.detected
                      else (255, 200, 0)))
    for box, colour in drawn:
        ymin, xmin, ymax, xmax = (v * scale for v in box)
        draw.rectangle([xmin, ymin, xmax - 1, ymax - 1], outline=colour,
                       width=width)
    font = _font(14)
    lines = []
    if prediction.box is not None:
        lines.append(f"garment score {prediction.score:.2f} (red)"
                     if prediction.detected else "no detection: whole photo")
    if annotation is not None and annotation.box_pixels is not None:
        lines.append("annotated box (green)")
    for name, values in prediction.top.items():
        value, p = values[0]
        lines.append(f"{name}: {value} ({p:.2f})"
                     + _verdict(value, annotation, name))
    line_h = 18
    panel_w = 12 + max(int(draw.textlength(s, font=font)) for s in lines)
    canvas = Image.new(
        "RGB", (photo.size[0] + panel_w,
                max(photo.size[1], 10 + line_h * len(lines))), "white")
    canvas.paste(photo, (0, 0))
    text = ImageDraw.Draw(canvas)
    for i, s in enumerate(lines):
        text.text((photo.size[0] + 6, 5 + i * line_h), s, fill="black",
                  font=font)
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    with fileio.replacing(path) as tmp:
        canvas.save(tmp, format="PNG")
    return path


def _verdict(value, annotation, name):
    """`` [annotated X: right]`` / ``wrong`` / ``unlabelled`` (or "")."""
    if annotation is None:
        return ""
    truth = annotation.labels.get(name)
    if truth is None:
        return "  [not annotated]"
    if isinstance(truth, (list, dict)):  # Multilabel: no single top-1.
        return ""
    return f"  [annotated {truth}: {'right' if value == truth else 'wrong'}]"


def format_prediction(photo, prediction, annotation=None):
    """The text that ``python -m mtct_tf.predict`` prints.

    With an ``Annotation``, each attribute's line ends with the annotated
    value and whether the top-1 is right, and the box lines compare the
    detector's box with the annotated one (IoU).
    """
    lines = [photo]
    if annotation is not None:
        lines.append(f"  annotation: {annotation.where}")
        if annotation.box_pixels is not None:
            box = " ".join(f"{v:.0f}" for v in annotation.box_pixels)
            iou = ""
            if prediction.box_pixels is not None and prediction.detected:
                overlap = boxes.box_iou(annotation.box_pixels,
                                        prediction.box_pixels)
                iou = f"; IoU with the detector's {overlap:.2f}"
            lines.append(f"  annotated box (ymin xmin ymax xmax) {box} px"
                         + iou)
    if prediction.box is not None:
        if prediction.detected:
            box = " ".join(f"{v:.3f}" for v in prediction.box)
            px = " ".join(f"{v:.0f}" for v in prediction.box_pixels)
            lines.append(f"  garment box (ymin xmin ymax xmax) {box} "
                         f"normalised, {px} px; score {prediction.score:.3f}")
        else:
            lines.append("  no garment detection above the threshold: "
                         "whole photo used")
    width = max(len(n) for n in prediction.top)
    for name, values in prediction.top.items():
        shown = "  ".join(f"{v} {p:.3f}" for v, p in values)
        lines.append(f"  {name:<{width}}  {shown}"
                     + _verdict(values[0][0], annotation, name))
    if annotation is not None:
        judged = [_verdict(v[0][0], annotation, n)
                  for n, v in prediction.top.items()]
        right = sum(": right]" in j for j in judged)
        known = sum(": " in j for j in judged)
        lines.append(f"  top-1 right for {right} of {known} annotated "
                     "attributes")
    return "\n".join(lines)

