"""Atomic file writes: a temporary file beside the target, then ``os.replace``.

A reader, or a rerun after a kill, sees the previous file or the new one,
never a half-written one. ``os.replace`` is atomic only within one file
system, hence the temporary file lives in the target's own directory. Its
name starts with a dot so that directory listings of published files skip
it, and keeps the target's suffix where the writer infers the format from
it (Keras wants ``.keras`` and ``.weights.h5``, matplotlib ``.png``).

Usage::

    fileio.write_json(path, obj)
    with fileio.replacing(path, suffix=".keras") as tmp:
        net.save(tmp)
"""

import contextlib
import json
import os


def temporary_path(path, suffix=""):
    """The temporary name used for ``path``.

    Args:
        path: the file to write.
        suffix: a suffix the temporary name must keep (``".keras"``); it is
            kept only when ``path`` ends with it.

    Returns:
        ``<dir>/.<stem>.tmp<suffix>``, or ``<dir>/.<name>.tmp`` without a
        suffix.
    """
    path = os.fspath(path)
    folder, name = os.path.split(path)
    if suffix and name.endswith(suffix) and len(name) > len(suffix):
        name = f"{name[:-len(suffix)]}.tmp{suffix}"
    else:
        name = f"{name}.tmp"
    return os.path.join(folder, f".{name}")


@contextlib.contextmanager
def replacing(path, suffix=""):
    """Yields a temporary path that replaces ``path`` when the block ends.

    If the block raises, the temporary file is removed and ``path`` is left
    as it was.

    Args:
        path: the file to publish.
        suffix: see ``temporary_path``.

    Yields:
        The temporary path to write.
    """
    tmp = temporary_path(path, suffix)
    try:
        yield tmp
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise
    os.replace(tmp, path)


def write_bytes(path, data):
    """Writes ``data`` (bytes) to ``path`` atomically."""
    with replacing(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)


def write_text(path, text):
    """Writes ``text`` (UTF-8) to ``path`` atomically."""
    with replacing(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)


def write_json(path, obj, *, indent=1, newline=False, ensure_ascii=True):
    """Writes ``obj`` as JSON to ``path`` atomically.

    Args:
        path: the file.
        obj: a JSON-serialisable object.
        indent: ``json.dump``'s indent.
        newline: end the file with a newline.
        ensure_ascii: ``json.dump``'s ``ensure_ascii``.
    """
    text = json.dumps(obj, indent=indent, ensure_ascii=ensure_ascii)
    write_text(path, text + ("\n" if newline else ""))
