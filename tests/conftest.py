"""Shared fixtures: tiny datasets (images + manifest + schema) made with PIL.

``tiny_dataset`` writes 12 images (6 items x shop / street, splits train /
val / test) in the exact on-disk format of docs/DATA_FORMAT.md. Every image is
a flat background with a flat garment rectangle of a known colour, so a test
can check that a crop of the box comes out in that colour. The images cover
every input the converter must handle: RGB JPEG and PNG (kept as they are),
greyscale and CMYK JPEG, RGBA and palette PNG (re-encoded to RGB JPEG).
"""

import csv
import dataclasses
import json
import os
import signal
import subprocess
import time

import numpy as np
import pytest
from PIL import Image

from mtct_tf.attributes import Attribute, AttributeSchema

TINY_SCHEMA = AttributeSchema("tiny", [
    Attribute("category", ("tshirt", "dress", "coat")),
    Attribute("colour", ("red", "green", "blue", "white")),
    Attribute("sleeve", ("short", "long")),
])
COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 200, 60),
    "blue": (40, 60, 210),
    "white": (245, 245, 245),
}
BACKGROUND = (90, 90, 90)
WIDTH, HEIGHT = 32, 40
STREET_BOX = (6, 8, 26, 32)  # xmin, ymin, xmax, ymax in pixels.
SHOP_BOX = (4, 4, 28, 36)
# Image index -> (PIL mode, file format) for the inputs that are not plain
# RGB JPEG.
SPECIAL = {1: ("RGB", "PNG"), 2: ("L", "JPEG"), 3: ("RGBA", "PNG"),
           4: ("CMYK", "JPEG"), 5: ("P", "PNG")}
# The RGBA image (it01-street) is transparent in its bottom rows, below the
# box.
TRANSPARENT_ROWS = 5


@dataclasses.dataclass
class TinyDataset:
    """A dataset root written by ``build_tiny_dataset``.

    Attributes:
        root: the dataset root.
        manifest: path of ``manifest.jsonl``.
        schema: the ``AttributeSchema`` (also saved as ``schema.json``).
        lines: the manifest lines as dicts, in file order.
        expected: id -> uint8 [H, W, 3]: the RGB pixels the converter should
            store (before JPEG loss).
        garment: id -> RGB colour of the garment (the box, or the whole image
            when there is no box).
    """

    root: str
    manifest: str
    schema: AttributeSchema
    lines: list
    expected: dict
    garment: dict

    def write_manifest(self, lines, name="manifest.jsonl"):
        """Writes lines (dicts, str or bytes) as a manifest in the root."""
        return write_manifest(os.path.join(self.root, name), lines)


def write_manifest(path, lines):
    with open(path, "wb") as f:
        for line in lines:
            if isinstance(line, dict):
                line = json.dumps(line)
            if isinstance(line, str):
                line = line.encode("utf-8")
            f.write(line + b"\n")
    return path


