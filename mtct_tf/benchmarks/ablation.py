"""The decisive benchmark of docs/PROTOCOL.md on X-Domain-synth.

``python -m mtct_tf.benchmark ablation --seeds 3`` renders the benchmark
data (the paper's regime: many shop-only items, few street items linked to
their shop item), then, for every seed, trains one shop stage and from it:

* No-Adapt (the shop model on street photos);
* FTT and MTCT, fine-tuning the FC branches (``fc``, the poster's choice)
  or every layer (``all``), with the street labels of 10%, 25% and 100%
  of the street training items (every street photo keeps its shop pair);
* the label-copy oracle (FTT on every street training photo, labelled
  with its shop item's labels) in both modes;
* MTCT with the other cross-domain losses (``fc``, 100%);
* on seed 0 only, the one-stage control UD (100%; end-to-end with
  ``--controls ud,end_to_end``: it costs ~4 shop stages).

The cross-domain weight is chosen once, on street *validation* of seed 0
(MTCT, ``fc``, the three fractions) from ``loss_balance.weight_grid``, then
frozen (``--cross_weight`` skips the choice, e.g. for a replication on
another ``--render_seed``). The verdicts use paired per-seed differences
and their Student-t interval (``paired``). Nothing is tuned per method;
every method runs the ``synth_benchmark`` data, model and budget.

Results go to ``docs/RESULTS.md``, ``docs/results/ablation.json`` and
``docs/images/ablation*.png``; finished runs are reused.
"""

import json
import math
import os
import platform
import shutil
import sys
import time

import numpy as np

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
RETRIEVAL_K = ("1", "5", "10", "20")
# docs/BENCHMARK_DESIGN_NOTES.md §3: 1 / (|grad cross| / |grad CE|) on the
# FC branches at the start of the street stage (fc, 100%, seed 0).
BALANCING_WEIGHT = 343.0
CONFIDENCE = 0.95

DATA_ITEMS = 3400  # synthetic.BENCHMARK_DATA["items"]
DATA_SEED = 2017  # synthetic.BENCHMARK_DATA["seed"]; --render_seed


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
    from mtct_tf.data import convert, shards as shards_lib, synthetic

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


def _fraction_name(fraction):
    return f"{100 * float(fraction):g}%"


class Arm:
    """One trained and evaluated configuration (per seed).

    ``key`` names its run directory (and so its cache): two arms with the
    same key are the same run.
    """

    def __init__(self, key, experiment, fraction=1.0, overrides=()):
        self.key, self.experiment = key, experiment
        self.fraction, self.overrides = fraction, tuple(overrides)


def no_adapt():
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
    return Arm(f"oracle_{mode}", "ftt", 1.0,
               [f"street.finetune={mode}", "data.street_labels=pair"])


def loss_arm(experiment, weight):
    return Arm(f"{experiment}_fc_1_w{weight:g}", experiment, 1.0,
               ["street.finetune=fc", f"street.cross_domain.weight={weight:g}"])


def control_arm(experiment, weight, fraction=1.0):
    overrides = []
    if experiment == "end_to_end":
        overrides.append(f"street.cross_domain.weight={weight:g}")
    key = (f"{experiment}_{fraction:g}_w{weight:g}" if overrides
           else experiment if fraction == 1 else f"{experiment}_{fraction:g}")
    return Arm(key, experiment, fraction, overrides)


def control_label(name, fraction):
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


def _render_settings(workdir):
    with open(os.path.join(workdir, "render.json")) as f:
        return json.load(f)


def _config(experiment, shards, seed, fraction, overrides):
    from mtct_tf import configs

    return configs.build(experiment, None, [
        f"data.shards_dir={shards}", f"seed={seed}",
        f"data.street_label_fraction={fraction}", *overrides])


def _keep(result):
    """The parts of an evaluation the report uses."""
    out = {k: result[k] for k in (*COLUMNS, "ap", "chance_mAP_cls",
                                  "num_images")}
    retrieval = result.get("retrieval")
    if retrieval:
        out["retrieval"] = retrieval["topk_accuracy"]
    return out


