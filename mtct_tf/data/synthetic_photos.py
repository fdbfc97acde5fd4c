"""X-Domain-synth's photos: one garment drawn in a shop or a street photo.

``synthetic.py`` designs a garment (its outline, trims and buttons as
drawing ops in unit coordinates, and its colours and pattern); this module
draws it: ``shop_photo`` centred, frontal and sharp on a plain background,
``street_photo`` worn by a simple figure, small, anywhere in a cluttered
scene, occluded, tinted, blurred and noisy. Both return the JPEG bytes and
the garment's box. The parameters below are fixed before methods are
compared (SPEC §7) and are never tuned per method.
"""

import io

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

# === Fixed photo parameters (SPEC §7: never tuned per method) ===
SUPERSAMPLE = 2  # Draw at 2x and box-downsample: cheap anti-aliasing.
SHOP_JPEG_QUALITY = 92
SHOP_SCALE = 0.85  # Pixels per garment unit, as a fraction of the side.
STREET_JPEG_QUALITY = (30, 75)
STREET_SIZE = (0.35, 0.70)  # Longer garment box side / image side.
STREET_ROTATION_DEG = 8.0
STREET_GAIN = (0.8, 1.2)  # Per-channel colour cast.
STREET_BRIGHTNESS = (0.7, 1.15)
STREET_BLUR = (0.0, 1.0)  # Box blur radius in output pixels.
STREET_NOISE = (2.0, 8.0)  # Gaussian sigma in grey levels.
OCCLUSION_PROB = 0.6
OCCLUSION_AREA = (0.08, 0.25)  # Occluder area / garment box area.
SKIN = ((241, 194, 160), (224, 172, 105), (198, 134, 66), (141, 85, 36),
        (92, 58, 38))
TROUSERS = ((50, 60, 100), (30, 30, 35), (110, 110, 115), (170, 150, 110))
# Mirrors unit x coordinates: garments and figures are symmetric.
MIRROR = np.array([-1.0, 1.0])


def shade(rgb, k):
    """Darkens (k < 0) or lightens (k > 0) a colour by the fraction |k|."""
    c = np.asarray(rgb, np.float64)
    c = c + (255.0 - c) * k if k > 0 else c * (1.0 + k)
    return tuple(int(v) for v in np.clip(c, 0, 255))


def _pattern(u, v, kind):
    """True where the secondary colour shows; u, v in pattern periods."""
    fu, fv = u - np.floor(u), v - np.floor(v)  # numpy's float % is slow.
    if kind == "horizontal_stripes":
        return fv < 0.35
    if kind == "vertical_stripes":
        return fu < 0.35
    if kind == "checks":
        return (fu < 0.25) | (fv < 0.25)
    if kind == "dots":
        return (fu - 0.5) ** 2 + (fv - 0.5) ** 2 < 0.28 ** 2
    w = (u + v) * 0.707  # Diagonal stripes.
    return w - np.floor(w) < 0.35


class _Frame:
    """Affine map unit garment coordinates -> pixels: scale, rotate, shift."""

    def __init__(self, scale, angle=0.0, centre=(0, 0), shift=(0, 0)):
        c, s = np.cos(angle), np.sin(angle)
        self.scale, self.m = scale, scale * np.array([[c, -s], [s, c]])
        self.centre, self.shift = np.asarray(centre), np.asarray(shift)

    def __call__(self, pts):
        pts = np.asarray(pts, np.float64).reshape(-1, 2)
        return (pts - self.centre) @ self.m.T + self.shift

    def flat(self, pts):
        return self(pts).ravel().tolist()

    def local(self, x, y):
        """Maps pixel grids (broadcasting) back to unit coordinates."""
        inv = np.linalg.inv(self.m)
        x, y = x - self.shift[0], y - self.shift[1]
        return (inv[0, 0] * x + inv[0, 1] * y + self.centre[0],
                inv[1, 0] * x + inv[1, 1] * y + self.centre[1])


