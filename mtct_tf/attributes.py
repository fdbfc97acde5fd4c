"""Attribute schemas: ordered attribute names and their ordered value names.

A schema fixes the integer coding of every label in the project: value ``k``
of attribute ``a`` is ``schema[a].values[k]`` and a missing label is
``MISSING`` (-1). The same attribute names key the model's output dict, the
label dict in tf.data, the losses, the metrics and the serving outputs.

A ``multilabel`` attribute (a group of binary attributes, e.g. one of
DeepFashion's five attribute types) is coded as a tuple with one entry per
value: ``1`` positive, ``0`` negative, ``MISSING`` (-1) unknown. In a
manifest it is written as the list of its positive value names (every other
value negative), as ``{"positive": [...], "unknown": [...]}`` (the unknown
values -1, every other value negative), or ``null`` (all unknown).
"""

import dataclasses
import json
import os

from mtct_tf import fileio

MISSING = -1

# Attribute kinds. ``softmax``: one of N values. ``multilabel``: N binary
# values (sigmoid heads, e.g. DeepFashion's attribute groups).
SOFTMAX = "softmax"
MULTILABEL = "multilabel"


@dataclasses.dataclass(frozen=True)
class Attribute:
    """One attribute category and its ordered value names."""

    name: str
    values: tuple
    kind: str = SOFTMAX

    def __post_init__(self):
        if not self.name or not self.name.replace("_", "").isalnum():
            raise ValueError(
                "Attribute names must be non-empty identifiers (letters, "
                f"digits, '_'). Received: name={self.name!r}"
            )
        # A softmax needs two values to choose between; a multilabel group
        # of one binary attribute is a single sigmoid and is fine.
        least = 1 if self.kind == MULTILABEL else 2
        if len(self.values) < least:
            raise ValueError(
                f"Attribute {self.name!r} ({self.kind}) needs at least "
                f"{least} value{'s' if least > 1 else ''}. "
                f"Received: values={self.values!r}"
            )
        if len(set(self.values)) != len(self.values):
            raise ValueError(
                f"Attribute {self.name!r} has duplicate value names. "
                f"Received: values={self.values!r}"
            )
        if self.kind not in (SOFTMAX, MULTILABEL):
            raise ValueError(
                f"Attribute kind must be {SOFTMAX!r} or {MULTILABEL!r}. "
                f"Received: kind={self.kind!r}"
            )
        object.__setattr__(self, "values", tuple(self.values))

    @property
    def num_values(self):
        return len(self.values)

    @property
    def missing_code(self):
        """The code of an absent label: -1, or all -1 for multilabel."""
        if self.kind == MULTILABEL:
            return (MISSING,) * len(self.values)
        return MISSING

    def encode(self, value):
        """Codes one manifest value (see the module docstring).

        Raises:
            KeyError: an unknown value name (the message lists the expected
                ones).
            ValueError: a multilabel value of the wrong form.
        """
        if value is None:
            return self.missing_code
        if self.kind == SOFTMAX:
            return self.index(value)
        if isinstance(value, (list, tuple)):
            positive, unknown = value, ()
        elif isinstance(value, dict) and set(value) <= {"positive",
                                                        "unknown"}:
            positive = value.get("positive", ())
            unknown = value.get("unknown", ())
        else:
            raise ValueError(
                f"multilabel attribute {self.name!r} takes a list of positive "
                "value names, {\"positive\": [...], \"unknown\": [...]} or "
                f"null; got {value!r}"
            )
        for part in (positive, unknown):
            if not isinstance(part, (list, tuple)) or not all(
                    isinstance(v, str) for v in part):
                raise ValueError(
                    f"multilabel attribute {self.name!r}: positive / unknown "
                    f"must be lists of value names; got {value!r}"
                )
        codes = [0] * len(self.values)
        for v in unknown:
            codes[self.index(v)] = MISSING
        for v in positive:
            k = self.index(v)
            if codes[k] == MISSING:
                raise ValueError(
                    f"multilabel attribute {self.name!r}: value {v!r} is "
                    "listed as both positive and unknown"
                )
            codes[k] = 1
        return tuple(codes)

    def decode(self, code):
        """The manifest value of a code (``None`` = missing)."""
        if self.kind == SOFTMAX:
            return None if code == MISSING else self.values[code]
        code = [int(c) for c in code]
        if all(c == MISSING for c in code):
            return None
        positive = [v for v, c in zip(self.values, code) if c == 1]
        unknown = [v for v, c in zip(self.values, code) if c == MISSING]
        if not unknown:
            return positive
        return {"positive": positive, "unknown": unknown}

    def index(self, value_name):
        """Returns the integer code of ``value_name``.

        Raises:
            KeyError: the value is not one of this attribute's values; the
                message lists the expected ones.
        """
        try:
            return self.values.index(value_name)
        except ValueError:
            shown = ", ".join(self.values[:12])
            more = "" if len(self.values) <= 12 else ", ..."
            raise KeyError(
                f"unknown value {value_name!r} for attribute {self.name!r}; "
                f"expected one of: {shown}{more}"
            ) from None


