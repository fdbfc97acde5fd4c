"""Experiment configs: dataclasses, a registry of named experiments, overrides.

An experiment is an ``ExperimentConfig``; named ones are registered with
``@register``. Overrides come from a YAML file (``--config_file``) and from
``--override a.b=c`` strings, applied in that order. An unknown key is an
error naming the key and the keys that exist; values are parsed as YAML
scalars and type-checked against the field's default.

The shop and street stages share one ``ModelConfig``, like Model Garden's
SimCLR pretrain / finetune pair.
"""

import copy
import contextlib
import dataclasses
import json
import os
import typing

import yaml

from mtct_tf import fileio

METHODS = ("mtct", "no_adapt", "ud", "ftt", "end_to_end")
CROSS_DOMAIN_KINDS = (
    "none", "contrastive", "triplet", "tste_poster", "tste_canonical",
    "coral",
)


class ConfigError(ValueError):
    """An override names an unknown key or gives a value of the wrong type."""


@dataclasses.dataclass
class DataConfig:
    """Where the shards are and how images are prepared.

    ``street_shards_dir`` holds the street records to train and evaluate
    on (detector crops, say); empty means ``shards_dir``.
    """

    shards_dir: str = "runs/demo/shards"
    street_shards_dir: str = ""
    image_size: int = 64
    batch_size: int = 32
    # Context kept around a garment box, as a fraction of the box size.
    margin: float = 0.1
    shuffle_buffer: int = 2048
    # Fraction of street training items whose labels are used (small-data
    # experiments; nested subsets, pipeline.item_kept). The cross-entropy
    # sees only their images; the triplets of the street stage keep every
    # street image as an anchor, with the other items' labels hidden
    # (data/triplets.py), so unlabelled anchors give only the cross-domain
    # term. Street stages without triplets (FTT, UD) drop the other items.
    street_label_fraction: float = 1.0
    # Where the street stage's labels come from: "own" (each street image's
    # annotation) or "pair" (the label-copy oracle: every street training
    # image takes the labels of its paired shop item, so no street label is
    # used; street_label_fraction is then moot). "pair" needs the street
    # stage without triplets (cross_domain.kind none).
    street_labels: str = "own"
    # Triplet negatives: "random" item, or "hard" = same garment category.
    negatives: str = "random"
    cache: bool = False
    # Training framing (pipeline.frame): "box" jitters the garment box
    # without cutting the garment; "crop" takes random resized crops of at
    # least crop_min_area of the box region (whole photos).
    augment: str = "box"
    crop_min_area: float = 0.25
    # 0, or decode each image once and keep it in memory with its shorter
    # side at most this many pixels (pipeline.make_dataset's decode_cache).
    decode_cache: int = 0


@dataclasses.dataclass
class ModelConfig:
    backbone: str = "nin"
    preset: str = "small"
    # keras.applications backbones only: "", "imagenet" or a weights path.
    weights: str = ""
    fc_units: int = 0  # 0: the preset's.
    dropout: float = -1.0  # < 0: the preset's.
    # "branches": one FC branch per attribute (MTN); "joint": one shared
    # branch scoring every value (JAN, the paper's single-network baseline).
    heads: str = "branches"


@dataclasses.dataclass
class CrossDomainConfig:
    """The cross-domain loss of the street stage (SPEC §4)."""

    kind: str = "tste_poster"
    weight: float = 1.0
    alpha: float = 1.0
    beta: float = 0.0  # 0: canonical -(alpha + 1) / 2.
    # Contrastive / triplet hinge margin; 0: the loss's default (1.0 / 0.2).
    margin: float = 0.0
    normalize: bool = True


@dataclasses.dataclass
class StageConfig:
    """One training stage's optimisation budget."""

    epochs: int = 4
    steps_per_epoch: int = 0  # 0: one pass over the stage's training data.
    learning_rate: float = 1e-3
    optimizer: str = "adam"
    weight_decay: float = 0.0
    validation_steps: int = 0  # 0: the whole validation split.
    # 0: no limit. Else the stage stops after this many wall seconds
    # (validation passes included) and its learning rate decays on the
    # elapsed share of them, or of the steps if that is further along:
    # one wall-clock budget for models of different speeds.
    max_seconds: float = 0.0