def _draw_garment(img, ops, st, frame, inside=None):
    """Draws a garment on ``img`` in place; returns its tight pixel box."""
    xys = [frame.flat(pts) for _, pts in ops]
    mask = Image.new("L", img.size)
    md = ImageDraw.Draw(mask)
    for (role, _), xy in zip(ops, xys):
        if role in ("fabric", "solid"):
            md.polygon(xy, fill=255)
    box = mask.getbbox()
    x0, y0, x1, y1 = box
    tex = Image.new("RGB", (x1 - x0, y1 - y0), st["colour"])
    if st["pattern"] != "solid":
        u, v = frame.local(np.arange(x0, x1, dtype=np.float32)[None] + .5,
                           np.arange(y0, y1, dtype=np.float32)[:, None] + .5)
        sec = _pattern(u / st["period"] + st["phase"][0],
                       v / st["period"] + st["phase"][1], st["pattern"])
        tex.paste(st["second"], None, Image.fromarray(sec))
    img.paste(tex, box, mask.crop(box))
    d, lw, trim = ImageDraw.Draw(img), SUPERSAMPLE, st["trim"]
    for (role, pts), xy in zip(ops, xys):
        if role == "fabric":
            d.polygon(xy, outline=trim, width=lw)
        elif role in ("solid", "inside", "dark"):
            fill = {"solid": st["colour"], "dark": st["dark"],
                    "inside": inside or st["inside"]}[role]
            d.polygon(xy, fill=fill, outline=trim, width=lw)
        elif role in ("band", "line"):
            d.line(xy, fill=st["dark"] if role == "band" else trim,
                   width=int(.03 * frame.scale) if role == "band" else lw)
        else:
            r = st["button_radius"] * frame.scale
            for x, y in frame(pts):
                d.ellipse([x - r, y - r, x + r, y + r], fill=st["button"],
                          outline=trim)
    return box


