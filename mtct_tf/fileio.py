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
    fileio.save_figure(fig, "docs/images/chart.png")
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


def save_figure(fig, path, *, dpi=110):
    """Saves a matplotlib figure atomically (creating its folder), closes it.

    Args:
        fig: a ``matplotlib.figure.Figure``.
        path: the image file; its suffix (``.png``) sets the format.
        dpi: resolution.

    Returns:
        ``path``.
    """
    # pyplot only here: closing the figure frees it from pyplot's registry.
    from matplotlib import pyplot as plt

    folder = os.path.dirname(os.fspath(path))
    if folder:
        os.makedirs(folder, exist_ok=True)
    with replacing(path, suffix=os.path.splitext(path)[1]) as tmp:
        fig.savefig(tmp, dpi=dpi)
    plt.close(fig)
    return path


def _markers(name):
    return f"<!-- begin {name} -->", f"<!-- end {name} -->"


def sections(text):
    """The marked sections of a Markdown ``text``: name -> the whole block
    (markers included), in order."""
    out, start = {}, 0
    while True:
        i = text.find("<!-- begin ", start)
        if i < 0:
            return out
        name = text[i + len("<!-- begin "):text.find(" -->", i)]
        end = _markers(name)[1]
        j = text.find(end, i)
        if j < 0:
            return out
        out[name] = text[i:j + len(end)]
        start = j + len(end)


def write_section(path, name, text, *, after_title=False):
    """Replaces the section ``name`` of the Markdown file ``path`` (between
    ``<!-- begin name -->`` and ``<!-- end name -->``) by ``text``, or
    adds it: appended, or with ``after_title`` right after the file's
    first line (its ``# title``); the rest of the file is kept. Atomic,
    like ``write_text``.
    """
    begin, end = _markers(name)
    block = f"{begin}\n{text.strip()}\n{end}"
    old = ""
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            old = f.read()
    current = sections(old).get(name)
    if current is not None:
        new = old.replace(current, block)
    elif after_title and old.strip():
        title, _, rest = old.partition("\n")
        new = f"{title}\n\n{block}\n\n{rest.lstrip(chr(10))}"
    else:
        new = old.rstrip("\n") + ("\n\n" if old.strip() else "") + block
    write_text(path, new.rstrip("\n") + "\n")


def keep_sections(new_text, path):
    """``new_text`` with the marked sections of the file ``path`` that
    ``new_text`` lacks (a regenerated report keeps what other generators
    wrote into it): those that stood before the old file's first ``## ``
    heading of its own go right after the new text's title line, the
    others at its end."""
    if not os.path.exists(path):
        return new_text
    with open(path, encoding="utf-8") as f:
        text = f.read()
    old = sections(text)
    mine = sections(new_text)
    # The first heading of the file's own text (not one inside a section).
    masked = text
    for block in old.values():
        masked = masked.replace(block, " " * len(block))
    first_heading = masked.find("\n## ")
    if first_heading < 0:
        first_heading = len(text)
    top, bottom = [], []
    for name, block in old.items():
        if name in mine:
            continue
        at_top = 0 <= text.find(block) < first_heading
        (top if at_top else bottom).append(block)
    if top:
        title, _, rest = new_text.partition("\n")
        new_text = (f"{title}\n\n" + "\n\n".join(top) + "\n\n"
                    + rest.lstrip("\n"))
    if not bottom:
        return new_text
    return new_text.rstrip("\n") + "\n\n" + "\n\n".join(bottom) + "\n"