@dataclasses.dataclass
class StreetStageConfig(StageConfig):
    # "fc": fine-tune the attribute branches only (the paper); "all".
    finetune: str = "fc"
    cross_domain: CrossDomainConfig = dataclasses.field(
        default_factory=CrossDomainConfig
    )


@dataclasses.dataclass
class RuntimeConfig:
    strategy: str = "default"  # default | mirrored | multi_worker | tpu
    mixed_precision: str = ""  # "", "mixed_float16" or "mixed_bfloat16"
    jit_compile: bool = False
    # Steps between mid-epoch backups (resume after a kill); 0: per epoch.
    backup_every_steps: int = 0


@dataclasses.dataclass
class ExperimentConfig:
    name: str = ""
    description: str = ""
    seed: int = 0
    method: str = "mtct"
    schema: str = ""  # "": the shards' schema.json.
    # A stage-0 (pretrain) checkpoint whose trunk initialises the shop stage.
    init_from: str = ""
    # Attribute -> weight of its cross-entropy in every stage and method
    # (default 1 each); e.g. {pattern: 4.0}.
    attribute_weights: dict = dataclasses.field(default_factory=dict)
    # Label smoothing of every softmax head's cross-entropy, every stage.
    label_smoothing: float = 0.0
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    # Stage 0 (python -m mtct_tf.train --stage pretrain).
    pretrain: StageConfig = dataclasses.field(default_factory=StageConfig)
    shop: StageConfig = dataclasses.field(default_factory=StageConfig)
    street: StreetStageConfig = dataclasses.field(
        default_factory=StreetStageConfig
    )
    runtime: RuntimeConfig = dataclasses.field(default_factory=RuntimeConfig)

    def validate(self):
        """Checks values that types alone cannot; raises ``ConfigError``."""
        choices = {
            "method": METHODS,
            "street.cross_domain.kind": CROSS_DOMAIN_KINDS,
            "street.finetune": ("fc", "all"),
            "data.negatives": ("random", "hard"),
            "data.street_labels": ("own", "pair"),
            "data.augment": ("box", "crop"),
            "model.heads": ("branches", "joint"),
            "runtime.strategy": ("default", "mirrored", "multi_worker", "tpu"),
            "runtime.mixed_precision": ("", "mixed_float16", "mixed_bfloat16"),
        }
        for key, allowed in choices.items():
            value = get_value(self, key)
            if value not in allowed:
                raise ConfigError(
                    f"{key} must be one of {allowed}. Received: {value!r}")
        bad = {k: v for k, v in self.attribute_weights.items()
               if isinstance(v, bool) or not isinstance(v, (int, float))
               or v < 0}
        if bad:
            raise ConfigError(
                "attribute_weights must map attribute names to numbers >= 0."
                f" Received: {bad}")
        if self.data.street_labels == "pair" and (
                self.method not in ("ftt", "mtct")
                or self.street.cross_domain.kind != "none"):
            raise ConfigError(
                "data.street_labels=pair (the label-copy oracle) applies to "
                "the street stage of FTT (method ftt, or mtct with "
                "street.cross_domain.kind none). Received: method="
                f"{self.method!r}, street.cross_domain.kind="
                f"{self.street.cross_domain.kind!r}")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError("label_smoothing must be in [0, 1). "
                              f"Received: {self.label_smoothing}")
        if not 0 < self.data.crop_min_area <= 1 or self.data.decode_cache < 0:
            raise ConfigError(
                "data.crop_min_area must be in (0, 1] and data.decode_cache "
                f">= 0. Received: {self.data.crop_min_area}, "
                f"{self.data.decode_cache}")
        if not 0 < self.data.street_label_fraction <= 1:
            raise ConfigError(
                "data.street_label_fraction must be in (0, 1]. Received: "
                f"{self.data.street_label_fraction}"
            )
        # A stage with no epochs or a non-positive learning rate would
        # still finish and save an untrained model as if it were trained.
        two_stage = self.method in ("mtct", "ftt")
        for key in ("shop", "street"):
            stage = getattr(self, key)
            low = 1 if two_stage else 0
            for field, value, minimum in (
                    ("epochs", stage.epochs, low),
                    ("steps_per_epoch", stage.steps_per_epoch, 0),
                    ("validation_steps", stage.validation_steps, 0)):
                if value < minimum:
                    raise ConfigError(
                        f"{key}.{field} must be >= {minimum}"
                        + (f" for method {self.method!r}" if field == "epochs"
                           else "") + f". Received: {value}")
            if stage.max_seconds < 0:
                raise ConfigError(f"{key}.max_seconds must be >= 0. "
                                  f"Received: {stage.max_seconds}")
            if not stage.learning_rate > 0:
                raise ConfigError(f"{key}.learning_rate must be > 0. "
                                  f"Received: {stage.learning_rate}")
        if self.shop.epochs + self.street.epochs < 1:
            raise ConfigError(
                "shop.epochs + street.epochs must be >= 1 (one-stage methods "
                f"train for their sum). Received: {self.shop.epochs} + "
                f"{self.street.epochs}")
        return self

    def to_dict(self):
        return dataclasses.asdict(self)