class AttributeSchema:
    """An ordered collection of attributes.

    Args:
        name: a short name for the schema (``"synth"``, ``"xdomain"``, ...).
        attributes: a sequence of ``Attribute``.
    """

    def __init__(self, name, attributes):
        attributes = tuple(attributes)
        if not attributes:
            raise ValueError(
                f"A schema needs at least one attribute. Received: "
                f"attributes={attributes!r}"
            )
        names = [a.name for a in attributes]
        if len(set(names)) != len(names):
            raise ValueError(
                f"Duplicate attribute names in schema {name!r}. "
                f"Received: names={names!r}"
            )
        self.name = name
        self.attributes = attributes
        self._by_name = {a.name: a for a in attributes}

    @property
    def names(self):
        return tuple(a.name for a in self.attributes)

    @property
    def num_values(self):
        """Dict attribute name -> number of values."""
        return {a.name: a.num_values for a in self.attributes}

    @property
    def kinds(self):
        """Dict attribute name -> ``"softmax"`` or ``"multilabel"``."""
        return {a.name: a.kind for a in self.attributes}

    def __getitem__(self, name):
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(
                f"unknown attribute {name!r} in schema {self.name!r}; "
                f"expected one of: {', '.join(self.names)}"
            ) from None

    def __contains__(self, name):
        return name in self._by_name

    def __iter__(self):
        return iter(self.attributes)

    def __len__(self):
        return len(self.attributes)

    def __eq__(self, other):
        return (
            isinstance(other, AttributeSchema)
            and self.name == other.name
            and self.attributes == other.attributes
        )

    def __repr__(self):
        counts = "/".join(str(a.num_values) for a in self.attributes)
        return f"AttributeSchema({self.name!r}, {len(self)} attributes {counts})"

    def encode(self, labels):
        """Maps ``{attribute: value name or None}`` to ``{attribute: int}``.

        Attributes absent from ``labels`` or given as ``None`` are
        ``MISSING``. Unknown attribute or value names raise ``KeyError``.
        Multilabel attributes map to a tuple of 1 / 0 / -1 (see the module
        docstring); a malformed multilabel value raises ``ValueError``.
        """
        for key in labels:
            self[key]  # Raises a KeyError naming the unknown attribute.
        out = {}
        for attribute in self.attributes:
            out[attribute.name] = attribute.encode(labels.get(attribute.name))
        return out

    def decode(self, codes):
        """Maps ``{attribute: int}`` back to value names (``None`` = missing)."""
        return {name: self[name].decode(code) for name, code in codes.items()}

    def to_dict(self):
        return {
            "name": self.name,
            "attributes": [
                {"name": a.name, "kind": a.kind, "values": list(a.values)}
                for a in self.attributes
            ],
        }

    @classmethod
    def from_dict(cls, d):
        try:
            return cls(
                d["name"],
                [
                    Attribute(a["name"], tuple(a["values"]), a.get("kind", SOFTMAX))
                    for a in d["attributes"]
                ],
            )
        except (KeyError, TypeError) as e:
            raise ValueError(
                "A schema is {'name': str, 'attributes': [{'name': str, "
                "'values': [str, ...], 'kind': 'softmax' | 'multilabel'}, "
                f"...]}}; missing {e}"
            ) from None

    def save(self, path):
        """Writes the schema as JSON (atomically)."""
        fileio.write_json(path, self.to_dict(), newline=True)

    @classmethod
    def load(cls, path):
        with open(path, encoding="utf-8") as f:
            try:
                d = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: not a JSON schema file: {e}") from None
        try:
            return cls.from_dict(d)
        except (ValueError, KeyError) as e:
            raise ValueError(f"{path}: {e}") from None


def _generic(name, n):
    return tuple(f"{name}_{i:02d}" for i in range(n))


# The paper's X-Domain attributes and value counts (SPEC §1, §5). The real
# value names are not published; generic names stand in for them.
XDOMAIN_COUNTS = (
    ("category", 20),
    ("button", 13),
    ("colour", 55),
    ("length", 7),
    ("pattern", 28),
    ("shape", 11),
    ("collar", 26),
    ("sleeve_length", 8),
    ("sleeve_shape", 17),
)

# The attributes that X-Domain-synth's renderer draws (mtct_tf/data/synthetic.py
# must stay in step with these names).
SYNTH_VALUES = (
    ("category", ("tshirt", "blouse", "dress", "coat", "jacket")),
    ("button", ("none", "single_row", "double_row")),
    (
        "colour",
        (
            "red", "orange", "yellow", "green", "teal",
            "blue", "purple", "pink", "black", "white",
        ),
    ),
    ("length", ("short", "regular", "long")),
    (
        "pattern",
        (
            "solid", "horizontal_stripes", "vertical_stripes",
            "checks", "dots", "diagonal",
        ),
    ),
    ("shape", ("slim", "regular", "loose")),
    ("collar", ("round", "v_neck", "shirt_collar", "turtleneck")),
    ("sleeve_length", ("sleeveless", "short", "elbow", "long")),
    ("sleeve_shape", ("straight", "puff", "flared")),
)


def xdomain_schema():
    return AttributeSchema(
        "xdomain", [Attribute(n, _generic(n, k)) for n, k in XDOMAIN_COUNTS]
    )


def synth_schema():
    return AttributeSchema(
        "synth", [Attribute(n, values) for n, values in SYNTH_VALUES]
    )


BUILTIN = {"xdomain": xdomain_schema, "synth": synth_schema}


def get_schema(name_or_path):
    """Returns a built-in schema by name, or loads one from a JSON file."""
    if isinstance(name_or_path, AttributeSchema):
        return name_or_path
    if name_or_path in BUILTIN:
        return BUILTIN[name_or_path]()
    if os.path.isfile(name_or_path):
        return AttributeSchema.load(name_or_path)
    raise ValueError(
        f"Unknown schema {name_or_path!r}: expected one of "
        f"{sorted(BUILTIN)} or the path of a schema JSON file."
    )
