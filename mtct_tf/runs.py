"""The run directory: where a training run's outputs live, and loading them.

A run (``python -m mtct_tf.train --model_dir D``) writes::

    D/config.yaml              the resolved experiment config
    D/<stage>/                 one directory per stage (``stage_dir``)
        model.keras            the MTN with the best validation weights
        schema.json            the attribute schema it was trained with
        best.weights.h5 (.json)  best-on-validation weights (and value)
        backup/                resume state after a kill, removed once
                               done.json is written
        logs/  history.csv     TensorBoard and per-epoch metrics
        done.json              written last: the stage finished
    D/pretrain/                stage 0: trunk.weights.h5 instead of
                               model.keras, and its own config.yaml
    D/eval/                    ``mtct_tf.evaluate`` reports

Every reader of that layout goes through this module: ``load_mtn``, the one
schema check ``check_schema`` and ``load_model_and_schema`` (what export,
predict and evaluate load).
"""

import json
import os
import zipfile

import keras

from mtct_tf import attributes as attributes_lib
from mtct_tf import configs as configs_lib
from mtct_tf import model as model_lib
from mtct_tf import stages as stages_lib
from mtct_tf.data import features, shards

CONFIG_FILE = "config.yaml"
MODEL_FILE = "model.keras"
# Beside each stage's model, and in exports and shard directories: the
# attribute schema (value names).
SCHEMA_FILE = features.SCHEMA_FILE
DONE_FILE = "done.json"
BEST_WEIGHTS = "best.weights.h5"
BACKUP_DIR = "backup"
HISTORY_FILE = "history.csv"
LOGS_DIR = "logs"


def stage_dir(model_dir, stage):
    """``<model_dir>/<stage>``."""
    return os.path.join(model_dir, stage)


def done_path(model_dir, stage):
    return os.path.join(stage_dir(model_dir, stage), DONE_FILE)


def is_done(model_dir, stage):
    """Whether ``stage`` of the run finished (its ``done.json`` exists)."""
    return os.path.exists(done_path(model_dir, stage))


def read_done(model_dir, stage):
    """The ``done.json`` content of a finished stage."""
    with open(done_path(model_dir, stage)) as f:
        return json.load(f)


def load_config(run_dir):
    """The ``ExperimentConfig`` saved in a run directory.

    Raises:
        FileNotFoundError: no ``config.yaml`` in ``run_dir``.
    """
    path = os.path.join(run_dir, CONFIG_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"{path} not found: is {run_dir} a training run directory?")
    return configs_lib.from_dict(configs_lib.load_yaml(path))


def data_schema(config):
    """The schema of the config's data: ``config.schema`` or the shards'."""
    if config.schema:
        return attributes_lib.get_schema(config.schema)
    return shards.load_schema(config.data.shards_dir)


def trained_schema(folder):
    """The schema saved beside a model in ``folder``, or ``None``."""
    path = os.path.join(folder, SCHEMA_FILE)
    if not os.path.isfile(path):
        return None
    return attributes_lib.AttributeSchema.load(path)


def check_schema(net, schema, where="", trained=None):
    """Raises ``ValueError`` unless ``schema`` is the model's schema.

    Training, evaluation, export and predict all check with this function.
    When the schema the model was trained with is known (``trained``, saved
    beside every model that training or export writes), the value names of
    every attribute must match, in order: heads of the same sizes whose
    values mean other things would give silently wrong labels. Without it
    only the heads (names, sizes) can be compared.

    Args:
        net: the model (an ``MTN``).
        schema: the ``AttributeSchema`` about to be used with it.
        where: where ``schema`` comes from, as a phrase for the message
            (``"of runs/x/shards"``).
        trained: the schema the model was trained with, when known.

    Raises:
        ValueError: the schemas differ; the message names the first
            attribute whose values differ.
    """
    if trained is not None:
        ok = (trained.attributes == schema.attributes
              and tuple(net.num_values.items())
              == tuple(trained.num_values.items()))
        model_side = f"schema {trained.name!r} {trained.num_values}"
    else:
        ok = tuple(net.num_values.items()) == tuple(schema.num_values.items())
        model_side = f"attributes {net.num_values}"
    if ok:
        return
    detail = ""
    if trained is not None:
        for a in trained:
            if a.name in schema and schema[a.name].values != a.values:
                detail = (f" (attribute {a.name!r}: values {a.values} in the "
                          f"model, {schema[a.name].values} in the data)")
                break
    where = f" {where}" if where else ""
    raise ValueError(
        f"the model was trained with {model_side}, but the schema "
        f"{schema.name!r}{where} has {schema.num_values}{detail}: it does "
        "not match the model. Use the schema the model was trained with, or "
        "train again"
    )


