"""X-Domain-synth: a procedural shop / street clothing image renderer.

X-Domain cannot be downloaded (SPEC §7), so this module draws a stand-in with
its structure: items with the 9 attributes of ``synth_schema()``, a clean
frontal shop image and harder street images per item (the same garment worn
by a simple figure in a cluttered, degraded scene, with its box), labels
missing at random and splits by item. Every value is drawn: the category sets
the silhouette and trims, ``length`` the hem, ``shape`` the width, ``collar``
the neckline, sleeves their length and profile, buttons are dots down the
front and the pattern fills the garment in its colour.

This module designs the items (attributes, garment outlines and trims,
colours and patterns), splits them and writes the dataset (images,
``schema.json`` and the manifest through ``manifest.ManifestWriter``);
``synthetic_photos`` draws a designed garment in a shop or a street photo.
Everything is a function of ``(seed, item index)``, so the output does not
depend on the worker count. The parameters here and in ``synthetic_photos``
are fixed before methods are compared (SPEC §7) and are never tuned per
method.
"""

import contextlib
import functools
import io
import json
import multiprocessing
import os
import sys
import time

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from mtct_tf import fileio
from mtct_tf.attributes import synth_schema
from mtct_tf.data.manifest import ManifestWriter
from mtct_tf.data.synthetic_photos import (MIRROR, shade, shop_photo,
                                           street_photo)

# === Fixed garment parameters (SPEC §7: never tuned per method) ===
# Pattern period, button radius and the half-distance of a double row, in
# garment units (a regular body is 0.31 wide). Chosen so that a garment
# cropped to its box and resized to 64 px still shows them: a period of
# ~6-8 px, buttons ~3 px wide, double rows ~6 px apart (at the first
# settings, 0.06-0.085 / 0.02 / 0.045, pattern stayed at chance level).
PATTERN_PERIOD = (0.10, 0.13)
BUTTON_RADIUS = 0.026
BUTTON_ROW_OFFSET = 0.055

# The benchmark's data (python -m mtct_tf.benchmark ablation): the paper's
# regime of many shop-only retailer items and a few hundred items with a few
# street photos each, split 60 / 20 / 20 by item within each group.
# ``seed`` is the default render seed (``--render_seed`` overrides it).
BENCHMARK_DATA = dict(items=3400, street_items=400, street_per_item=3,
                      shop_per_item=1, image_size=128, missing_rate=0.1,
                      seed=2017)

PALETTE = {
    "red": (200, 30, 35), "orange": (240, 130, 20), "yellow": (245, 215, 40),
    "green": (40, 150, 60), "teal": (0, 140, 140), "blue": (35, 70, 190),
    "purple": (120, 50, 160), "pink": (240, 140, 180),
    "black": (25, 25, 28), "white": (245, 245, 242),
}
# Garment geometry in unit coordinates: neck centre at (0, 0), y down, a
# regular body 0.31 wide.
SHAPE_WIDTH = {"slim": 0.8, "regular": 1.0, "loose": 1.25}
BASE_LENGTH = {"tshirt": 0.42, "blouse": 0.42, "dress": 0.68, "coat": 0.68,
               "jacket": 0.46}
LENGTH_FACTOR = {"short": 0.78, "regular": 1.0, "long": 1.25}
SLEEVE_LENGTH = {"short": 0.12, "elbow": 0.25, "long": 0.44}
NECK_DEPTH = {"round": 0.055, "v_neck": 0.14, "shirt_collar": 0.07,
              "turtleneck": 0.01}
NW = 0.055  # Neck half-width.


def sample_attributes(rng, forced=None):
    """Samples one item's attribute values uniformly and independently.

    Independence keeps attributes from being shortcuts for each other; only
    ``sleeve_shape`` is undefined (``None``) for sleeveless garments.

    Args:
        rng: a ``numpy.random.Generator``.
        forced: optional dict of values to use instead of sampled ones; all
            values are still drawn, so the rest of the stream is unchanged.

    Returns:
        Dict attribute name -> value name (or ``None``), in schema order.
    """
    schema = synth_schema()
    attrs = {a.name: a.values[rng.integers(a.num_values)] for a in schema}
    for name, value in (forced or {}).items():
        schema[name].index(value)  # Raises a KeyError naming the values.
        attrs[name] = value
    if attrs["sleeve_length"] == "sleeveless":
        attrs["sleeve_shape"] = None
    return attrs


