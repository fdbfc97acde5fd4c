"""The decisive benchmark's arms and their runs (docs/PROTOCOL.md).

An arm is one trained and evaluated configuration (``Arm``: a named
experiment, label fraction and overrides); ``run_arm`` trains it on one
seed (reusing the seed's shop stage and any finished run: its run directory
is its cache) and evaluates it, ``timed_run`` records what the first run
cost, and ``select_cross_weight`` is the protocol's weight choice on street
validation. The benchmark's data (``prepare_data``) are rendered and
converted once per work directory. The labels arms are reported under
(``"FTT fc 0.1"``, ``"Oracle all"``, ...) are built here and in
``ablation.run``; the statistics, the report and the plots read them.

TensorFlow is imported inside the functions: the ``python -m
mtct_tf.benchmark`` parser imports this module and stays instant.
"""

import json
import os
import shutil
import time

from mtct_tf import fileio

FRACTIONS = (0.1, 0.25, 1.0)
MODES = ("fc", "all")
LOSSES = {
    "contrastive": "mtct_contrastive",
    "triplet": "mtct_triplet",
    "t-STE canonical": "mtct_tste_canonical",
}
CONTROLS = {"UD": "ud", "End-to-end": "end_to_end"}
# End-to-end trains 2,100 triplet steps (~4 shop stages of compute): it
# does not fit the 60-minute budget beside the rest (docs/PROTOCOL.md).
DEFAULT_CONTROLS = ("ud",)
COLUMNS = ("mAP_cls", "mP_ins", "mR_ins")
# docs/BENCHMARK_DESIGN_NOTES.md §3: 1 / (|grad cross| / |grad CE|) on the
# FC branches at the start of the street stage (fc, 100%, seed 0).
BALANCING_WEIGHT = 343.0
# The paper's second table (every method at 100% street labels): display
# name -> the label of its arm.
PAPER_ROWS = {"No-Adapt": "No-Adapt", "UD": "UD", "FTT (fc)": "FTT fc 1",
              "End-to-end": "End-to-end", "MTCT (fc)": "MTCT fc 1",
              "FTT (all)": "FTT all 1", "MTCT (all)": "MTCT all 1",
              "Label-copy oracle (fc)": "Oracle fc",
              "Label-copy oracle (all)": "Oracle all"}

DATA_ITEMS = 3400  # synthetic.BENCHMARK_DATA["items"]
DATA_SEED = 2017  # synthetic.BENCHMARK_DATA["seed"]; --render_seed
INVOCATIONS = "invocations.jsonl"


def prepare_data(workdir, items=DATA_ITEMS, render_seed=DATA_SEED):
    """Renders and converts the benchmark data once; returns the shards dir.

    The data are ``synthetic.BENCHMARK_DATA`` (the paper's regime) with
    ``items`` (the share of items with street photos is kept) and
    ``render_seed``. The settings are recorded in
    ``<workdir>/render.json``; a workdir rendered with other settings is
    refused, because its finished runs would be reused as if they were
    runs on these data.

    Raises:
        ValueError: ``workdir`` holds data rendered with other settings.
    """
    from mtct_tf.data import convert, synthetic
    from mtct_tf.data import shards as shards_lib

    full = synthetic.BENCHMARK_DATA
    # Fewer items (quick runs) keep the share of items with street photos.
    street_items = min(items, max(1, round(
        full["street_items"] * items / full["items"])))
    settings = dict(full, items=items, street_items=street_items,
                    seed=render_seed)
    record = os.path.join(workdir, "render.json")
    if os.path.exists(record):
        with open(record) as f:
            previous = json.load(f)
        if previous != settings:
            raise ValueError(
                f"{workdir} holds runs on data rendered with {previous}; "
                f"these settings are {settings}. Use another --workdir.")
    os.makedirs(workdir, exist_ok=True)
    fileio.write_json(record, settings)
    data = os.path.join(workdir, "data")
    shards = os.path.join(workdir, "shards")
    if not os.path.exists(os.path.join(shards, shards_lib.SUMMARY_FILE)):
        if not os.path.exists(os.path.join(data, "manifest.jsonl")):
            synthetic.render_dataset(data, progress=False, **settings)
        convert.convert_manifest(os.path.join(data, "manifest.jsonl"), shards)
    return shards


