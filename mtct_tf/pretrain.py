"""Stage 0: pre-training the MTN trunk on a TFDS image-classification dataset.

The paper pre-trains its network on ImageNet before the shop stage (SPEC §2).
The NIN trunk has no published weights, so ``run`` trains it here: the MTN's
trunk (built from the experiment config exactly as the shop stage builds it)
under a temporary ``Dense(num_classes)`` softmax head, on any TFDS dataset
whose examples are an image and a class label (``imagenet2012`` from its
manual download, or ``imagenette``, ``food101``, ... for users with
internet). The shop stage then starts from the trunk with ``init_from``
(``restore_trunk``); the classification head is dropped.

``run`` writes to ``<model_dir>/pretrain/``:

    trunk.weights.h5   the trunk's weights by layer name (final; what
                       ``init_from`` points to)
    best.weights.h5    best-on-validation classifier weights (trunk and head)
    backup/            Keras BackupAndRestore state (resume after a kill)
    logs/ history.csv  TensorBoard and per-epoch metrics
    config.yaml        the resolved experiment config
    done.json          written last: the stage finished (a rerun skips it)

Images go through the same preprocessing as every other stage
(``pipeline.preprocess``: decode, crop_and_resize of the whole image to
``data.image_size``, training augmentation) and stay float32 in [0, 255]: the
MTN normalises inside itself.

``trunk.weights.h5`` is our own small HDF5 layout rather than Keras'
``save_weights`` file, because Keras restores a weights file only into a
model of the same structure, and the shop stage's heads differ from the
classifier's. Layout: root attribute ``format`` (``FORMAT``), ``layer_keys``
(JSON list) and ``metadata`` (JSON); one group per trunk layer key, holding
datasets ``"0"``, ``"1"``, ... in ``layer.weights`` order with attribute
``weight_names``. A layer key is the layer's name, prefixed by its parents'
names for the layers of a nested ``keras.applications`` backbone
(``backbone/conv1_conv``).
"""

import dataclasses
import json
import math
import os

import h5py
import keras
import numpy as np
import tensorflow as tf

from mtct_tf import fileio
from mtct_tf.data import pipeline

STAGE = "pretrain"
TRUNK_FILE = "trunk.weights.h5"
FORMAT = "mtct_tf.trunk.v1"
# The MTN needs at least one attribute; its branch is never used here.
PLACEHOLDER_SCHEMA = {"pretrain_unused": 2}
_WHOLE_IMAGE = (0.0, 0.0, 1.0, 1.0)
# Held-out splits looked for, in order, when ``val_split`` is not given.
_VAL_SPLITS = ("validation", "val", "test")
# Without any of them, this percentage of the training split is held out.
_HOLDOUT_PERCENT = 2


# --------------------------------------------------------------------------
# Trunk weights by layer name.


def trunk_variables(net):
    """The trunk's variables, by layer key.

    Args:
        net: an ``MTN``.

    Returns:
        Dict layer key -> list of the layer's variables (``layer.weights``
        order). Nested models (``keras.applications`` backbones) are walked:
        their layers get keys ``"<model name>/<layer name>"``.
    """
    out = {}

    def walk(layer, prefix):
        if isinstance(layer, keras.Model):
            for sub in layer.layers:
                if sub.weights:
                    walk(sub, f"{prefix}{layer.name}/")
        else:
            out[f"{prefix}{layer.name}"] = list(layer.weights)

    for layer in net.trunk_layers():
        walk(layer, "")
    return out