_REGISTRY = {}


def register(fn):
    """Registers a function returning an ``ExperimentConfig`` by its name."""
    _REGISTRY[fn.__name__] = fn
    return fn


def experiments():
    return sorted(_REGISTRY)


def get_experiment(name):
    if name not in _REGISTRY:
        raise ConfigError(
            f"Unknown experiment {name!r}; registered: {', '.join(experiments())}"
        )
    config = _REGISTRY[name]()
    config.name = name
    config.description = (_REGISTRY[name].__doc__ or "").strip()
    return config


def get_value(config, dotted):
    obj = config
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def _coerce(value, default, key):
    """Checks ``value`` against the type of the field's ``default``."""
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
    elif isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "2e-3" as a string.
            with contextlib.suppress(ValueError):
                return float(value)
    elif isinstance(default, str):
        if value is None:
            return ""
        if isinstance(value, (str, int, float)) and not isinstance(
                value, bool):
            return str(value)
    elif isinstance(default, dict):
        if isinstance(value, dict):
            return value
    raise ConfigError(
        f"{key} expects a {type(default).__name__}. Received: {value!r}"
    )


def apply_dict(config, overrides, prefix=""):
    """Applies a nested dict of overrides in place; unknown keys raise."""
    if not isinstance(overrides, dict):
        raise ConfigError(
            f"{prefix or 'the config'} expects a mapping. Received: "
            f"{overrides!r}"
        )
    fields = {f.name: f for f in dataclasses.fields(config)}
    for key, value in overrides.items():
        dotted = f"{prefix}{key}"
        if key not in fields:
            raise ConfigError(
                f"unknown config key {dotted!r}; known keys here: "
                f"{', '.join(sorted(fields))}"
            )
        current = getattr(config, key)
        if dataclasses.is_dataclass(current):
            apply_dict(current, value, prefix=f"{dotted}.")
        else:
            setattr(config, key, _coerce(value, current, dotted))
    return config


def parse_override(text):
    """``"a.b=c"`` -> ``{"a": {"b": c}}`` with ``c`` parsed as YAML."""
    if "=" not in text:
        raise ConfigError(
            f"an override is key=value, e.g. shop.epochs=2. Received: {text!r}"
        )
    key, raw = text.split("=", 1)
    value = yaml.safe_load(raw) if raw.strip() else ""
    out = value
    for part in reversed(key.strip().split(".")):
        out = {part: out}
    return out


def load_yaml(path):
    with open(path, encoding="utf-8") as f:
        try:
            # safe_load: a config file must never construct Python objects.
            data = yaml.safe_load(f)
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from None
    return data or {}


def build(experiment, config_file=None, overrides=()):
    """Resolves an experiment: registry defaults, YAML file, then overrides."""
    config = get_experiment(experiment)
    if config_file:
        data = load_yaml(config_file)  # Its errors name the file already.
        try:
            apply_dict(config, data)
        except ConfigError as e:
            raise ConfigError(f"{config_file}: {e}") from None
    for text in overrides:
        apply_dict(config, parse_override(text))
    return config.validate()


