"""Attribute schemas: ordered attribute names and their ordered value names.

A schema fixes the integer coding of every label in the project: value ``k``
of attribute ``a`` is ``schema[a].values[k]`` and a missing label is
``MISSING`` (-1). The same attribute names key the model's output dict, the
label dict in tf.data, the losses, the metrics and the serving outputs.
"""

import dataclasses
import json
import os

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
        if len(self.values) < 2:
            raise ValueError(
                f"Attribute {self.name!r} needs at least 2 values. "
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
        """
        for key in labels:
            self[key]  # Raises a KeyError naming the unknown attribute.
        out = {}
        for attribute in self.attributes:
            value = labels.get(attribute.name)
            out[attribute.name] = (
                MISSING if value is None else attribute.index(value)
            )
        return out

    def decode(self, codes):
        """Maps ``{attribute: int}`` back to value names (``None`` = missing)."""
        return {
            name: (None if code == MISSING else self[name].values[code])
            for name, code in codes.items()
        }

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
                f"'values': [str, ...], 'kind': 'softmax'}}, ...]}}; missing {e}"
            ) from None

    def save(self, path):
        """Writes the schema as JSON (atomically)."""
        tmp = f"{path}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=1)
            f.write("\n")
        os.replace(tmp, path)

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