def save_trunk(net, path, metadata=None):
    """Writes the trunk's weights by layer name (atomically).

    Args:
        net: an ``MTN``.
        path: the ``.h5`` file to write.
        metadata: JSON-serialisable dict stored with the weights.
    """
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    variables = trunk_variables(net)
    with fileio.replacing(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs["format"] = FORMAT
        f.attrs["layer_keys"] = json.dumps(list(variables))
        f.attrs["metadata"] = json.dumps(metadata or {})
        for key, weights in variables.items():
            group = f.create_group(key)
            group.attrs["weight_names"] = json.dumps(
                [w.name for w in weights])
            for i, w in enumerate(weights):
                group.create_dataset(str(i), data=keras.ops.convert_to_numpy(w))


def load_trunk(path):
    """Reads a file written by ``save_trunk``.

    Args:
        path: a ``trunk.weights.h5`` file, or a directory holding one (a
            stage-0 output directory ``<model_dir>/pretrain``, or
            ``<model_dir>`` itself).

    Returns:
        ``(weights, metadata)``: dict layer key -> list of
        ``(weight name, array)``, and the stored metadata dict.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not in this module's format.
    """
    path = resolve_path(path)
    with h5py.File(path, "r") as f:
        if f.attrs.get("format") != FORMAT:
            raise ValueError(
                f"{path} is not a trunk file written by mtct_tf.pretrain "
                f"(format attribute {f.attrs.get('format')!r}, expected "
                f"{FORMAT!r}); init_from expects <model_dir>/pretrain/"
                f"{TRUNK_FILE}"
            )
        weights = {}
        for key in json.loads(f.attrs["layer_keys"]):
            group = f[key]
            names = json.loads(group.attrs["weight_names"])
            weights[key] = [(name, group[str(i)][()])
                            for i, name in enumerate(names)]
        metadata = json.loads(f.attrs["metadata"])
    return weights, metadata


def resolve_path(path):
    """``path``, or the trunk file inside the directory ``path``."""
    path = os.path.expanduser(os.fspath(path))
    if os.path.isdir(path):
        for candidate in (os.path.join(path, TRUNK_FILE),
                          os.path.join(path, STAGE, TRUNK_FILE)):
            if os.path.isfile(candidate):
                return candidate
        raise FileNotFoundError(
            f"{path} is a directory without {TRUNK_FILE} (nor "
            f"{STAGE}/{TRUNK_FILE}): run --stage pretrain first"
        )
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{path} does not exist: init_from expects the "
            f"<model_dir>/{STAGE}/{TRUNK_FILE} written by --stage pretrain"
        )
    return path


def _shapes(items):
    return [tuple(np.shape(x)) for x in items]


def restore_trunk(net, path, *, strict=True, verbose=True):
    """Initialises ``net``'s trunk from a stage-0 file, by layer name.

    Every trunk layer of ``net`` (``trunk_variables``) is looked up by its
    key in the file; its weights are restored when their number and shapes
    match. The attribute branches are not touched (they stay as built:
    fresh). Nothing is assigned unless the checks pass, so a failed restore
    leaves ``net`` as it was.

    A report is always printed: how many layers were restored, and every
    layer that is missing from the file, mismatched in shape, or in the
    file but not in ``net`` (unexpected: ignored).

    Args:
        net: an ``MTN``.
        path: a ``trunk.weights.h5`` or a directory holding one.
        strict: raise if any trunk layer is missing or mismatched. With
            ``strict=False`` those layers keep their initial weights (the
            report lists them).
        verbose: print the report.

    Returns:
        Dict with ``"path"``, ``"restored"`` (layer keys), ``"missing"``
        (trunk layers absent from the file), ``"mismatched"`` (dict key ->
        ``{"expected": shapes, "found": shapes}``) and ``"unexpected"``
        (file layers that ``net`` does not have).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: no trunk weight matched (whatever ``strict``), or
            ``strict`` and a trunk layer is missing or mismatched; the
            message names the layers.
    """
    path = resolve_path(path)
    saved, metadata = load_trunk(path)
    target = trunk_variables(net)
    restored, missing, mismatched = [], [], {}
    for key, variables in target.items():
        if key not in saved:
            missing.append(key)
            continue
        expected = _shapes(variables)
        found = _shapes([value for _, value in saved[key]])
        if expected != found:
            mismatched[key] = {"expected": expected, "found": found}
            continue
        restored.append(key)
    unexpected = [key for key in saved if key not in target]
    report = {"path": path, "restored": restored, "missing": missing,
              "mismatched": mismatched, "unexpected": unexpected}
    text = _format_report(report, metadata, len(target))
    if verbose:
        print(text)
    if not restored:
        raise ValueError(
            f"No trunk weight of {path} matched the model (backbone "
            f"{getattr(net, 'backbone', '?')!r}, width "
            f"{getattr(net, 'width', '?')}): the file was written by "
            f"{metadata.get('model', 'an unknown model')}. Pre-train with "
            f"the same model.* settings.\n{text}"
        )
    if strict and (missing or mismatched):
        raise ValueError(
            f"Trunk layers could not be restored from {path}: missing "
            f"{missing}, mismatched in shape {sorted(mismatched)}. Pre-train "
            "with the same model.* settings, or pass strict=False to keep "
            f"those layers' initial weights.\n{text}"
        )
    for key in restored:
        for variable, (_, value) in zip(target[key], saved[key]):
            variable.assign(value)
    return report