def load_keras(path):
    """Loads a ``.keras`` MTN in safe mode, without compiling.

    Safe mode refuses what would run code stored in the file (a ``Lambda``
    layer's Python bytecode, say) before running any of it.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: naming ``path``: not a readable ``.keras`` file, one
            that only unsafe loading could read, or a model that is not an
            ``MTN``.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such model file")
    try:
        net = keras.saving.load_model(path, safe_mode=True, compile=False)
    except (ValueError, TypeError, KeyError, OSError,
            zipfile.BadZipFile) as e:
        raise ValueError(
            f"{path}: cannot load it as a Keras model in safe mode "
            f"({type(e).__name__}: {e})") from None
    if not isinstance(net, model_lib.MTN):
        raise ValueError(
            f"{path}: holds a {type(net).__name__}, not an mtct_tf MTN; "
            "expected a model.keras written by training or export")
    return net


def load_mtn(path):
    """Loads a stage's saved MTN (``load_keras``).

    Raises:
        FileNotFoundError: no file at ``path``, naming the stage to train.
        ValueError: see ``load_keras``.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"{path} does not exist: train the stage that writes it first"
        )
    return load_keras(path)


def load_stage(model_dir, stage, schema, where=""):
    """A stage's MTN, checked against ``schema``.

    Raises:
        FileNotFoundError: the stage has no model.
        ValueError: ``schema`` is not the one the stage was trained with.
    """
    folder = stage_dir(model_dir, stage)
    net = load_mtn(os.path.join(folder, MODEL_FILE))
    check_schema(net, schema, where, trained_schema(folder))
    return net


def load_model_and_schema(model, *, schema=None, stage=None):
    """Loads an MTN, its schema and its training crop margin.

    Args:
        model: a training run directory (``config.yaml`` + ``<stage>/
            model.keras``; the method's last stage unless ``stage``) or a
            ``.keras`` file.
        schema: a schema name or JSON path; default: ``schema.json``
            beside the ``.keras`` file (training saves the schema the stage
            was trained with there), else the schema of the run it sits in
            (``<run>/<stage>/model.keras``). A given schema must match the
            one beside the model, value names included.
        stage: the stage of a run directory.

    Returns:
        ``(net, schema, margin)``: ``margin`` is the run's
        ``data.margin`` (``None`` when the model is not in a run).

    Raises:
        FileNotFoundError: nothing loadable at ``model``.
        ValueError: no schema found, or one that does not match the model.
    """
    model = os.fspath(model)
    run_dir = None
    if os.path.isdir(model) and os.path.isfile(
            os.path.join(model, CONFIG_FILE)):
        run_dir = model
    elif model.endswith(".keras") and os.path.isfile(model):
        parent = os.path.dirname(os.path.dirname(os.path.abspath(model)))
        if os.path.isfile(os.path.join(parent, CONFIG_FILE)):
            run_dir = parent
    elif not os.path.exists(model):
        raise FileNotFoundError(f"{model}: no such file or directory")
    else:
        raise FileNotFoundError(
            f"{model}: expected a training run directory (with config.yaml) "
            "or a .keras file")
    config = load_config(run_dir) if run_dir is not None else None
    if model.endswith(".keras"):
        path = model
    else:
        stage = stage or stages_lib.final_stage(config.method)
        path = os.path.join(stage_dir(run_dir, stage), MODEL_FILE)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"{path} does not exist: train stage {stage!r} of {run_dir} "
                "first")
    net = load_keras(path)
    trained = trained_schema(os.path.dirname(path))
    where = ""
    if schema is not None:
        where = f"given for {path}"
        schema = attributes_lib.get_schema(schema)
    elif trained is not None:
        schema = trained
    elif config is not None:
        schema = data_schema(config)
        where = f"of the run's data ({config.data.shards_dir})"
    else:
        raise ValueError(
            f"{model}: no schema.json beside it and not inside a training "
            "run; pass the schema (a built-in name or a JSON file)")
    check_schema(net, schema, where, trained)
    margin = config.data.margin if config is not None else None
    return net, schema, margin
