"""DeepFashion's annotation files, as distributed (docs/DATASETS.md).

What both DeepFashion benchmarks (``deepfashion.py``) and DeepFashion2
(``deepfashion2.py``) read alike: the check that every file a user must
place by hand is there (``check_files``, naming every missing one), the
list-file reader (``iter_list``: line 1 the number of entries, line 2 the
column names, then one entry per line, fields separated by runs of spaces),
DeepFashion's value codes (``1`` positive, ``-1`` negative, ``0`` unknown,
re-coded to our ``1 / 0 / -1``), the attribute names and types of
``list_attr_cloth.txt`` and their grouping into multilabel attributes.

Errors name the file and line and say what was expected
(``AnnotationError``).
"""

import collections
import os
import re

from mtct_tf import attributes

# Where the "img/..." names of the annotation files may start from.
IMAGE_DIRS = ("Img", "")
# DeepFashion file value -> our code (attributes.MISSING = unknown).
VALUE_CODES = {"1": 1, "-1": 0, "0": attributes.MISSING}


class AnnotationError(ValueError):
    """An annotation file is not in the documented format."""


class MissingFilesError(FileNotFoundError):
    """Files a converter needs are not under the dataset root."""


def fail(path, line, message):
    """Raises an ``AnnotationError`` naming ``path`` and ``line`` (0: none).

    Raises:
        AnnotationError: always.
    """
    where = f"{path}, line {line}" if line else path
    raise AnnotationError(f"{where}: {message}")


def image_base(root):
    """The directory that DeepFashion's ``img/...`` names start from."""
    for sub in IMAGE_DIRS:
        if os.path.isdir(os.path.join(root, sub, "img")):
            return sub
    return None


def check_files(root, expected, *, what="DeepFashion"):
    """Raises ``MissingFilesError`` naming every expected file not found.

    Args:
        root: the dataset root.
        expected: relative paths; a trailing ``/`` asks for a directory, and
            ``Img/img/`` is also satisfied by ``img/`` directly in ``root``.
        what: the dataset's name, for the message.
    """
    missing = []
    for rel in expected:
        if rel == "Img/img/":
            ok = image_base(root) is not None
        elif rel.endswith("/"):
            ok = os.path.isdir(os.path.join(root, rel))
        else:
            ok = os.path.isfile(os.path.join(root, rel))
        if not ok:
            missing.append(rel)
    if missing:
        listing = "\n".join(f"  {rel}" for rel in missing)
        raise MissingFilesError(
            f"{what}: {len(missing)} of the {len(expected)} expected files "
            f"are missing under {os.path.abspath(root)}:\n{listing}\n"
            "Download them by hand (research licence) and place them as "
            "listed; docs/DATASETS.md gives the layout."
        )


def read_text(path):
    """The lines of a text file: UTF-8, else GB18030 (Chinese names)."""
    with open(path, "rb") as f:
        data = f.read()
    for encoding in ("utf-8-sig", "gb18030"):
        try:
            return data.decode(encoding).splitlines()
        except UnicodeDecodeError:
            continue
    fail(path, 0, "neither UTF-8 nor GB18030 text")


def iter_list(path, first_column, *, tokens=None, min_tokens=None,
              header_optional=False, lines=None):
    """Yields ``(line number, fields)`` of a DeepFashion list file.

    Checks line 1 (the entry count), line 2 (column names starting with
    ``first_column``), the field count of every entry and, at the end, that
    the file holds as many entries as line 1 declares (a truncated download
    is caught there).

    Args:
        path: the file.
        first_column: the expected first column name (line 2), or ``None``
            to accept any column names line.
        tokens: exact number of fields per entry, or ``None``.
        min_tokens: minimum number of fields, or ``None``.
        header_optional: line 2 may be an entry already (some files have no
            column names line).
        lines: the decoded lines, if already read; default: the file is
            streamed as UTF-8.

    Raises:
        AnnotationError: naming the file, the line and what was expected.
    """
    source = lines if lines is not None else _stream(path)
    declared, count, line_no = None, 0, 0
    for line_no, text in enumerate(source, start=1):
        fields = text.split()
        if line_no == 1:
            if len(fields) != 1 or not fields[0].isdigit():
                fail(path, 1, f"expected the number of entries (one "
                     f"integer), got {text.strip()[:60]!r}")
            declared = int(fields[0])
            continue
        if line_no == 2 and (first_column is None
                             or fields[:1] == [first_column]):
            continue
        if line_no == 2 and not header_optional:
            fail(path, 2, f"expected the column names line starting with "
                 f"{first_column!r}, got {text.strip()[:60]!r}")
        if not fields:
            continue  # Blank (e.g. trailing) lines.
        if tokens is not None and len(fields) != tokens:
            fail(path, line_no, f"expected {tokens} fields "
                 f"({_columns_hint(first_column, tokens)}), got "
                 f"{len(fields)}")
        if min_tokens is not None and len(fields) < min_tokens:
            fail(path, line_no, f"expected at least {min_tokens} fields, "
                 f"got {len(fields)}")
        count += 1
        yield line_no, fields
    if declared is None:
        fail(path, 1, "the file is empty; expected the number of entries")
    if count != declared:
        fail(path, 0, f"line 1 declares {declared} entries but the file "
             f"has {count} (truncated or edited file?)")


def _stream(path):
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                yield raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as e:
                fail(path, number, f"not UTF-8 text (byte "
                     f"{raw[e.start]:#04x} at column {e.start + 1})")