def _limb(a, b, width):
    """A quadrilateral of ``width`` from point a to point b."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    n = (b - a)[::-1] * [-1, 1] / (np.linalg.norm(b - a) + 1e-9) * width / 2
    return np.stack([a + n, b + n, b - n, a - n])


def _draw_figure(d, frame, st, rng):
    """Draws a simple person under the garment; returns the skin colour."""
    skin = SKIN[rng.integers(len(SKIN))]
    legs = TROUSERS[rng.integers(len(TROUSERS))]
    for m in (1, MIRROR):
        d.polygon(frame.flat(_limb((.06, .4), (.065, 1.3), .09) * m),
                  fill=legs)
        b, v = st["arm"][0] * m, st["arm"][1] * m
        d.polygon(frame.flat(_limb(b, b + v * .5, .065)), fill=skin)
        (x, y), r = frame(b + v * .5)[0], .035 * frame.scale
        d.ellipse([x - r, y - r, x + r, y + r], fill=skin)
    d.polygon(frame.flat(_limb((0, -.1), (0, .03), .055)), fill=skin)
    (x, y), r = frame((0, -.16))[0], .078 * frame.scale
    d.ellipse([x - r, y - r * 1.12, x + r, y + r], fill=(40, 30, 25))  # Hair.
    d.ellipse([x - r * .85, y - r * .8, x + r * .85, y + r * 1.08], fill=skin)
    return skin


def _extent(ops, frame):
    pts = np.concatenate([frame(p) for r, p in ops if r in ("fabric", "solid")])
    return pts.min(0), pts.max(0)


def _bbox(box):
    """A supersampled box as [xmin, ymin, xmax, ymax] output pixels, max
    exclusive (pixel edges), so the box covers every touched pixel."""
    k = SUPERSAMPLE
    return [box[0] // k, box[1] // k, -(-box[2] // k), -(-box[3] // k)]


def _jpeg(img, quality):
    buf = io.BytesIO()  # PIL writes no timestamp: same pixels, same bytes.
    img.save(buf, "JPEG", quality=int(quality), optimize=False)
    return buf.getvalue()


def _colour(rng, low=0, high=256):
    return tuple(int(v) for v in rng.integers(low, high, 3))


def shop_photo(ops, st, size, rng):
    """Centred, frontal, sharp, on a plain light background with a shadow.

    Args:
        ops: the garment's ``(role, points)`` drawing ops (unit coordinates).
        st: its style (``synthetic._style``: colours, pattern, buttons).
        size: side of the square photo in pixels.
        rng: the photo's ``numpy.random.Generator``.

    Returns:
        ``(jpeg bytes, [xmin, ymin, xmax, ymax])``, the garment's box in
        pixels (max exclusive).
    """
    big = size * SUPERSAMPLE
    bg = _colour(rng, 198, 231)  # Light, yet darker than white cloth.
    img = Image.new("RGB", (big, big), bg)
    lo, hi = _extent(ops, _Frame(1))
    # One scale for all garments keeps length and width readable from the
    # shop image; only the few that would not fit shrink.
    scale = min(SHOP_SCALE, 0.94 / (hi - lo).max()) * big
    scale *= rng.uniform(0.97, 1.03)
    shadow = _Frame(scale, 0, (lo + hi) / 2 - [.012, .015], (big / 2,) * 2)
    d = ImageDraw.Draw(img)
    for role, pts in ops:
        if role in ("fabric", "solid"):
            d.polygon(shadow.flat(pts), fill=shade(bg, -0.12))
    frame = _Frame(scale, 0, (lo + hi) / 2, (big / 2,) * 2)
    box = _bbox(_draw_garment(img, ops, st, frame))
    return _jpeg(img.reduce(SUPERSAMPLE), SHOP_JPEG_QUALITY), box


def _clutter(big, rng):
    """A random scene: a two-tone gradient, a floor and random shapes."""
    top, bottom = rng.integers(0, 256, (2, 3))
    ramp = np.linspace(0, 1, big)[:, None]
    column = (top * (1 - ramp) + bottom * ramp).astype(np.uint8)[:, None]
    img = Image.fromarray(column).resize((big, big), Image.NEAREST)
    d = ImageDraw.Draw(img)
    d.rectangle([0, rng.uniform(.6, .9) * big, big, big], fill=_colour(rng))
    n = rng.integers(8, 16)  # Batched draws: per-call overhead dominates.
    kinds, colours = rng.integers(0, 4, n), rng.integers(0, 256, (n, 3))
    xys = (rng.uniform(-.1, 1.1, (n, 6)) * big).tolist()
    sizes = (rng.uniform(.04, .4, (n, 2)) * big).tolist()
    for kind, c, xy, (w, h) in zip(kinds, colours.tolist(), xys, sizes):
        c, box = tuple(c), [xy[0], xy[1], xy[0] + w, xy[1] + h]
        if kind == 0:
            d.rectangle(box, fill=c)
        elif kind == 1:
            d.ellipse(box, fill=c)
        elif kind == 2:
            d.polygon(xy, fill=c)
        else:
            d.line(box, fill=c, width=int(2 + w / 16))
    return img


def street_photo(ops, st, size, rng):
    """Worn, small, anywhere in clutter; occluded, tinted, blurred, noisy.

    Args and returns: as for ``shop_photo``.
    """
    big, k = size * SUPERSAMPLE, SUPERSAMPLE
    img = _clutter(big, rng)
    angle = np.radians(rng.uniform(-1, 1) * STREET_ROTATION_DEG)
    lo, hi = _extent(ops, _Frame(1, angle))
    scale = rng.uniform(*STREET_SIZE) * big / (hi - lo).max()
    shift = rng.uniform(2 - lo * scale, big - 2 - hi * scale)
    frame = _Frame(scale, angle, (0, 0), shift)
    skin = _draw_figure(ImageDraw.Draw(img), frame, st, rng)
    box = _bbox(_draw_garment(img, ops, st, frame, inside=skin))
    if rng.uniform() < OCCLUSION_PROB:  # An object in front, at a side.
        bw, bh = (box[2] - box[0]) * k, (box[3] - box[1]) * k
        area = rng.uniform(*OCCLUSION_AREA) * bw * bh
        w = np.sqrt(area) * rng.uniform(0.5, 1.5)
        cx = box[0] * k + bw * (rng.integers(2) + rng.uniform(-.3, .3))
        cy = box[1] * k + rng.uniform(0, bh)
        xy = [cx - w / 2, cy - area / w / 2, cx + w / 2, cy + area / w / 2]
        draw = ImageDraw.Draw(img)
        (draw.ellipse, draw.rectangle)[rng.integers(2)](xy, fill=_colour(rng))
    img = img.reduce(k).filter(ImageFilter.BoxBlur(rng.uniform(*STREET_BLUR)))
    gain = rng.uniform(*STREET_GAIN, 3) * rng.uniform(*STREET_BRIGHTNESS)
    # Grey sensor noise: a third of the cost of per-channel noise.
    noise = rng.standard_normal((size, size, 1), np.float32)
    x = np.asarray(img, np.float32) * gain.astype(np.float32)
    x += noise * np.float32(rng.uniform(*STREET_NOISE))
    img = Image.fromarray(np.clip(x, 0, 255, out=x).astype(np.uint8))
    return _jpeg(img, rng.integers(*STREET_JPEG_QUALITY)), box