def _run(arm, shards, seed, base, overrides, split="test", domain="street"):
    """Trains (reusing the seed's shop stage) and evaluates one arm."""
    import keras

    from mtct_tf import evaluation, runs, training
    from mtct_tf import stages as stages_lib

    run_dir = os.path.join(base, arm.key)
    config = _config(arm.experiment, shards, seed, arm.fraction,
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
        shop_cache = os.path.join(base, "_shop")
        if not runs.is_done(shop_cache, "shop"):
            keras.backend.clear_session()
            training.run(_config("ftt", shards, seed, 1.0, overrides),
                         shop_cache, "shop", verbose=0)
        target = runs.stage_dir(run_dir, "shop")
        if not os.path.exists(target):
            shutil.copytree(runs.stage_dir(shop_cache, "shop"), target,
                            ignore=shutil.ignore_patterns("backup", "logs"))
    keras.backend.clear_session()
    training.run(config, run_dir, "all", verbose=0)
    evaluation.evaluate(run_dir, split=split, domain=domain, config=config)
    with open(result_path) as f:
        return _keep(json.load(f))


# --------------------------------------------------------------------------
# Statistics.


def _summary(results):
    """Mean and std over seeds (in %) of each column, AP and retrieval."""
    def ms(values):
        values = [100 * float(v) for v in values]
        return (float(np.mean(values)),
                float(np.std(values, ddof=1)) if len(values) > 1 else 0.0)

    out = {k: ms([r[k] for r in results]) for k in COLUMNS}
    out["ap"] = {a: ms([r["ap"][a] for r in results])
                 for a in results[0]["ap"]}
    if all("retrieval" in r for r in results):
        out["retrieval"] = {k: ms([r["retrieval"][k] for r in results])
                            for k in results[0]["retrieval"]}
    out["n"] = len(results)
    return out


def paired(a, b, confidence=CONFIDENCE):
    """Paired per-seed differences ``a - b`` (in the units given).

    Returns a dict with the per-seed ``differences``, their ``mean``,
    sample ``std``, the Student-t ``interval`` (``confidence``, n - 1
    degrees of freedom) and the ``verdict``: ``"better"`` when the
    interval lies above 0, ``"worse"`` below 0, else ``"not separated"``
    (always with fewer than 2 seeds: there is no noise estimate).
    """
    from scipy import stats

    if len(a) != len(b):
        raise ValueError(f"paired needs one value per seed on both sides; "
                         f"got {len(a)} and {len(b)}")
    d = np.asarray(a, float) - np.asarray(b, float)
    n = len(d)
    mean = float(d.mean())
    if n < 2:
        return {"differences": d.tolist(), "mean": mean, "std": None,
                "interval": None, "verdict": "not separated", "n": n}
    std = float(d.std(ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * std / math.sqrt(n)
    low, high = mean - half, mean + half
    verdict = ("better" if low > 0 else "worse" if high < 0
               else "not separated")
    return {"differences": d.tolist(), "mean": mean, "std": std,
            "interval": [low, high], "verdict": verdict, "n": n}


VERDICT_TEXT = {"better": "**MTCT better (separated)**",
                "worse": "**MTCT worse (separated)**",
                "not separated": "**not separated**"}


CONTRAST_TEXT = {
    "better": "**MTCT's gain larger with fewer labels (separated)**",
    "worse": "**MTCT's gain smaller with fewer labels (separated)**",
    "not separated": "**not separated**"}
LOSS_VERDICT_TEXT = {"better": "**above FTT (separated)**",
                     "worse": "**below FTT (separated)**",
                     "not separated": "**not separated**"}


def _cell(mean_std, n=None):
    mean, std = mean_std
    if n == 1:
        return f"{mean:.2f}"
    return f"{mean:.2f} ± {std:.2f}"


def _diff_cell(p):
    if p["interval"] is None:
        return f"{p['mean']:+.2f} (1 seed)"
    low, high = p["interval"]
    return f"{p['mean']:+.2f} ± {p['std']:.2f} [{low:+.2f}, {high:+.2f}]"


def comparisons(per, metric=lambda r: 100 * r["mAP_cls"], fractions=FRACTIONS,
                modes=MODES):
    """Paired MTCT - FTT and MTCT - No-Adapt per mode and fraction, and the
    small-data contrast (gain at the smallest fraction minus gain at the
    largest), as a list of ``paired`` dicts with ``mode``, ``fraction``
    (``None`` for the contrast) and ``what``.

    Args:
        per: dict arm label -> list of per-seed results; labels
            ``"No-Adapt"``, ``"FTT <mode> <fraction>"`` and
            ``"MTCT <mode> <fraction>"``.
        metric: result -> number.
    """
    base = [metric(r) for r in per["No-Adapt"]]
    out = []
    for mode in modes:
        gains = {}
        for f in fractions:
            mtct = [metric(r) for r in per[f"MTCT {mode} {f:g}"]]
            ftt = [metric(r) for r in per[f"FTT {mode} {f:g}"]]
            gains[f] = np.subtract(mtct, ftt)
            out.append(dict(paired(mtct, ftt), mode=mode, fraction=f,
                            what="MTCT - FTT"))
            out.append(dict(paired(mtct, base), mode=mode, fraction=f,
                            what="MTCT - No-Adapt"))
        low, high = min(fractions), max(fractions)
        if low != high:
            out.append(dict(
                paired(gains[low], gains[high]), mode=mode, fraction=None,
                what=f"(MTCT - FTT) at {_fraction_name(low)} - "
                     f"(MTCT - FTT) at {_fraction_name(high)}"))
    return out


def _verdict_text(p):
    return (VERDICT_TEXT if p["fraction"] is not None
            else CONTRAST_TEXT)[p["verdict"]]


def verdict_lines(table):
    """One Markdown line per entry of ``comparisons``."""
    lines = []
    for p in table:
        where = (f"{_fraction_name(p['fraction'])} street labels"
                 if p["fraction"] is not None else "small-data contrast")
        text = _verdict_text(p)
        lines.append(f"`{p['mode']}`, {where}: {p['what']} = "
                     f"{_diff_cell(p)} → {text}")
    return lines


# --------------------------------------------------------------------------
# The runs.


def _timed_run(arm, shards, seed, base, overrides, **options):
    """``_run``, recording the seconds it took the first time (the cached
    result's cost stays that of the run that made it)."""
    path = os.path.join(base, arm.key, "eval",
                        f"seconds_{options.get('domain', 'street')}_"
                        f"{options.get('split', 'test')}.json")
    shop_done = os.path.exists(os.path.join(base, "_shop", "shop",
                                            "done.json"))
    start = time.time()
    result = _run(arm, shards, seed, base, overrides, **options)
    result["trained"] = not os.path.exists(path)
    if result["trained"]:
        fileio.write_json(path, {"seconds": time.time() - start,
                                 "includes_shop_stage": not shop_done})
    with open(path) as f:
        result["seconds"] = json.load(f)["seconds"]
    return result


INVOCATIONS = "invocations.jsonl"


def record_invocation(workdir, command, minutes, trained):
    """Appends an invocation that trained runs to ``<workdir>/invocations.jsonl``
    and returns every recorded one (the report's wall times: a report
    regenerated from finished runs keeps the time of the runs that made
    them)."""
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
    the fractions; ``loss_balance.select_weight``)."""
    from mtct_tf import loss_balance

    scores, seconds, trained = {}, 0.0, 0
    for weight in loss_balance.weight_grid(BALANCING_WEIGHT):
        for f in fractions:
            r = _timed_run(street_arm("mtct", "fc", f, weight), shards, 0,
                           base, overrides, split="val")
            scores.setdefault(weight, []).append(100 * r["mAP_cls"])
            seconds += r["seconds"]
            trained += r["trained"]
    return loss_balance.select_weight(scores), scores, seconds, trained


def run(seeds=3, workdir="runs/benchmark", out_dir="docs", items=DATA_ITEMS,
        overrides=(), command="python -m mtct_tf.benchmark ablation",
        render_seed=DATA_SEED, cross_weight=None, core=False,
        control_seeds=1, controls=DEFAULT_CONTROLS, losses=False,
        fractions=FRACTIONS, replication=None):
    """Runs the protocol's arms and writes the report; returns the summary.

    Args:
        seeds: training seeds 0 .. seeds - 1.
        workdir: data and runs (finished runs are reused).
        out_dir: where RESULTS.md, results/ and images/ go.
        items: rendered items (fewer for quick trials).
        overrides: config overrides applied to every arm alike.
        render_seed: seed of the rendered data.
        cross_weight: the cross-domain weight; ``None``: chosen on seed 0's
            street validation (the protocol).
        core: only No-Adapt, FTT and MTCT (the replication's arms).
        control_seeds: seeds on which the one-stage controls run.
        controls: which of them (``"ud"``, ``"end_to_end"``).
        losses: also MTCT with the other cross-domain losses.
        fractions: street label fractions of FTT and MTCT.
        replication: another run's ``results/ablation.json``, whose
            verdicts are set beside these.
    """
    from mtct_tf import configs

    start = time.time()
    shards = prepare_data(workdir, items, render_seed)

    def seed_dir(seed):
        return os.path.join(workdir, f"seed{seed}")

    if cross_weight is None:
        weight, grid, grid_seconds, grid_trained = select_cross_weight(
            shards, seed_dir(0), overrides)
        selection = {"rule": "best mean street-validation mAP_cls of MTCT "
                             "fc, seed 0, over the label fractions",
                     "scores": {f"{w:g}": v for w, v in grid.items()},
                     "chosen": weight, "seconds": grid_seconds,
                     "trained": grid_trained}
        print(f"cross-domain weight {weight:g} (street validation, seed 0: "
              + ", ".join(f"{w:g}: {np.mean(v):.2f}" for w, v in grid.items())
              + ")", flush=True)
    else:
        weight = float(cross_weight)
        selection = {"rule": "given (--cross_weight)", "chosen": weight}

    per, seconds = {}, {}
    trained = [0]

    def add(label, result):
        trained[0] += result.pop("trained")
        per.setdefault(label, []).append(result)
        seconds[label] = seconds.get(label, 0.0) + result["seconds"]

    for seed in range(seeds):
        base = seed_dir(seed)

        def go(arm, **options):
            return _timed_run(arm, shards, seed, base, overrides, **options)

        add("No-Adapt", go(no_adapt()))
        add("Shop model on shop test", go(no_adapt(), domain="shop"))
        for mode in MODES:
            for f in fractions:
                add(f"FTT {mode} {f:g}", go(street_arm("ftt", mode, f)))
                add(f"MTCT {mode} {f:g}",
                    go(street_arm("mtct", mode, f, weight)))
        if not core:
            for mode in MODES:
                add(f"Oracle {mode}", go(oracle_arm(mode)))
            for name, experiment in (LOSSES.items() if losses else ()):
                add(f"MTCT fc 1, {name}", go(loss_arm(experiment, weight)))
        print(f"seed {seed} done after {(time.time() - start) / 60:.1f} min",
              flush=True)
    if not core:
        # The one-stage controls last: each costs one to four shop stages.
        plan = (controls if isinstance(controls, dict)
                else {c: (control_seeds, (1.0,)) for c in controls})
        for seed in range(seeds):
            for name, experiment in CONTROLS.items():
                n, control_fractions = plan.get(experiment, (0, ()))
                if seed >= n:
                    continue
                for f in control_fractions:
                    add(control_label(name, f), _timed_run(
                        control_arm(experiment, weight, f), shards, seed,
                        seed_dir(seed), overrides))
        print(f"controls done after {(time.time() - start) / 60:.1f} min",
              flush=True)

    summary = {label: _summary(results) for label, results in per.items()}
    verdicts = {
        "mAP_cls": comparisons(per, fractions=fractions),
        "retrieval top-10": comparisons(
            per, metric=lambda r: 100 * r["retrieval"]["10"],
            fractions=(fractions[0], fractions[-1])),
    }
    config = _config("mtct", shards, 0, 1.0, overrides)
    minutes = (time.time() - start) / 60
    info = {
        "command": command,
        "minutes": minutes,
        "invocations": record_invocation(
            workdir, command, minutes,
            trained[0] + selection.get("trained", 0)),
        "compute_minutes": (sum(seconds.values())
                            + selection.get("seconds", 0.0)) / 60,
        "machine": f"{platform.processor() or platform.machine()}, "
                   f"{os.cpu_count()} CPUs",
        "seeds": seeds,
        "control_seeds": 0 if core else min(seeds, control_seeds),
        "core": core,
        "fractions": list(fractions),
        "controls": [] if core else list(controls),
        "control_plan": ({} if core or not isinstance(controls, dict)
                         else {k: [v[0], list(v[1])]
                               for k, v in controls.items()}),
        "items": items,
        "render_seed": render_seed,
        "render": _render_settings(workdir),
        "street_test_images": per["No-Adapt"][0]["num_images"],
        "chance": 100 * float(np.mean(
            [r["chance_mAP_cls"] for r in per["No-Adapt"]])),
        "weight": selection,
        "budget": (f"shop {config.shop.epochs} x {config.shop.steps_per_epoch}"
                   f" steps, street {config.street.epochs} x "
                   f"{config.street.steps_per_epoch} steps, batch "
                   f"{config.data.batch_size}; one-stage methods get the sum"),
        "seconds": seconds,
        "config": configs.describe(config),
    }
    data = {"summary": summary, "info": info,
            "verdicts": verdicts,
            "per_seed": {label: [{k: r[k] for k in ("mAP_cls",)}
                                 for r in results]
                         for label, results in per.items()}}
    if replication:
        with open(replication) as f:
            data["replication"] = json.load(f)
    path = write_report(data, out_dir)
    print(f"wrote {path} ({minutes:.1f} min)")
    return data



# --------------------------------------------------------------------------
# The report.


def _table(rows, summary, with_attributes):
    """Markdown table of ``rows`` (display name -> summary label)."""
    rows = {name: summary[label] for name, label in rows.items()
            if label in summary}
    if not rows:
        return "(not run)"
    first = next(iter(rows.values()))
    names = list(first["ap"]) if with_attributes else []
    header = (["Method"] + [a.replace("_", " ").capitalize() for a in names]
              + list(COLUMNS) + ["seeds"])
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for name, s in rows.items():
        cells = ([_cell(s["ap"][a], s["n"]) for a in names]
                 + [_cell(s[k], s["n"]) for k in COLUMNS] + [str(s["n"])])
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _paper_rows(summary):
    rows = {"No-Adapt": "No-Adapt", "UD": "UD"}
    rows.update({"FTT (fc)": "FTT fc 1", "End-to-end": "End-to-end",
                 "MTCT (fc)": "MTCT fc 1", "FTT (all)": "FTT all 1",
                 "MTCT (all)": "MTCT all 1",
                 "Label-copy oracle (fc)": "Oracle fc",
                 "Label-copy oracle (all)": "Oracle all"})
    return rows


def _small_data_table(summary, verdicts, fractions):
    lookup = {(p["mode"], p["fraction"], p["what"]): p for p in verdicts}
    lines = ["| mode | street labels | FTT | MTCT | MTCT − FTT (paired) "
             "| verdict | MTCT − No-Adapt (paired) | verdict |",
             "|---|---|---|---|---|---|---|---|"]
    for mode in MODES:
        for f in fractions:
            d1 = lookup[(mode, f, "MTCT - FTT")]
            d2 = lookup[(mode, f, "MTCT - No-Adapt")]
            lines.append(
                f"| {mode} | {_fraction_name(f)} | "
                f"{_cell(summary[f'FTT {mode} {f:g}']['mAP_cls'])} | "
                f"{_cell(summary[f'MTCT {mode} {f:g}']['mAP_cls'])} | "
                f"{_diff_cell(d1)} | {VERDICT_TEXT[d1['verdict']]} | "
                f"{_diff_cell(d2)} | {VERDICT_TEXT[d2['verdict']]} |")
    return "\n".join(lines)


def _loss_table(summary, per_seed):
    rows = {"none (FTT)": "FTT fc 1", "t-STE poster (MTCT)": "MTCT fc 1"}
    rows.update({name: f"MTCT fc 1, {name}" for name in LOSSES})
    if not all(label in summary for label in rows.values()):
        return "(not run: `--losses` adds them)"
    ftt = [100 * r["mAP_cls"] for r in per_seed["FTT fc 1"]]
    lines = ["| cross-domain loss | mAP_cls | mP_ins | mR_ins "
             "| − FTT (paired) | verdict |", "|---|---|---|---|---|---|"]
    for name, label in rows.items():
        s = summary[label]
        cells = [_cell(s[k]) for k in COLUMNS]
        if label == "FTT fc 1":
            cells += ["", ""]
        else:
            p = paired([100 * r["mAP_cls"] for r in per_seed[label]], ftt)
            cells += [_diff_cell(p), LOSS_VERDICT_TEXT[p["verdict"]]]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _retrieval_table(summary, fractions):
    rows = {"No-Adapt": "No-Adapt"}
    for mode in MODES:
        for f in (fractions[0], fractions[-1]):
            for method in ("FTT", "MTCT"):
                rows[f"{method} ({mode}, {_fraction_name(f)})"] = (
                    f"{method} {mode} {f:g}")
    lines = ["| model | " + " | ".join(f"top-{k}" for k in RETRIEVAL_K)
             + " |", "|---" * (len(RETRIEVAL_K) + 1) + "|"]
    for name, label in rows.items():
        r = summary[label].get("retrieval")
        if r:
            lines.append(f"| {name} | "
                         + " | ".join(_cell(r[k]) for k in RETRIEVAL_K)
                         + " |")
    return "\n".join(lines)


def _shop_table(summary, per_seed):
    s = summary["Shop model on shop test"]
    names = list(s["ap"])
    header = ["shop model"] + [a.replace("_", " ").capitalize()
                               for a in names] + ["mAP_cls"]
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|",
             "| mean ± std | " + " | ".join(_cell(s["ap"][a]) for a in names)
             + f" | {_cell(s['mAP_cls'])} |"]
    seeds = [100 * r["mAP_cls"] for r in per_seed["Shop model on shop test"]]
    lines += ["", "mAP_cls per seed: "
              + ", ".join(f"{v:.2f}" for v in seeds) + "."]
    return "\n".join(lines)


def _count(verdicts, what_prefix):
    cells = [p for p in verdicts if p["what"].startswith(what_prefix)
             and p["fraction"] is not None]
    return {v: sum(p["verdict"] == v for p in cells)
            for v in ("better", "worse", "not separated")}, len(cells)


def _headline(data):
    verdicts = data["verdicts"]["mAP_cls"]
    summary = data["summary"]
    lines = []
    for what in ("MTCT - FTT", "MTCT - No-Adapt"):
        counts, n = _count(verdicts, what)
        lines.append(
            f"{what.replace(' - ', ' − ')}, street test mAP_cls, {n} cells "
            f"(2 modes × {n // 2} label fractions): {counts['better']} MTCT "
            "better, "
            f"{counts['worse']} MTCT worse, {counts['not separated']} not "
            "separated (paired differences over seeds, 95% t-interval).")
    words = {"better": "separated", "worse": "separated, MTCT below",
             "not separated": "not separated"}
    for mode in MODES:
        cells = [p for p in verdicts if p["mode"] == mode
                 and p["what"] == "MTCT - FTT" and p["fraction"] is not None]
        name = {"fc": "Fine-tuning the FC branches (`fc`)",
                "all": "Fine-tuning every layer (`all`)"}[mode]
        lines.append(
            f"{name}: MTCT − FTT is " + ", ".join(
                f"{p['mean']:+.2f} at {_fraction_name(p['fraction'])} "
                f"({words[p['verdict']]})" for p in cells)
            + " mAP_cls points; MTCT "
            + _cell(summary[f"MTCT {mode} {cells[0]['fraction']:g}"]
                    ["mAP_cls"])
            + f" with {_fraction_name(cells[0]['fraction'])} of the labels "
            f"against FTT {_cell(summary[f'FTT {mode} 1']['mAP_cls'])} with "
            "all of them.")
    for mode in MODES:
        label = f"Oracle {mode}"
        if label in summary:
            lines.append(
                f"Label-copy oracle (`{mode}`): "
                f"{_cell(summary[label]['mAP_cls'])} against FTT with every "
                f"street label {_cell(summary[f'FTT {mode} 1']['mAP_cls'])} "
                f"and No-Adapt {_cell(summary['No-Adapt']['mAP_cls'])}.")
    per_seed = data.get("per_seed", {})
    for name in CONTROLS:
        for f in sorted({float(k.split()[-1]) for k in summary
                         if k.startswith("MTCT ") and "," not in k}):
            label = control_label(name, f)
            if label not in summary:
                continue
            s = summary[label]
            best = max((f"MTCT {m} {f:g}" for m in MODES),
                       key=lambda k: summary[k]["mAP_cls"][0])
            text = (f"{name} (one-stage, {_fraction_name(f)} labels, "
                    f"{s['n']} seed{'s' if s['n'] > 1 else ''}): "
                    f"{_cell(s['mAP_cls'], s['n'])} against MTCT "
                    f"(`{best.split()[1]}`, {_fraction_name(f)}) "
                    f"{_cell(summary[best]['mAP_cls'])}")
            mine = [100 * r["mAP_cls"] for r in per_seed.get(best, [])]
            theirs = [100 * r["mAP_cls"] for r in per_seed.get(label, [])]
            if len(theirs) > 1:
                p = paired(mine[:len(theirs)], theirs)
                text += (f"; MTCT − {name} {_diff_cell(p)} → "
                         f"{VERDICT_TEXT[p['verdict']]} (exploratory: this "
                         "comparison is not in the protocol)")
            else:
                text += " (no verdict)"
            lines.append(text + ".")
    return lines


def _replication_section(data):
    other = data.get("replication")
    if not other:
        return ""
    seed = other["info"]["render_seed"]
    mine = {(p["mode"], p["fraction"], p["what"]): p
            for p in data["verdicts"]["mAP_cls"]}
    lines = [f"## Replication on other data (render seed {seed})", "",
             f"`{other['info']['command']}` ({other['info']['seeds']} seeds, "
             f"{other['info']['minutes']:.1f} min; cross-domain weight "
             f"{other['info']['weight']['chosen']:g}, frozen from this run). "
             "Street test mAP_cls, paired differences:", "",
             "| mode | cell | this run | verdict | render seed "
             f"{seed} | verdict | same verdict |",
             "|---|---|---|---|---|---|---|"]
    same = 0
    for p in other["verdicts"]["mAP_cls"]:
        q = mine.get((p["mode"], p["fraction"], p["what"]))
        if q is None:
            continue
        where = (_fraction_name(p["fraction"]) if p["fraction"] is not None
                 else "small-data")
        agree = q["verdict"] == p["verdict"]
        same += agree
        lines.append(
            f"| {p['mode']} | {where}: {p['what']} | {_diff_cell(q)} | "
            f"{_verdict_text(q)} | {_diff_cell(p)} | "
            f"{_verdict_text(p)} | {'yes' if agree else '**no**'} |")
    total = len(lines) - 6
    lines += ["", f"{same} of {total} verdicts agree.", ""]
    return "\n".join(lines)


def _plot(data, out_dir):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    summary = data["summary"]
    fractions = data["info"]["fractions"]
    paths = []
    # 1. The paper's second table: every method at 100% street labels.
    rows = {k: v for k, v in _paper_rows(summary).items() if v in summary}
    fig, ax = plt.subplots(figsize=(10, 3.8))
    names = list(rows)
    means = [summary[rows[n]]["mAP_cls"][0] for n in names]
    stds = [summary[rows[n]]["mAP_cls"][1] for n in names]
    ax.bar(range(len(names)), means, yerr=stds, capsize=3, color="#4c72b0")
    ax.axhline(data["info"]["chance"], color="grey", ls=":", label="chance")
    ax.set_xticks(range(len(names)), names, rotation=20, fontsize=8)
    ax.set_ylabel("street test mAP_cls (%)")
    ax.set_title("Methods, 100% street labels (mean ± std over seeds)")
    ax.legend(fontsize=8)
    low = min(m - s for m, s in zip(means, stds))
    ax.set_ylim(max(0, min(low, data["info"]["chance"]) - 5), max(means) + 5)
    fig.tight_layout()
    paths.append(_save(fig, os.path.join(out_dir, "images", "ablation.png")))

    # 2. Small street data, per mode.
    fig, axes = plt.subplots(1, len(MODES), figsize=(10, 3.8), sharey=True)
    xs = [100 * f for f in fractions]
    for ax, mode in zip(axes, MODES):
        for method, colour in (("FTT", "#dd8452"), ("MTCT", "#4c72b0")):
            s = [summary[f"{method} {mode} {f:g}"]["mAP_cls"]
                 for f in fractions]
            ax.errorbar(xs, [m for m, _ in s], yerr=[d for _, d in s],
                        marker="o", capsize=3, label=method, color=colour)
        ax.axhline(summary["No-Adapt"]["mAP_cls"][0], color="grey",
                   ls="--", label="No-Adapt")
        if f"Oracle {mode}" in summary:
            ax.axhline(summary[f"Oracle {mode}"]["mAP_cls"][0],
                       color="green", ls=":", label="label-copy oracle")
        ax.set_xscale("log")
        ax.set_xticks(xs, [_fraction_name(f) for f in fractions])
        ax.set_xlabel("street training items with labels")
        ax.set_title(f"fine-tune {mode}")
        ax.legend(fontsize=8)
    axes[0].set_ylabel("street test mAP_cls (%)")
    fig.tight_layout()
    paths.append(_save(fig, os.path.join(out_dir, "images",
                                         "ablation_small_data.png")))

    # 3. Paired differences with their intervals.
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
    verdicts = data["verdicts"]["mAP_cls"]
    for ax, what in zip(axes, ("MTCT - FTT", "MTCT - No-Adapt")):
        for i, mode in enumerate(MODES):
            for j, f in enumerate(fractions):
                p = next(q for q in verdicts if q["mode"] == mode
                         and q["fraction"] == f and q["what"] == what)
                x = j + (i - 0.5) * 0.25
                if p["interval"]:
                    low, high = p["interval"]
                    ax.plot([x, x], [low, high], color=f"C{i}")
                ax.plot([x] * len(p["differences"]), p["differences"], ".",
                        color=f"C{i}", alpha=0.5)
                ax.plot([x], [p["mean"]], "o", color=f"C{i}",
                        label=mode if j == 0 else None)
        ax.axhline(0, color="black", lw=0.8)
        ax.set_xticks(range(len(fractions)),
                      [_fraction_name(f) for f in fractions])
        ax.set_xlabel("street training items with labels")
        ax.set_title(f"{what.replace(' - ', ' − ')}: per seed, mean, 95% interval",
                     fontsize=9)
        ax.legend(fontsize=8, title="fine-tune", title_fontsize=8)
    axes[0].set_ylabel("street test mAP_cls difference (points)")
    fig.tight_layout()
    paths.append(_save(fig, os.path.join(out_dir, "images",
                                         "ablation_paired.png")))
    return paths


def _save(fig, path):
    from matplotlib import pyplot as plt

    os.makedirs(os.path.dirname(path), exist_ok=True)
    with fileio.replacing(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return path


NOTES = "notes.md"


def _notes(out_dir):
    """``<out_dir>/results/notes.md``, written by hand, kept across
    regenerations: readings of the numbers that the generator cannot
    make."""
    path = os.path.join(out_dir, "results", NOTES)
    if not os.path.exists(path):
        return ""
    with open(path, encoding="utf-8") as f:
        text = f.read().strip()
    return (f"## Reading the numbers (by hand, `results/{NOTES}`)\n\n"
            f"{text}\n\n")


def _data_text(info):
    r = info.get("render") or {}
    text = f"{info['items']} items rendered with seed {info['render_seed']}"
    if r:
        text += (f" ({r['street_items']} of them with {r['street_per_item']}"
                 f" street photos each; one shop image per item; "
                 f"{r['image_size']} px photos; "
                 f"{100 * r['missing_rate']:g}% of labels missing)")
    return text


def _wall_times(info):
    """Which invocations trained the runs, and their wall times."""
    done = info.get("invocations") or []
    text = (f"This invocation took {info['minutes']:.1f} min; the runs took "
            f"{info['compute_minutes']:.1f} min when they were trained "
            "(finished runs are reused).")
    if done:
        text += " Wall time of the invocations that trained them: " + "; ".join(
            f"`{d['command']}`: **{d['minutes']:.1f} min** "
            f"({d['trained_runs']} runs, finished {d['finished']})"
            for d in done) + "."
    return text


def write_report(data, out_dir):
    """Writes RESULTS.md, results/ablation.json and the plots; returns the
    Markdown file's path."""
    summary, info = data["summary"], data["info"]
    os.makedirs(os.path.join(out_dir, "results"), exist_ok=True)
    fileio.write_json(os.path.join(out_dir, "results", "ablation.json"), data)
    _plot(data, out_dir)
    weight = info["weight"]
    if "scores" in weight:
        grid = ("Cross-domain weight chosen on street **validation**, seed 0, "
                "MTCT `fc` (mAP_cls at " + ", ".join(
                    _fraction_name(f) for f in FRACTIONS) + " labels, mean): "
                + "; ".join(f"{w}: " + " / ".join(f"{v:.2f}" for v in s)
                            + f" (mean {np.mean(s):.2f})"
                            for w, s in weight["scores"].items())
                + f" → **{weight['chosen']:g}**, frozen for every arm.")
    else:
        grid = (f"Cross-domain weight **{weight['chosen']:g}**, given "
                "(frozen from the primary run; no grid here).")
    controls = ""
    if info["control_seeds"]:
        names = [n for n, e in CONTROLS.items() if e in info["controls"]]
        controls = (f" The one-stage controls ({', '.join(names)}) ran on "
                    f"{info['control_seeds']} seed(s) only (their cost; see "
                    "the protocol).")
        plan = info.get("control_plan") or {}
        if plan:
            controls = " One-stage controls (their cost; see the protocol): " + "; ".join(
                f"{n} on {plan[e][0]} seed(s) at "
                + "/".join(_fraction_name(f) for f in plan[e][1]) + " labels"
                for n, e in CONTROLS.items() if e in plan) + "."
    mode_text = ("replication: No-Adapt, FTT and MTCT only"
                 if info["core"] else "every arm of the protocol")
    verdicts = data["verdicts"]
    text = f"""# Results: is MTCT worth it? X-Domain-synth in the paper's regime

Produced by `{info['command']}` on this machine ({info['machine']}).
{_wall_times(info)}
Following the pre-registered protocol in
[docs/PROTOCOL.md](PROTOCOL.md) ({mode_text}). {info['seeds']} seeds,
mean ± std over seeds (sample std), street test split
({info['street_test_images']} photos, annotated boxes), percentages.
Data: {_data_text(info)}. Model: `small` MTN at 64 px. Budget:
{info['budget']}.{controls} Per-attribute columns are class-level AP (SPEC
§6). Chance mAP_cls (a predictor that ignores the image) is
{info['chance']:.2f}.

{grid}

## Verdict

{chr(10).join('- ' + v for v in _headline(data))}

Every cell (paired per-seed differences: mean ± std
[95% Student-t interval]; "separated" only when the interval excludes 0):

{chr(10).join('- ' + v for v in verdict_lines(verdicts['mAP_cls']))}

{_replication_section(data)}{_notes(out_dir)}
## MTN and transfer learning (the paper's second table, 100% street labels)

{_table(_paper_rows(summary), summary, with_attributes=True)}

## Small street data

FTT and MTCT with the street labels of
{', '.join(_fraction_name(f) for f in info['fractions'])} of the street
training items (the same nested subsets; MTCT's triplets keep every street
photo as an anchor), per fine-tuning mode. No-Adapt:
{_cell(summary['No-Adapt']['mAP_cls'])}.

{_small_data_table(summary, verdicts['mAP_cls'], info['fractions'])}

![methods](images/ablation.png)
![small data](images/ablation_small_data.png)
![paired differences](images/ablation_paired.png)

## Cross-domain loss functions (`fc`, 100% street labels)

{_loss_table(summary, data['per_seed'])}

## Street-to-shop retrieval

Top-k accuracy of the embedding (queries: the street test photos; gallery:
the shop test images, one per item; a hit is the query's item), mean ± std
over seeds:

{_retrieval_table(summary, info['fractions'])}

Top-10, paired:

{chr(10).join('- ' + v for v in verdict_lines(verdicts['retrieval top-10']))}

## The shop models

Each seed's shop model (shared by No-Adapt, FTT, MTCT and the oracle) on
the shop test split:

{_shop_table(summary, data["per_seed"])}

Raw numbers: `results/ablation.json` beside this file. Paper (X-Domain,
real photos): No-Adapt 51.38, UD 58.76, FTT 61.82, MTCT 64.35 mAP_cls.
"""
    path = os.path.join(out_dir, "RESULTS.md")
    fileio.write_text(path, text)
    return path


def show(path):
    """The No-Adapt / FTT / MTCT street table and the verdicts of a
    finished ablation (its ``results/ablation.json``), as text."""
    with open(path) as f:
        data = json.load(f)
    info, summary = data["info"], data["summary"]
    return "\n".join([
        f"The decisive benchmark ({path}: `{info['command']}`, "
        f"{info['seeds']} seeds, render seed {info['render_seed']}, "
        f"cross-domain weight {info['weight']['chosen']:g}), street test "
        f"mAP_cls; No-Adapt {_cell(summary['No-Adapt']['mAP_cls'])}, "
        f"chance {info['chance']:.2f}:", "",
        _small_data_table(summary, data["verdicts"]["mAP_cls"],
                          info["fractions"]), "",
        *("- " + line for line in _headline(data))])


def add_arguments(parser):
    """The ``python -m mtct_tf.benchmark ablation`` command line."""
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--workdir", default="runs/benchmark",
                        help="data and runs (finished runs are reused)")
    parser.add_argument("--out", default="docs",
                        help="where RESULTS.md, results/ and images/ go")
    parser.add_argument("--items", type=int, default=DATA_ITEMS)
    parser.add_argument(
        "--render_seed", type=int, default=DATA_SEED,
        help="seed of the rendered benchmark data (default %(default)s); "
             "another seed draws other garments and photos: give it its "
             "own --workdir")
    parser.add_argument(
        "--cross_weight", type=float, default=None,
        help="cross-domain weight to use; default: chosen on street "
             "validation of seed 0 (docs/PROTOCOL.md). Give the primary "
             "run's weight when replicating on another --render_seed")
    parser.add_argument(
        "--fractions", default=",".join(f"{f:g}" for f in FRACTIONS),
        help="street label fractions of FTT and MTCT (default %(default)s)")
    parser.add_argument("--losses", action="store_true",
                        help="also MTCT with the other cross-domain losses")
    parser.add_argument("--core", action="store_true",
                        help="only No-Adapt, FTT and MTCT (the replication)")
    parser.add_argument("--control_seeds", type=int, default=1,
                        help="seeds on which the one-stage controls run")
    parser.add_argument(
        "--controls", default=",".join(DEFAULT_CONTROLS),
        help="one-stage controls, comma-separated, each NAME[:SEEDS[:F1/F2"
             f"...]] with NAME of {','.join(CONTROLS.values())}, SEEDS "
             "default --control_seeds, label fractions default 1 (default "
             "%(default)s; end-to-end costs ~4 shop stages)")
    parser.add_argument(
        "--replication", default=None, metavar="ABLATION_JSON",
        help="another run's results/ablation.json (e.g. on another render "
             "seed): its verdicts are set beside these")
    parser.add_argument("--override", action="append", default=[],
                        metavar="KEY=VALUE",
                        help="applied to every method alike")
    parser.add_argument(
        "--show", action="store_true",
        help="print the No-Adapt / FTT / MTCT table and verdicts of the "
             "finished run in --out (results/ablation.json); train nothing")

    def func(args):
        if args.show:
            path = os.path.join(args.out, "results", "ablation.json")
            if not os.path.exists(path):
                print(f"error: {path} does not exist: run the ablation "
                      "first", file=sys.stderr)
                return 2
            print(show(path))
            return 0
        command = " ".join(
            ["python -m mtct_tf.benchmark ablation", f"--seeds {args.seeds}"]
            + ([f"--render_seed {args.render_seed}"]
               if args.render_seed != DATA_SEED else [])
            + ([f"--cross_weight {args.cross_weight:g}"]
               if args.cross_weight is not None else [])
            + (["--core"] if args.core else [])
            + (["--losses"] if args.losses else [])
            + ([f"--fractions {args.fractions}"]
               if args.fractions != ",".join(f"{f:g}" for f in FRACTIONS)
               else [])
            + ([f"--controls {args.controls}"]
               if args.controls != ",".join(DEFAULT_CONTROLS) else [])
            + [f"--override {o}" for o in args.override])
        run(seeds=args.seeds, workdir=args.workdir, out_dir=args.out,
            items=args.items, overrides=args.override, command=command,
            render_seed=args.render_seed, cross_weight=args.cross_weight,
            core=args.core, control_seeds=args.control_seeds,
            controls=parse_controls(args.controls, args.control_seeds),
            losses=args.losses,
            fractions=tuple(sorted(float(f) for f in args.fractions.split(","))),
            replication=args.replication)
        return 0

    parser.set_defaults(func=func)