def _garment(a, rng):
    """Builds one garment as ``(role, points)`` ops in unit coordinates.

    Roles: ``fabric`` (patterned, outlined), ``solid``, ``inside`` (the
    neck opening), ``dark`` (trim band), ``band`` (thick cuff line),
    ``line`` (seam) and ``button`` (dots). Ops are drawn in list order.
    """
    f = SHAPE_WIDTH[a["shape"]] * rng.uniform(0.96, 1.04)
    cat, sleeveless = a["category"], a["sleeve_length"] == "sleeveless"
    cw, sy, ay, wy = 0.155 * f, 0.03, 0.17, 0.27  # Chest, shoulder, armpit.
    sw = (0.125 if sleeveless else 0.15) * f ** 0.5
    hy = BASE_LENGTH[cat] * LENGTH_FACTOR[a["length"]] * rng.uniform(.97, 1.03)
    hw = cw * {"tshirt": 1.02, "blouse": 1.18, "coat": 1.12}.get(cat, 1.0)
    right = [(NW, 0.0), (sw, sy)]
    right += [(cw - 0.035, ay - 0.07)] if sleeveless else []  # Armhole.
    right.append((cw, ay))
    if cat in ("blouse", "dress"):
        right.append((cw * 0.84, wy))  # Fitted waist.
    if cat == "dress":
        hw = cw * 0.84 + 0.55 * (hy - wy)  # A-line skirt.
    right.append((hw, hy))
    centre = []
    if cat == "blouse":  # Curved peplum hem.
        right.append((hw * 0.55, hy + 0.025))
        centre = [(0.0, hy + 0.035)]
    body = right + centre + [(-x, y) for x, y in reversed(right)]

    theta = rng.uniform(0.45, 0.6)  # Sleeve angle from vertical (radians).
    s, p = np.array([sw, sy]), np.array([cw, ay])
    b, w0 = (s + p) / 2, np.linalg.norm(s - p)
    d = np.array([np.sin(theta), np.cos(theta)])
    n = np.array([d[1], -d[0]])
    ops = []
    if not sleeveless:  # A sleeve is a width profile along its axis.
        length = SLEEVE_LENGTH[a["sleeve_length"]]
        t = np.linspace(0, 1, 9)[:, None]
        tau = t * length / SLEEVE_LENGTH["long"]
        w = w0 * (1 - 0.45 * tau)
        if a["sleeve_shape"] == "puff":
            w = w * (1 + np.sin(np.pi * np.clip(tau / 0.25, 0, 1)))
        elif a["sleeve_shape"] == "flared":
            w = w * (1 + 1.3 * t ** 2)
        axis = b + d * length * t
        outer, inner = axis + n * w / 2, axis - n * w / 2
        sleeve = np.concatenate([[s], outer, inner[::-1], [p]])
        cuff = np.stack([outer[-1], inner[-1]])
        for m in (1, MIRROR):
            ops += [("fabric", sleeve * m),
                    ("band" if cat == "jacket" else "line", cuff * m)]
    ops.append(("fabric", body))

    nd = NECK_DEPTH[a["collar"]]
    vee = [(-NW, 0), (NW, 0), (0, nd)]
    if a["collar"] == "round":
        arc = np.linspace(0, np.pi, 9)
        ring = np.stack([NW * np.cos(arc), nd * np.sin(arc)], 1)
        ops += [("inside", ring), ("line", ring * [1.25, 1.35])]
    elif a["collar"] == "v_neck":
        ops += [("inside", vee),
                ("line", [(-NW - .02, 0), (0, nd + .03), (NW + .02, 0)])]
    elif a["collar"] == "shirt_collar":
        flap = np.array([(.004, nd), (NW + .006, -.016), (NW + .035, .012),
                         (.05, nd + .05)])
        ops += [("inside", vee),
                ("solid", [(-NW, -.02), (NW, -.02), (NW, .01), (-NW, .01)]),
                ("solid", flap), ("solid", flap * MIRROR)]
    else:  # Turtleneck: a ribbed tube with a fold.
        ops += [("fabric", [(-NW * 1.1, -.08), (NW * 1.1, -.08),
                            (NW * 1.2, .012), (-NW * 1.2, .012)]),
                ("line", [(-NW * 1.12, -.05), (NW * 1.12, -.05)])]
        ops += [("line", [(x, -.045), (x, .005)])
                for x in np.linspace(-NW * .8, NW * .8, 4)]

    bottom = hy - .06  # Lowest button.
    if cat == "tshirt":  # Hem stitching.
        ops.append(("line", [(-hw * .97, hy - .02), (hw * .97, hy - .02)]))
    elif cat in ("blouse", "dress"):  # Waist seam.
        ops.append(("line", [(-cw * .84, wy), (cw * .84, wy)]))
        bottom = wy if cat == "dress" else bottom
    elif cat == "coat":  # Belt with buckle and flap pockets.
        bx, py = cw * 1.04, .3 + (hy - .3) * .55
        ops += [("dark", [(-bx, .3), (bx, .3), (bx, .34), (-bx, .34)]),
                ("button", [(0, .32)])]
        ops += [("line", [(m * .045, py), (m * .12, py)]) for m in (-1, 1)]
    else:  # Jacket: darker hem band and patch pockets.
        ops.append(("dark", [(-hw, hy - .04), (hw, hy - .04), (hw, hy),
                             (-hw, hy)]))
        pocket = np.array([(.05, -.13), (.12, -.13), (.12, -.06), (.05, -.06),
                           (.05, -.13)]) + [0, hy]
        ops += [("line", pocket), ("line", pocket * MIRROR)]
        bottom, hy = hy - .08, hy - .04
    if cat in ("coat", "jacket") or a["button"] != "none":  # Front opening.
        ops.append(("line", [(0, nd), (0, hy)]))
    if a["button"] != "none":
        xs = ((0.0,) if a["button"] == "single_row"
              else (-BUTTON_ROW_OFFSET, BUTTON_ROW_OFFSET))
        ys = np.linspace(nd + .035, bottom, rng.integers(4, 7))
        ops.append(("button", [(x, y) for y in ys for x in xs]))
    return ops, _style(a, rng, arm=(b, d))