def _format_report(report, metadata, total):
    lines = [
        f"[restore_trunk] {report['path']}: restored {len(report['restored'])}"
        f" of {total} trunk layers (source: "
        f"{metadata.get('tfds_name', 'unknown')}, "
        f"{metadata.get('model', {})}); attribute branches left fresh"
    ]
    if report["missing"]:
        lines.append(f"  MISSING from the file ({len(report['missing'])}): "
                     + ", ".join(report["missing"]))
    for key, shapes in report["mismatched"].items():
        lines.append(f"  SHAPE MISMATCH {key}: model {shapes['expected']}, "
                     f"file {shapes['found']}")
    if report["unexpected"]:
        lines.append(f"  UNEXPECTED in the file, ignored "
                     f"({len(report['unexpected'])}): "
                     + ", ".join(report["unexpected"]))
    return "\n".join(lines)


# --------------------------------------------------------------------------
# Data.


def get_builder(tfds_name, *, data_dir=None, manual_dir=None, prepare=True):
    """The TFDS builder of ``tfds_name``, prepared (downloaded) if needed.

    Args:
        tfds_name: a TFDS name, e.g. ``"imagenet2012"``, ``"imagenette"``
            or ``"food101:2.0.0"``.
        data_dir: TFDS data directory (default ``~/tensorflow_datasets``).
        manual_dir: where a manual-download dataset's files are
            (``imagenet2012``: ``ILSVRC2012_img_train.tar`` and
            ``ILSVRC2012_img_val.tar``).
        prepare: call ``download_and_prepare`` (a no-op once prepared).
            Files are written as TFRecord: ``tf.data`` cannot read TFDS'
            ArrayRecord output.
    """
    import tensorflow_datasets as tfds

    builder = tfds.builder(tfds_name, data_dir=data_dir)
    if prepare:
        download_config = None
        if manual_dir:
            download_config = tfds.download.DownloadConfig(
                manual_dir=os.path.expanduser(manual_dir))
        try:
            builder.download_and_prepare(download_config=download_config,
                                         file_format="tfrecord")
        except AssertionError as e:
            # TFDS asserts on a missing manual download; its message lists
            # the files to place. Surface it as the missing-file error it is.
            if "anual" not in str(e):
                raise
            raise FileNotFoundError(
                f"{tfds_name} needs a manual download (--manual_dir): {e}"
            ) from None
    return builder


def dataset_keys(builder):
    """``(image key, label key, number of classes)`` of a TFDS builder.

    Raises:
        ValueError: the dataset is not image classification (no image
            feature with a ``ClassLabel``).
    """
    import tensorflow_datasets as tfds

    features = builder.info.features
    keys = builder.info.supervised_keys
    image_key, label_key = "image", "label"
    if keys and len(keys) == 2 and all(isinstance(k, str) for k in keys):
        image_key, label_key = keys
    if not (image_key in features and label_key in features
            and isinstance(features[image_key], tfds.features.Image)
            and isinstance(features[label_key], tfds.features.ClassLabel)):
        raise ValueError(
            f"{builder.name} is not an image-classification dataset: stage 0 "
            "needs an Image feature and a ClassLabel (its supervised_keys, "
            f"or 'image' and 'label'). Features: {features}"
        )
    return image_key, label_key, features[label_key].num_classes


def resolve_splits(builder, split="train", val_split=None):
    """``(training split, validation split)``.

    Without ``val_split``, the first of "validation", "val", "test" that the
    dataset has; failing that, the first ``_HOLDOUT_PERCENT``% of ``split``
    is held out (and removed from training).
    """
    if val_split:
        return split, val_split
    splits = builder.info.splits
    for name in _VAL_SPLITS:
        if name in splits and name != split:
            return split, name
    if splits and "[" not in split:
        p = _HOLDOUT_PERCENT
        print(f"[pretrain] {builder.name} has no validation split: holding "
              f"out {split}[:{p}%]")
        return f"{split}[{p}%:]", f"{split}[:{p}%]"
    raise ValueError(
        f"Cannot choose a validation split of {builder.name} (splits known: "
        f"{sorted(splits) or 'none'}); pass val_split"
    )


def num_examples(builder, split):
    """Examples in a split (sub-splits like "train[2%:]" too); 0 if unknown."""
    try:
        return int(builder.info.splits[split].num_examples)
    except (KeyError, ValueError):
        return 0