def fraction_name(fraction):
    """``0.1`` -> ``"10%"``."""
    return f"{100 * float(fraction):g}%"


class Arm:
    """One trained and evaluated configuration (per seed).

    ``key`` names its run directory (and so its cache): two arms with the
    same key are the same run.
    """

    def __init__(self, key, experiment, fraction=1.0, overrides=(),
                 shop_key="_shop", shop_overrides=()):
        self.key, self.experiment = key, experiment
        self.fraction, self.overrides = fraction, tuple(overrides)
        # The cached shop stage it starts from (two-stage methods and
        # No-Adapt), trained once per seed with these overrides: arms of
        # another model (JAN) have their own.
        self.shop_key, self.shop_overrides = shop_key, tuple(shop_overrides)


def no_adapt():
    """The shop model on street photos (no street training)."""
    return Arm("no_adapt", "no_adapt")


def street_arm(method, mode, fraction, weight=None):
    """FTT or MTCT fine-tuned in ``mode`` with ``fraction`` of the labels."""
    overrides = [f"street.finetune={mode}"]
    key = f"{method}_{mode}_{fraction:g}"
    if method != "ftt":
        overrides.append(f"street.cross_domain.weight={weight:g}")
        key += f"_w{weight:g}"
    return Arm(key, method, fraction, overrides)


def oracle_arm(mode):
    """FTT on every street training photo, labelled with its shop pair's
    labels (the label-copy oracle), fine-tuned in ``mode``."""
    return Arm(f"oracle_{mode}", "ftt", 1.0,
               [f"street.finetune={mode}", "data.street_labels=pair"])


def loss_arm(experiment, weight):
    """MTCT with another cross-domain loss (``experiment``), ``fc``, 100%."""
    return Arm(f"{experiment}_fc_1_w{weight:g}", experiment, 1.0,
               ["street.finetune=fc", f"street.cross_domain.weight={weight:g}"])


def control_arm(experiment, weight, fraction=1.0):
    """A one-stage control (``ud``, ``end_to_end``) with ``fraction`` of the
    labels; end-to-end uses the cross-domain ``weight``. UD at 100% keeps
    the key of its earlier cached runs."""
    overrides = []
    if experiment == "end_to_end":
        overrides.append(f"street.cross_domain.weight={weight:g}")
    key = (f"{experiment}_{fraction:g}_w{weight:g}" if overrides
           else experiment if fraction == 1 else f"{experiment}_{fraction:g}")
    return Arm(key, experiment, fraction, overrides)


def control_label(name, fraction):
    """The report's label of a control: ``"UD"`` (100%), ``"UD 0.1"``."""
    return name if fraction == 1 else f"{name} {fraction:g}"


def parse_controls(text, default_seeds):
    """``"ud:3:0.1/1,end_to_end"`` -> ``{"ud": (3, (0.1, 1.0)),
    "end_to_end": (default_seeds, (1.0,))}``: each one-stage control with
    its number of seeds and its label fractions."""
    out = {}
    for entry in filter(None, text.split(",")):
        parts = entry.split(":")
        name = parts[0]
        if name not in CONTROLS.values() or len(parts) > 3:
            raise ValueError(
                f"--controls {entry!r}: expected NAME[:SEEDS[:F1/F2...]] "
                f"with NAME one of {sorted(CONTROLS.values())}")
        seeds = int(parts[1]) if len(parts) > 1 else default_seeds
        fractions = (tuple(sorted(float(f) for f in parts[2].split("/")))
                     if len(parts) > 2 else (1.0,))
        out[name] = (seeds, fractions)
    return out


def render_settings(workdir):
    """The settings ``prepare_data`` rendered ``workdir``'s data with."""
    with open(os.path.join(workdir, "render.json")) as f:
        return json.load(f)


def config_of(experiment, shards, seed, fraction, overrides):
    """The config of an experiment on the benchmark's data."""
    from mtct_tf import configs

    return configs.build(experiment, None, [
        f"data.shards_dir={shards}", f"seed={seed}",
        f"data.street_label_fraction={fraction}", *overrides])


def _keep(result):
    """The parts of an evaluation the report uses."""
    out = {k: result[k] for k in (*COLUMNS, "ap", "chance_mAP_cls",
                                  "num_images")}
    for key in ("retrieval", "retrieval_shop_gallery"):
        if result.get(key):
            out[key] = result[key]["topk_accuracy"]
    return out