def _save(rgb, mode, fmt, path):
    """Saves an RGB array in ``mode``; returns the RGB the file decodes to.

    Decoded from the file (so JPEG loss included), with transparency on
    white as the converter composites it.
    """
    img = Image.fromarray(rgb)
    if mode == "RGBA":
        alpha = np.full(rgb.shape[:2], 255, np.uint8)
        alpha[-TRANSPARENT_ROWS:] = 0  # -> white.
        img = img.convert("RGBA")
        img.putalpha(Image.fromarray(alpha))
    elif mode == "P":
        img = img.quantize(8)
    else:
        img = img.convert(mode)
    img.save(path, fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    with Image.open(path) as saved:
        out = np.asarray(saved.convert("RGB")).copy()
        if saved.mode == "RGBA":
            out[np.asarray(saved)[..., 3] == 0] = 255
    return out


def build_tiny_dataset(root):
    os.makedirs(os.path.join(root, "images"), exist_ok=True)
    lines, expected, garment = [], {}, {}
    k = 0
    for item in range(6):
        split = "train" if item < 4 else ("val" if item == 4 else "test")
        colour = ("red", "green", "blue", "white")[item % 4]
        for domain in ("shop", "street"):
            image_id = f"it{item:02d}-{domain}"
            mode, fmt = SPECIAL.get(k, ("RGB", "JPEG"))
            ext = "png" if fmt == "PNG" else "jpg"
            rel = f"images/{domain}/{image_id}.{ext}"
            os.makedirs(os.path.join(root, "images", domain), exist_ok=True)
            box = STREET_BOX if domain == "street" else (
                SHOP_BOX if item % 2 else None)
            rgb = np.empty((HEIGHT, WIDTH, 3), np.uint8)
            if box is None:
                rgb[:] = COLOURS[colour]
            else:
                rgb[:] = BACKGROUND
                rgb[box[1]:box[3], box[0]:box[2]] = COLOURS[colour]
            expected[image_id] = _save(rgb, mode, fmt,
                                       os.path.join(root, rel))
            cy = (box[1] + box[3]) // 2 if box else HEIGHT // 2
            cx = (box[0] + box[2]) // 2 if box else WIDTH // 2
            garment[image_id] = tuple(
                int(v) for v in expected[image_id][cy, cx])
            attrs = {
                "category": ("tshirt", "dress", "coat")[item % 3],
                "colour": None if image_id == "it02-street" else colour,
                "sleeve": None if item == 1 else ("short", "long")[item % 2],
            }
            if item == 3:
                del attrs["sleeve"]  # Absent = missing, like null.
            line = {"id": image_id, "path": rel, "domain": domain,
                    "item_id": f"it{item:02d}", "split": split,
                    "bbox": list(box) if box else None,
                    "attributes": attrs}
            if k % 3:  # Width / height are optional.
                line["width"], line["height"] = WIDTH, HEIGHT
            lines.append(line)
            k += 1
    manifest = write_manifest(os.path.join(root, "manifest.jsonl"), lines)
    TINY_SCHEMA.save(os.path.join(root, "schema.json"))
    return TinyDataset(root, manifest, TINY_SCHEMA, lines, expected, garment)


@pytest.fixture
def tiny_dataset(tmp_path):
    """A fresh 12-image dataset root (see the module docstring)."""
    return build_tiny_dataset(str(tmp_path / "data"))


@pytest.fixture(scope="session")
def tiny_shards(tmp_path_factory):
    """``(dataset, shards_dir, summary)``: the tiny dataset, converted once.

    Read-only: tests that modify data must use ``tiny_dataset``.
    """
    from mtct_tf.data import convert

    base = tmp_path_factory.mktemp("tiny_shards")
    dataset = build_tiny_dataset(str(base / "data"))
    out = str(base / "shards")
    summary = convert.convert_manifest(dataset.manifest, out, num_shards=2,
                                       workers=1, progress=False)
    return dataset, out, summary


def history_epochs(stage_dir):
    """The epoch column of a stage's history.csv ([] before it exists)."""
    path = os.path.join(stage_dir, "history.csv")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [int(row["epoch"]) for row in csv.DictReader(f)]


def backup_state(stage_dir):
    """(epoch, batch) of a stage's backup metadata, or None."""
    try:
        with open(os.path.join(stage_dir, "backup",
                               "training_metadata.json")) as f:
            meta = json.load(f)
        return meta["epoch"], meta["batch"]
    except (OSError, ValueError, KeyError):
        return None


def run_and_kill(command, env, stage_dir, steps, rng, timeout=300):
    """Runs a training command and SIGKILLs it in its second epoch.

    The kill comes 0-60 ms after the backup in ``stage_dir`` records a
    random batch (below ``steps - 1``) of epoch 1, so it lands anywhere in
    the next step: in the step itself or in the writing of the backup.

    Returns:
        ``(returncode, output, (batch, delay))``.
    """
    target = rng.randrange(steps - 1)  # Not the last: stay in the epoch.
    delay = rng.uniform(0.0, 0.06)
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    deadline = time.time() + timeout
    try:
        while proc.poll() is None and time.time() < deadline:
            state = backup_state(stage_dir)
            if state is not None and state >= (1, target):
                time.sleep(delay)
                os.kill(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.005)
        out = proc.communicate(timeout=timeout)[0].decode(errors="replace")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, out, (target, round(delay, 3))