def make_dataset(builder, split, *, image_size, batch_size, training,
                 seed=None, shuffle_buffer=2048, image_key="image",
                 label_key="label"):
    """``(images, labels)`` batches of a TFDS split, preprocessed.

    Images are read still encoded and go through ``pipeline.preprocess``
    with the whole image as the box and no margin, so stage 0 sees the same
    crop, resize and augmentation as the other stages.

    Returns:
        A ``tf.data.Dataset`` of float32 [B, S, S, 3] images in [0, 255] and
        int32 [B] labels; training data is shuffled and repeated forever,
        with full batches only.
    """
    import tensorflow_datasets as tfds

    deterministic = (not training) or seed is not None
    read_config = tfds.ReadConfig(shuffle_seed=seed)
    ds = builder.as_dataset(
        split=split, shuffle_files=training, read_config=read_config,
        decoders={image_key: tfds.decode.SkipDecoding()},
    )
    if training:
        if shuffle_buffer > 1:
            ds = ds.shuffle(shuffle_buffer, seed=seed,
                            reshuffle_each_iteration=True)
        ds = ds.repeat()
        # One stateless seed pair per element, as in pipeline.make_dataset.
        seeds = tf.data.Dataset.random(seed=seed).batch(2)
        ds = tf.data.Dataset.zip((ds, seeds))

    box = tf.constant(_WHOLE_IMAGE)

    def to_example(example, element_seed=None):
        image = pipeline.preprocess(
            example[image_key], box, image_size=image_size,
            training=training, margin=0.0, seed=element_seed)
        return image, tf.cast(example[label_key], tf.int32)

    ds = ds.map(to_example, num_parallel_calls=tf.data.AUTOTUNE,
                deterministic=deterministic)
    ds = ds.batch(batch_size, drop_remainder=training,
                  num_parallel_calls=tf.data.AUTOTUNE,
                  deterministic=deterministic)
    return ds.prefetch(tf.data.AUTOTUNE)


# --------------------------------------------------------------------------
# The stage's inputs and model (trained by ``training.train_stage``).


@dataclasses.dataclass
class TfdsSource:
    """Stage 0's dataset: a TFDS name and where to find it.

    Attributes:
        name: TFDS dataset name (``imagenet2012``, ``imagenette``, ...).
        data_dir: TFDS data directory.
        manual_dir: TFDS manual download directory (``imagenet2012``).
        split: training split.
        val_split: validation split (see ``resolve_splits``).
    """

    name: str = ""
    data_dir: str = None
    manual_dir: str = None
    split: str = "train"
    val_split: str = None


def build_inputs(config, source):
    """Stage 0's datasets from ``config.data`` and ``config.pretrain``.

    Returns:
        ``(train, val, steps per epoch, info)``: steps per epoch is
        ``pretrain.steps_per_epoch`` or one pass over the training split (0
        when its size is unknown); ``info`` names the dataset, its splits
        and its number of classes.

    Raises:
        ValueError: a dataset that is not image classification.
    """
    d = config.data
    builder = get_builder(source.name, data_dir=source.data_dir,
                          manual_dir=source.manual_dir)
    image_key, label_key, num_classes = dataset_keys(builder)
    train_split, val_split = resolve_splits(builder, source.split,
                                            source.val_split)
    spe = config.pretrain.steps_per_epoch or math.ceil(
        num_examples(builder, train_split) / d.batch_size)
    common = dict(image_size=d.image_size, batch_size=d.batch_size,
                  seed=config.seed, image_key=image_key, label_key=label_key)
    train = make_dataset(builder, train_split, training=True,
                         shuffle_buffer=d.shuffle_buffer, **common)
    val = make_dataset(builder, val_split, training=False, **common)
    info = {"tfds_name": source.name, "split": train_split,
            "val_split": val_split, "num_classes": num_classes}
    return train, val, spe, info


def build_classifier(net, num_classes):
    """The trunk of ``net`` under a ``Dense(num_classes)`` softmax head.

    The classifier shares the trunk's layers (and variables) with ``net``.
    The trunk output is the input of the branches' first FC layer: the
    ``trunk_pool`` layer's output for the NIN trunk, the ``backbone``
    model's output in ``net``'s graph for ``keras.applications`` trunks
    (a nested model's own ``.output`` belongs to its inner graph).
    """
    first = net.attribute_names[0]
    features = net.get_layer(f"{first}_fc1").input
    logits = keras.layers.Dense(num_classes, name="pretrain_logits")(features)
    # float32 softmax keeps probabilities exact under mixed precision.
    probs = keras.layers.Activation("softmax", dtype="float32",
                                    name="pretrain_probs")(logits)
    return keras.Model(net.input, probs, name="pretrain_classifier")


def model_metadata(config, net):
    """What built the trunk, stored with it (``restore_trunk`` reports it)."""
    return {"backbone": net.backbone, "preset": config.model.preset,
            "width": net.width, "image_size": net.image_size}