def _style(a, rng, arm):
    """Per-item colours (jittered), pattern period and phase, button size
    and arm axis: what ``synthetic_photos`` needs besides the ops."""
    colour = np.clip(np.add(PALETTE[a["colour"]], rng.integers(-10, 11, 3)),
                     0, 255)
    lum = colour @ [0.299, 0.587, 0.114]
    dark = lum < 60
    return dict(
        # The secondary colour keeps the hue, so the label stays the colour.
        colour=tuple(int(c) for c in colour),
        second=shade(colour, 0.6 if dark else -0.5),
        trim=shade(colour, 0.45 if dark else -0.45),
        inside=shade(colour, 0.25 if dark else -0.4),
        dark=shade(colour, 0.15 if dark else -0.25),
        button=(40, 40, 40) if lum > 140 else (235, 235, 225),
        button_radius=BUTTON_RADIUS,
        pattern=a["pattern"], period=rng.uniform(*PATTERN_PERIOD),
        phase=tuple(rng.uniform(0, 1, 2)), arm=arm)


def render_item(item_index, seed, *, image_size=128, shop_per_item=1,
                street_per_item=3, missing_rate=0.1, split=None,
                attributes=None):
    """Renders all images of one item.

    The item and each of its images draw from their own random streams,
    seeded by ``(seed, item_index[, domain, j])``: an item renders the same
    in any process and whatever else is rendered.

    Args:
        item_index: non-negative int; the item id is ``it<index:05d>``.
        seed: non-negative int, the dataset seed.
        image_size: side of the square images in pixels.
        shop_per_item, street_per_item: images per domain.
        missing_rate: per image and attribute probability of a ``None`` label.
        split: copied into the records.
        attributes: optional dict of values to force (e.g. to show one
            attribute's values on the same item); the rest are sampled.

    Returns:
        Dict with ``item_id``, ``attributes`` (the true values) and
        ``records``: manifest lines (docs/DATA_FORMAT.md) as dicts, each
        with its encoded JPEG under ``jpeg``.
    """
    rng = np.random.default_rng([seed, 0, item_index])
    attrs = sample_attributes(rng, attributes)
    ops, st = _garment(attrs, rng)
    item_id, records = f"it{item_index:05d}", []
    for dom, count, draw in (("shop", shop_per_item, shop_photo),
                             ("street", street_per_item, street_photo)):
        for j in range(count):
            irng = np.random.default_rng(
                [seed, 0, item_index, int(dom == "street"), j])
            jpeg, box = draw(ops, st, image_size, irng)
            drop = irng.uniform(size=len(attrs)) < missing_rate
            records.append(dict(
                id=f"{item_id}-{dom}-{j}",
                path=f"images/{dom}/{item_id}_{j}.jpg",
                domain=dom, item_id=item_id, split=split, bbox=box,
                width=image_size, height=image_size,
                attributes={k: None if m else v
                            for (k, v), m in zip(attrs.items(), drop)},
                jpeg=jpeg))
    return dict(item_id=item_id, attributes=attrs, records=records)