def _columns_hint(first_column, tokens):
    return f"{first_column or 'a name'} and {tokens - 1} more"


def parse_int(path, line, text, what):
    """``int(text)``, or an ``AnnotationError`` naming ``what`` and the line.
    """
    try:
        return int(text)
    except ValueError:
        fail(path, line, f"{what} must be an integer, got {text!r}")


def parse_box(path, line, fields):
    """Four pixel coordinates ``x_1 y_1 x_2 y_2``."""
    return tuple(parse_int(path, line, v, name)
                 for v, name in zip(fields, ("x_1", "y_1", "x_2", "y_2")))


def parse_codes(path, line, fields, expected):
    """DeepFashion's 1 / -1 / 0 values -> our 1 / 0 / -1 codes."""
    if len(fields) != expected:
        fail(path, line, f"expected {expected} attribute values (1, -1 or "
             f"0), got {len(fields)}")
    try:
        return tuple(VALUE_CODES[v] for v in fields)
    except KeyError:
        bad = next(v for v in fields if v not in VALUE_CODES)
        fail(path, line, f"attribute values must be 1, -1 or 0 (unknown), "
             f"got {bad!r}")


def unique_names(names):
    """Disambiguates repeated names with `` (2)``, `` (3)``, ... suffixes."""
    seen, out = collections.Counter(), []
    for name in names:
        seen[name] += 1
        out.append(name if seen[name] == 1 else f"{name} ({seen[name]})")
    return out


def identifier(text, fallback):
    """A lower-case attribute identifier made of ``text`` (or ``fallback``)."""
    name = re.sub(r"[^0-9a-z]+", "_", text.lower()).strip("_")
    return name or fallback


def _english(fields):
    """The English part of ``<Chinese name> [(...)] <English name>``."""
    rest = list(fields)
    chinese = bool(rest) and not rest[0].isascii()
    while rest and not rest[0].isascii():
        rest.pop(0)
    if chinese and rest and rest[0].startswith("("):
        while rest and not rest[0].endswith(")"):
            rest.pop(0)
        rest = rest[1:]
    return " ".join(rest) or " ".join(fields)


def multilabel_value(names, codes):
    """Our manifest value of one multilabel group (see ``attributes``)."""
    if all(c == attributes.MISSING for c in codes):
        return None
    positive = [n for n, c in zip(names, codes) if c == 1]
    unknown = [n for n, c in zip(names, codes) if c == attributes.MISSING]
    return {"positive": positive, "unknown": unknown} if unknown else positive


def drop_or_fail(problems, skip_bad, what):
    """Raises on ``problems`` (the first 10 shown) unless ``skip_bad``.

    Args:
        problems: ``"file, line N: message"`` strings.
        skip_bad: the converter drops the problem images instead.
        what: what the problems are, for the message.

    Raises:
        AnnotationError: ``problems`` and not ``skip_bad``.
    """
    if problems and not skip_bad:
        shown = "\n".join(problems[:10])
        more = len(problems) - 10
        raise AnnotationError(
            f"{len(problems)} {what}:\n{shown}"
            + (f"\n... and {more} more" if more > 0 else "")
            + "\n(--skip_bad drops them)")


def read_attribute_names(path, *, types=None):
    """``list_attr_cloth.txt`` -> ``[(name, type), ...]`` in file order.

    Each entry is ``<name> <type>`` (Category and Attribute benchmark) or
    ``<Chinese name> <English name> <type>`` (Consumer-to-shop); names may
    contain spaces and the type is the last field. The English name is kept.

    Args:
        path: the file.
        types: allowed type numbers, or ``None`` for any positive integer.
    """
    out = []
    # Any column names line: the releases word it differently; the entry
    # count of line 1 still catches a file without one.
    for line, fields in iter_list(path, None, min_tokens=2,
                                  lines=read_text(path)):
        kind = parse_int(path, line, fields[-1],
                         "the attribute type (last field)")
        if (types is not None and kind not in types) or kind < 0:
            allowed = sorted(types) if types is not None else "an integer >= 0"
            fail(path, line, f"attribute type must be one of {allowed}, got "
                 f"{kind}")
        out.append((_english(fields[:-1]), kind))
    return out


def read_type_names(path):
    """``list_attr_type.txt`` -> ``{type number: identifier}`` (optional)."""
    names = {}
    lines = read_text(path)
    for k, (line, fields) in enumerate(
            iter_list(path, None, min_tokens=1, lines=lines), start=1):
        number = k
        if len(fields) > 1 and fields[-1].lstrip("-").isdigit():
            number, fields = int(fields[-1]), fields[:-1]
        names[number] = identifier(_english(fields), f"type_{number}")
    return names


def group_attributes(names_types, type_names, reserved=("category",)):
    """Groups binary attributes by type into multilabel ``Attribute``s.

    Returns:
        ``[(Attribute, [indices into the file's attribute list]), ...]`` in
        type order, one group per type; a type of a single attribute is a
        head of one sigmoid.
    """
    by_type = collections.defaultdict(list)
    for index, (_, kind) in enumerate(names_types):
        by_type[kind].append(index)
    taken = set(reserved) | {"embedding"}
    out = []
    for kind in sorted(by_type):
        indices = by_type[kind]
        base = name = type_names.get(kind, f"type_{kind}")
        k = 2
        while name in taken:
            name, k = f"{base}_{k}", k + 1
        taken.add(name)
        values = unique_names([names_types[i][0] for i in indices])
        out.append((attributes.Attribute(name, tuple(values),
                                         attributes.MULTILABEL), indices))
    return out