def run_arm(arm, shards, seed, base, overrides, split="test",
            domain="street", callbacks=()):
    """Trains (reusing the seed's shop stage) and evaluates one arm.

    ``callbacks`` (Keras callbacks) run in every stage it trains, the
    shared shop stage included when this arm trains it.
    """
    import keras

    from mtct_tf import evaluation, runs, training
    from mtct_tf import stages as stages_lib

    run_dir = os.path.join(base, arm.key)
    config = config_of(arm.experiment, shards, seed, arm.fraction,
                       [*overrides, *arm.overrides])
    stage = stages_lib.final_stage(config.method)
    result_path = os.path.join(run_dir, "eval",
                               f"{stage}_{domain}_{split}.json")
    if os.path.exists(result_path):
        with open(result_path) as f:
            return _keep(json.load(f))
    plan = stages_lib.METHODS[config.method]
    os.makedirs(run_dir, exist_ok=True)
    if plan[0] == "shop":
        # No-Adapt, FTT, MTCT, the oracle and the loss variants of a seed
        # start from the same shop stage, trained once.
        shop_cache = os.path.join(base, arm.shop_key)
        if not runs.is_done(shop_cache, "shop"):
            keras.backend.clear_session()
            training.run(config_of("ftt", shards, seed, 1.0,
                                   [*overrides, *arm.shop_overrides]),
                         shop_cache, "shop", verbose=0, callbacks=callbacks)
        target = runs.stage_dir(run_dir, "shop")
        if not os.path.exists(target):
            shutil.copytree(runs.stage_dir(shop_cache, "shop"), target,
                            ignore=shutil.ignore_patterns("backup", "logs"))
    keras.backend.clear_session()
    training.run(config, run_dir, "all", verbose=0, callbacks=callbacks)
    evaluation.evaluate(run_dir, split=split, domain=domain, config=config)
    with open(result_path) as f:
        return _keep(json.load(f))


def timed_run(arm, shards, seed, base, overrides, **options):
    """``run_arm``, recording the seconds it took the first time (the cached
    result's cost stays that of the run that made it)."""
    path = os.path.join(base, arm.key, "eval",
                        f"seconds_{options.get('domain', 'street')}_"
                        f"{options.get('split', 'test')}.json")
    shop_done = os.path.exists(os.path.join(base, arm.shop_key, "shop",
                                            "done.json"))
    start = time.time()
    result = run_arm(arm, shards, seed, base, overrides, **options)
    result["trained"] = not os.path.exists(path)
    if result["trained"]:
        fileio.write_json(path, {"seconds": time.time() - start,
                                 "includes_shop_stage": not shop_done})
    with open(path) as f:
        result["seconds"] = json.load(f)["seconds"]
    return result


def record_invocation(workdir, command, minutes, trained):
    """Appends an invocation that trained runs to
    ``<workdir>/invocations.jsonl`` and returns every recorded one (the
    report's wall times: a report regenerated from finished runs keeps the
    time of the runs that made them)."""
    path = os.path.join(workdir, INVOCATIONS)
    if trained:
        with open(path, "a") as f:
            f.write(json.dumps({
                "command": command, "minutes": round(minutes, 2),
                "trained_runs": trained,
                "finished": time.strftime("%Y-%m-%d %H:%M UTC",
                                          time.gmtime())}) + "\n")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def select_cross_weight(shards, base, overrides, fractions=FRACTIONS):
    """The protocol's weight choice: MTCT ``fc`` on seed 0 for each grid
    weight and fraction, scored by street *validation* mAP_cls (mean over
    the fractions; ``loss_balance.select_weight``).

    Returns:
        ``(weight, {weight: [score per fraction]}, seconds, trained runs)``.
    """
    from mtct_tf import loss_balance

    scores, seconds, trained = {}, 0.0, 0
    for weight in loss_balance.weight_grid(BALANCING_WEIGHT):
        for f in fractions:
            r = timed_run(street_arm("mtct", "fc", f, weight), shards, 0,
                          base, overrides, split="val")
            scores.setdefault(weight, []).append(100 * r["mAP_cls"])
            seconds += r["seconds"]
            trained += r["trained"]
    return loss_balance.select_weight(scores), scores, seconds, trained