def street_items_of(items, seed, street_items=None):
    """Which items have street images: a bool array of length ``items``.

    ``None`` means every item (the default regime: each item has shop and
    street images). Otherwise a seeded choice of exactly ``street_items``
    items; the rest are shop-only, as in the paper's regime, where a few
    street photos are linked to many retailer items.
    """
    if street_items is None:
        return np.ones(items, bool)
    if not 0 <= street_items <= items:
        raise ValueError("street_items must be in [0, items]. Received: "
                         f"street_items={street_items}, items={items}")
    chosen = np.zeros(items, bool)
    chosen[np.random.default_rng([seed, 2]).permutation(items)[
        :street_items]] = True
    return chosen


def assign_splits(items, seed, fractions=(0.6, 0.2, 0.2), stream=1):
    """Returns the split name of each item (exact counts, seeded shuffle).

    ``stream`` selects an independent shuffle for the same seed (the
    shop-only items of the paper's regime are split on their own stream).
    """
    if (len(fractions) != 3 or min(fractions) < 0
            or abs(sum(fractions) - 1) > 1e-6):
        raise ValueError("split_fractions must be 3 non-negative numbers "
                         f"summing to 1. Received: fractions={fractions!r}")
    n_train = int(round(fractions[0] * items))
    n_val = min(int(round(fractions[1] * items)), items - n_train)
    order = np.random.default_rng([seed, stream]).permutation(items)
    splits = ["test"] * items
    for rank, i in enumerate(order[:n_train + n_val]):
        splits[i] = "train" if rank < n_train else "val"
    return splits


def _render_and_write(job, out_dir, street_per_item, **kwargs):
    index, split, has_street = job
    records = render_item(index, split=split, street_per_item=(
        street_per_item if has_street else 0), **kwargs)["records"]
    for r in records:
        fileio.write_bytes(os.path.join(out_dir, r["path"]), r.pop("jpeg"))
    return records


def render_dataset(out_dir, *, items, seed=0, image_size=128, shop_per_item=1,
                   street_per_item=3, missing_rate=0.1,
                   split_fractions=(0.6, 0.2, 0.2), workers=1, progress=True,
                   street_items=None):
    """Renders X-Domain-synth into ``out_dir`` (docs/DATA_FORMAT.md layout).

    Images go to ``images/{shop,street}/``, then ``schema.json``, then
    ``manifest.jsonl``; each file is written under a temporary name and
    renamed, and an earlier manifest is removed first, so an interrupted
    run never leaves a complete-looking dataset.

    Two regimes: by default every item has shop and street images. With
    ``street_items`` only that many items (a seeded choice,
    ``street_items_of``) have street images and the rest are shop-only: the
    paper's regime of many retailer items and few street photos linked to
    them. Street and shop-only items are then split separately, each with
    exact ``split_fractions`` counts, so the street splits do not depend on
    how many shop-only items there are.

    Args:
        out_dir: dataset root (created if needed).
        items: number of garments.
        seed: non-negative int; the same seed gives the same bytes.
        image_size: side of the square images in pixels.
        shop_per_item, street_per_item: images per item and domain.
        missing_rate: per image and attribute probability of a null label.
        split_fractions: train / val / test fractions of the items.
        workers: processes; the output does not depend on it.
        progress: show a tqdm bar and a closing line on stderr.
        street_items: ``None`` (every item) or how many items have street
            images.

    Returns:
        A summary dict: image counts, items per split, seconds, images/s.

    Raises:
        ValueError: on a bad argument.
    """
    if min(items, image_size, workers) < 1 or seed < 0 or not (
            0 <= missing_rate <= 1) or min(shop_per_item, street_per_item) < 0:
        raise ValueError(
            "Need items, image_size, workers >= 1, seed and images per item "
            f">= 0, 0 <= missing_rate <= 1. Received: items={items}, "
            f"image_size={image_size}, workers={workers}, seed={seed}, "
            f"shop_per_item={shop_per_item}, street_per_item="
            f"{street_per_item}, missing_rate={missing_rate}")
    from mtct_tf import progress as progress_lib

    has_street = street_items_of(items, seed, street_items)
    if street_items is None:
        splits = assign_splits(items, seed, split_fractions)
    else:
        splits = np.empty(items, object)
        for stream, group in ((1, has_street), (3, ~has_street)):
            splits[group] = assign_splits(int(group.sum()), seed,
                                          split_fractions, stream=stream)
        splits = splits.tolist()
    for dom in ("shop", "street"):
        os.makedirs(os.path.join(out_dir, "images", dom), exist_ok=True)
    # Rewriting images in place: the dataset looks incomplete until done.
    with contextlib.suppress(FileNotFoundError):
        os.remove(os.path.join(out_dir, "manifest.jsonl"))
    work = functools.partial(
        _render_and_write, out_dir=out_dir, seed=seed, image_size=image_size,
        shop_per_item=shop_per_item, street_per_item=street_per_item,
        missing_rate=missing_rate)
    start, images = time.perf_counter(), 0
    n_street = int(has_street.sum())
    total = items * shop_per_item + n_street * street_per_item
    writer = ManifestWriter(out_dir, synth_schema())
    # "spawn": forking a process that already runs TensorFlow can deadlock.
    pool = (multiprocessing.get_context("spawn").Pool(workers)
            if workers > 1 else contextlib.nullcontext())
    try:
        with pool, progress_lib.bar(total=total, unit="img", file=sys.stderr,
                                    disable=not progress) as bar:
            jobs = zip(range(items), splits, has_street.tolist())
            for recs in (pool.imap(work, jobs, chunksize=8) if workers > 1
                         else map(work, jobs)):
                for r in recs:
                    # The renderer knows each image's size: not read back.
                    writer.add(image_id=r["id"], rel_path=r["path"],
                               domain=r["domain"], item_id=r["item_id"],
                               split=r["split"], labels=r["attributes"],
                               box=r["bbox"], size=(r["width"], r["height"]))
                images += len(recs)
                bar.update(len(recs))
        writer.finish()
    except BaseException:
        writer.abort()
        raise
    seconds = time.perf_counter() - start
    summary = dict(
        out_dir=out_dir, items=items, images=images,
        shop=items * shop_per_item, street=n_street * street_per_item,
        street_items=n_street,
        splits={s: splits.count(s) for s in ("train", "val", "test")},
        street_splits={s: sum(1 for sp, h in zip(splits, has_street)
                              if h and sp == s)
                       for s in ("train", "val", "test")},
        seconds=round(seconds, 3),
        images_per_second=round(images / max(seconds, 1e-9), 1))
    if progress:
        print(f"X-Domain-synth: {images} images ({items} items) in "
              f"{seconds:.1f}s = {summary['images_per_second']:.0f} images/s "
              f"-> {out_dir}", file=sys.stderr)
    return summary


