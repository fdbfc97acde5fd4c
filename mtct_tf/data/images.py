"""The image file of a manifest line: read, checked and, when needed,
re-encoded (docs/DATA_FORMAT.md, "Conversion").

PIL and NumPy only: this runs in the converter's worker processes, which
must start without TensorFlow, and for the detector's records and cropper,
which check a manifest's images as the converter does.
"""

import dataclasses
import io
import warnings

import numpy as np
from PIL import Image

from mtct_tf.data import exif
from mtct_tf.data.features import MAX_PIXELS
from mtct_tf.data.manifest import ManifestError

# Re-encoded images are stored at this JPEG quality: high enough that the
# re-encoding is invisible to the network, far smaller than lossless.
JPEG_QUALITY = 95


class ImageError(ManifestError):
    """An image file named by a manifest line is missing or not usable."""


def _to_rgb(img):
    """Converts any PIL mode to 8-bit RGB; transparency goes on white."""
    if img.mode.startswith("I") or img.mode == "F":
        # 16/32-bit greyscale: PIL's convert() clips at 255 instead of
        # scaling, so scale by hand.
        arr = np.asarray(img, dtype=np.float64)
        if arr.max(initial=0) > 255:
            arr = arr / 257.0
        img = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8))
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, img)
    return img.convert("RGB")


def load_image(entry, *, manifest_path, resize=None, max_pixels=MAX_PIXELS):
    """Reads, checks and (when needed) re-encodes the image of one entry.

    Baseline 8-bit RGB JPEG and PNG files are kept byte for byte. Anything
    else (greyscale, CMYK, palette, alpha, 16-bit, other formats) is
    converted to RGB (transparency composited on white) and stored as JPEG.
    With ``resize``, an image whose shorter side exceeds ``resize`` is
    scaled (aspect ratio kept, bicubic, never enlarged) so that its shorter
    side is ``resize``, stored as JPEG, and its box is rescaled with it.
    A photo whose EXIF orientation is not 1 is turned upright and stored as
    JPEG, its box turned with it (``exif.transpose_box``): records carry
    no orientation for a reader to honour. The manifest's ``width``,
    ``height`` and box are those of the file as stored.

    Args:
        entry: a ``manifest.Entry``.
        manifest_path: shown in error messages.
        resize: ``None`` or the target shorter side in pixels.
        max_pixels: refuse images with more pixels than this.

    Returns:
        ``(entry, encoded, fmt, height, width, reencoded)`` where ``entry``
        has its box in the coordinates of the returned image.

    Raises:
        ImageError: naming the manifest file and line and what is wrong.
    """
    where = f"{manifest_path}, line {entry.line}"

    def fail(message):
        raise ImageError(f"{where}: {message}")

    try:
        with open(entry.path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        fail(f"image file {entry.path} does not exist")
    except OSError as e:
        fail(f"cannot read image file {entry.path}: {e.strerror or e}")
    if not data:
        # PIL would only say "cannot identify image file <_io.BytesIO ...>".
        fail(f"image file {entry.path} is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            width, height = img.size
            if width * height > max_pixels:
                fail(f"image {entry.path} is {width}x{height} = "
                     f"{width * height} pixels, more than the limit of "
                     f"{max_pixels} (a decompression bomb?)")
            fmt, mode = img.format, img.mode
            img.verify()
            # verify() leaves the image unusable: open it again to decode.
            # (It must come first: reading the EXIF block before it breaks
            # it.)
            img = Image.open(io.BytesIO(data))
            orientation = exif.pil_orientation(img)
            scale = None
            if resize is not None and min(width, height) > resize:
                scale = resize / min(width, height)
                new_size = (max(1, round(width * scale)),
                            max(1, round(height * scale)))
            keep = (scale is None and mode == "RGB" and fmt in ("JPEG", "PNG")
                    and orientation == 1)
            if fmt == "JPEG" and (keep or scale is not None):
                # A JPEG can be decoded at 1/2 .. 1/8 scale in the DCT
                # domain, about twice as fast; truncation is still caught.
                # Kept files only need checking: decode them at 1/8. Resized
                # ones decode at the smallest scale still >= the target.
                img.draft(img.mode, (-(-width // 8), -(-height // 8))
                          if keep else new_size)
            img.load()
    except ImageError:
        raise
    except Image.DecompressionBombError as e:
        fail(f"image {entry.path} refused as a decompression bomb: {e}")
    except Exception as e:  # noqa: BLE001 - PIL raises many kinds on bad data.
        fail(f"image {entry.path} cannot be decoded as an image "
             f"({type(e).__name__}: {e}); expected a JPEG or PNG file")
    for key, given, actual in (("width", entry.width, width),
                               ("height", entry.height, height)):
        if given is not None and given != actual:
            fail(f"image {entry.path} is {width}x{height} (width x height) "
                 f"but the manifest says {key}={given}")
    bbox = entry.bbox
    if bbox is not None and (bbox[2] > width or bbox[3] > height):
        fail(f"bbox {list(bbox)} lies outside the {width}x{height} image "
             f"{entry.path}; expected xmax <= {width} and ymax <= {height}")

    if keep:
        return entry, data, fmt.lower(), height, width, False

    img = _to_rgb(img)
    if orientation != 1:
        # Stored upright, so that no reader has to honour the tag; the box
        # (given in the stored image) turns with the pixels.
        if bbox is not None:
            bbox = exif.transpose_box(bbox, orientation, width, height)
        img = img.transpose(exif.PIL_TRANSPOSE[orientation])
        if orientation >= 5:
            width, height = height, width
        if scale is not None:
            new_size = new_size[::-1]
    if scale is not None:
        new_w, new_h = new_size
        img = img.resize((new_w, new_h), Image.BICUBIC)
        if bbox is not None:
            sx, sy = new_w / width, new_h / height
            bbox = (bbox[0] * sx, bbox[1] * sy, bbox[2] * sx, bbox[3] * sy)
        width, height = new_w, new_h
    out = io.BytesIO()
    img.save(out, "JPEG", quality=JPEG_QUALITY)
    entry = dataclasses.replace(entry, bbox=bbox, width=width, height=height)
    return entry, out.getvalue(), "jpeg", height, width, True