def save(config, path):
    """Writes the resolved config as YAML (atomically)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fileio.write_text(
        path, yaml.safe_dump(config.to_dict(), sort_keys=False))


def from_dict(data):
    config = ExperimentConfig()
    apply_dict(config, copy.deepcopy(data))
    return config.validate()


def describe(config):
    return json.dumps(config.to_dict(), indent=1)


# === Registered experiments ===

@register
def smoke():
    """A pipeline check in seconds: the small MTN at 64 px, 200 shop and
    100 street steps, every attribute weighted alike. Tests and quick trials
    start from it; it learns little.

    Run: python -m mtct_tf.train --experiment smoke --model_dir runs/smoke \
        --override data.shards_dir=SHARDS
    """
    config = ExperimentConfig()
    config.data.shards_dir = "runs/demo/shards"
    config.shop = StageConfig(epochs=8, steps_per_epoch=25, learning_rate=2e-3)
    config.street = StreetStageConfig(epochs=4, steps_per_epoch=25,
                                      learning_rate=1e-3)
    return config


@register
def demo():
    """make demo: X-Domain-synth in the decisive benchmark's regime.

    Data as ``synthetic.BENCHMARK_DATA`` (3,400 items, 400 with 3 street
    photos each), render seed 0; 10% of the street training items keep
    their labels, every street photo keeps its shop pair. The small MTN
    with the benchmark's pattern weight and shop stage (no faster path to
    shop mAP_cls 80 was found: docs/BENCHMARKS.md, time to accuracy); the
    street stage fine-tunes every layer for 100 steps with the benchmark's
    frozen cross-domain weight 1,400, from detector crops in ``make demo``.

    Run: python -m mtct_tf.train --experiment demo --model_dir runs/demo/mtct
    """
    config = synth_benchmark()
    config.data.shards_dir = "runs/demo/shards"
    config.data.street_label_fraction = 0.1
    config.street.finetune = "all"
    config.street.cross_domain.weight = 1400.0
    return config


@register
def synth_benchmark():
    """The ablation benchmark on X-Domain-synth (python -m mtct_tf.benchmark
    ablation): every method gets this data, model and budget.

    Data: the paper's regime (``synthetic.BENCHMARK_DATA``): 3,400 items, of
    which 400 have 3 street photos each (240 / 80 / 80 street items for
    train / val / test) and the rest only their shop image. Model: the
    ``small`` MTN at 64 px, batch 64. The shop stage (shared by the
    two-stage methods of a seed) is 2,000 steps and reaches shop mAP_cls
    88.9 on validation, 88.4 on test (chance 25.6), every attribute >= 76
    AP; ~400 s on 2 loaded cores. The pattern cross-entropy weighs 4: with
    equal weights the nine heads of the small trunk starve the texture
    attribute, which stays at chance on shop validation after 2,000 steps
    (docs/BENCHMARK_DESIGN_NOTES.md).

    The cross-domain weight 340 is the one at which the t-STE gradient on
    the FC branches equals the CE's at the start of the street stage
    (``python -m mtct_tf.loss_balance``: ratio 0.0029 at weight 1, seed
    0, ``fc``, all street labels). It is the centre of the weight grid
    (``loss_balance.weight_grid``) from which the ablation picks the
    final weight on street validation of seed 0
    (``loss_balance.select_weight``), then freezes it.
    """
    config = ExperimentConfig()
    config.data.shards_dir = "runs/benchmark/shards"
    config.data.batch_size = 64
    config.attribute_weights = {"pattern": 4.0}
    config.shop = StageConfig(epochs=10, steps_per_epoch=200,
                              learning_rate=2e-3)
    # Budgets in steps, not passes, so that they do not move with the data.
    config.street = StreetStageConfig(epochs=4, steps_per_epoch=25,
                                      learning_rate=1e-3)
    config.street.cross_domain.weight = 340.0
    return config


@register
def paper():
    """The paper's setting: NIN MTN at 224 px (X-Domain-style shards).

    Expect a GPU. Pre-train with --stage pretrain first, or set
    model.backbone=resnet50 model.weights=imagenet.
    """
    config = ExperimentConfig()
    config.schema = "xdomain"
    config.data = DataConfig(
        shards_dir="data/xdomain/shards", image_size=224, batch_size=64,
        shuffle_buffer=10000,
    )
    config.model = ModelConfig(preset="paper")
    config.pretrain = StageConfig(epochs=90, learning_rate=0.1,
                                  optimizer="sgd")
    config.shop = StageConfig(epochs=30, learning_rate=1e-3)
    config.street = StreetStageConfig(epochs=20, learning_rate=1e-4)
    return config


def _method(method, kind=None):
    def make():
        config = synth_benchmark()
        config.method = method
        if kind is not None:
            config.street.cross_domain.kind = kind
        return config
    return make


# The baselines of SPEC §5 and the cross-domain loss variants, all on the
# synth_benchmark data, model and budget.
for _name, _method_name, _kind in (
    ("no_adapt", "no_adapt", "none"),
    ("ud", "ud", "none"),
    ("ftt", "ftt", "none"),
    ("end_to_end", "end_to_end", None),
    ("mtct", "mtct", None),
    ("mtct_contrastive", "mtct", "contrastive"),
    ("mtct_triplet", "mtct", "triplet"),
    ("mtct_tste_canonical", "mtct", "tste_canonical"),
):
    _fn = _method(_method_name, _kind)
    _fn.__name__ = _name
    _fn.__doc__ = f"synth_benchmark with method={_method_name}" + (
        f", cross-domain loss {_kind}" if _kind else ""
    )
    register(_fn)


# === Real datasets (docs/DATASETS.md) ===


@register
def real_photos():
    """Whole real photos of garments (a class-per-folder set converted by
    datasets/convert_image_folder.py), one stage from scratch.

    Chosen on the validation split of clothing-dataset-small
    (docs/REAL_PHOTOS.md): MobileNetV3-Small (BatchNorm momentum 0.9) at
    128 px, random resized crops of at least 35% of the photo decoded at
    192 px plus flips, Adam 2e-3 decaying over a wall-clock budget of
    1,140 s (19 min on 2 cores; ``shop.max_seconds``, epochs a mere cap).
    With a network, ``--override model.weights=imagenet`` starts from
    ImageNet weights instead.

    Run: python -m mtct_tf.train --experiment real_photos --model_dir R \
        --override data.shards_dir=SHARDS
    """
    config = ExperimentConfig()
    config.method = "no_adapt"
    config.data.shards_dir = "data/photos/shards"
    config.data.image_size = 128
    config.data.batch_size = 32
    config.data.augment = "crop"
    config.data.crop_min_area = 0.35
    config.data.decode_cache = 192
    config.model.backbone = "mobilenetv3small"
    config.shop = StageConfig(epochs=1000, steps_per_epoch=100,
                              learning_rate=2e-3, max_seconds=1140.0)
    config.street.epochs = 0
    return config


def _real_data(shards_dir, method):
    """The paper's model and budget on converted real-dataset shards.

    The schema comes from the shards (``schema.json`` of the dataset's
    converter). For a CPU trial, override ``model.preset=small
    data.image_size=64``.
    """
    config = paper()
    config.schema = ""
    config.method = method
    config.data.shards_dir = shards_dir
    return config


@register
def deepfashion_c2s():
    """MTCT on DeepFashion Consumer-to-shop: shop photos, then consumer
    photos with t-STE triplets; 303 binary attributes as multilabel heads
    (one per attribute group) beside a softmax ``category``.

    Convert (docs/DATASETS.md), then
    python -m mtct_tf.train --experiment deepfashion_c2s \
        --model_dir runs/deepfashion_c2s
    python -m mtct_tf.evaluate --model_dir runs/deepfashion_c2s \
        --domain street
    The report gives category AP / top-1 and the attributes' top-3 and
    top-5 recall (DeepFashion's metric) per group and over all 303.
    """
    return _real_data("data/deepfashion_c2s/shards", "mtct")


@register
def deepfashion_attributes():
    """DeepFashion Category and Attribute Prediction: one stage (the
    benchmark has no domains; every image is "shop"), softmax ``category``
    (50) and five multilabel heads (texture, fabric, shape, part, style).

    python -m mtct_tf.train --experiment deepfashion_attributes \
        --model_dir runs/deepfashion_attributes
    python -m mtct_tf.evaluate --model_dir runs/deepfashion_attributes \
        --domain shop
    Reports category top-3 / top-5 accuracy and attribute top-3 / top-5
    recall as in DeepFashion's Table 2.
    """
    config = _real_data("data/deepfashion_attributes/shards", "no_adapt")
    # One stage of shop.epochs: no street stage to add to the budget.
    config.street.epochs = 0
    return config


@register
def deepfashion2():
    """MTCT on DeepFashion2 garments: shop photos, then user photos paired by
    (pair_id, style); one softmax head, the 13 categories.

    python -m mtct_tf.train --experiment deepfashion2 \
        --model_dir runs/deepfashion2
    python -m mtct_tf.evaluate --model_dir runs/deepfashion2 --domain street
    """
    return _real_data("data/deepfashion2/shards", "mtct")