def contact_sheet(source, path, n_items=8, *, root=None):
    """Saves a PNG: per row, one item's shop image then its street images.

    Rows are labelled with the item id, split and attribute values (from
    any of its images; ``?`` when missing in all); boxes are drawn in green.

    Args:
        source: a dataset directory, or manifest-line dicts holding either
            ``jpeg`` bytes or a ``path`` relative to ``root``.
        path: the PNG to write.
        n_items: rows, for the first items in ``source`` order.
        root: dataset root for records with only a ``path``.

    Returns:
        ``path``.
    """
    if isinstance(source, (str, os.PathLike)):
        root = os.fspath(source)
        with open(os.path.join(root, "manifest.jsonl"), encoding="utf-8") as f:
            source = [json.loads(line) for line in f if line.strip()]
    rows = {}
    for r in source:
        if r["item_id"] in rows or len(rows) < n_items:
            rows.setdefault(r["item_id"], []).append(r)
    recs = [r for item in rows.values() for r in item]
    cell, pad, text_w = max(r["width"] for r in recs), 4, 190
    row_h = max(cell, 124)  # Room for the 10 text lines.
    cols = max(len(item) for item in rows.values())
    sheet = Image.new("RGB", (text_w + cols * (cell + pad),
                              len(rows) * (row_h + pad) + pad), "white")
    d, font = ImageDraw.Draw(sheet), ImageFont.load_default(size=11)
    for y, (item_id, recs) in zip(range(pad, sheet.height, row_h + pad),
                                  rows.items()):
        labels = {}
        for r in recs:
            labels.update({k: v for k, v in r["attributes"].items()
                           if labels.get(k) is None})
        text = [f"{item_id} ({recs[0]['split']})"]
        text += [f"{k}: {v or '?'}" for k, v in labels.items()]
        d.multiline_text((pad, y), "\n".join(text), fill="black", font=font,
                         spacing=1)
        for x, r in zip(range(text_w, sheet.width, cell + pad), recs):
            src = (io.BytesIO(r["jpeg"]) if "jpeg" in r
                   else os.path.join(root, r["path"]))
            with Image.open(src) as img:
                sheet.paste(img.convert("RGB"), (x, y))
            if r.get("bbox"):
                x0, y0, x1, y1 = r["bbox"]
                d.rectangle([x + x0, y + y0, x + x1 - 1, y + y1 - 1],
                            outline=(0, 220, 0))
    with fileio.replacing(path) as tmp:
        sheet.save(tmp, "PNG")
    return path
