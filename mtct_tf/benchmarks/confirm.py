"""The second, confirmatory protocol (docs/PROTOCOL_2.md).

``python -m mtct_tf.benchmark confirm`` renders X-Domain-synth in the
paper's regime with a render seed no earlier run used, and for every seed
trains one shop stage (the MTN) and from it, every layer fine-tuned:

* No-Adapt, FTT, MTCT and DDAN (Deep CORAL on the same street and shop
  images and labels as MTCT's triplets) at each label fraction;
* FTT and MTCT with a **budget-matched** street stage: as many street
  batches as UD's one stage sees at that fraction;
* UD (one network, shop and street images together) at each fraction;
* end-to-end (one network, triplets and both domains' labels in every
  step) at the smallest and largest fraction;
* JAN (one joint head instead of a branch per attribute) trained on shop
  images like No-Adapt, from a shop stage of its own.

Every method with a cross-domain term gets its weight from one rule,
applied where that method starts (``weights``): the weight at which the
cross-domain gradient and the cross-entropy gradient on the variables it
trains have equal norms, measured on seed 0 with every street label.
Nothing is tuned per method and no test number is read before the report.

The confirmatory family (``FAMILY``) is judged by paired per-seed t-tests
of street test mAP_cls with Holm's correction across the family
(``ablation_stats.holm``); every arm's street validation mAP_cls is logged
while it trains, for the End-to-End vs. Curriculum figure. Results go to
docs/RESULTS_2.md, docs/results/confirm.json, docs/images/confirm_*.png
and a summary section at the top of docs/RESULTS.md.

TensorFlow is imported inside the functions (the benchmark's parser
imports this module).
"""

import math
import os
import platform
import time

import numpy as np

from mtct_tf import fileio
from mtct_tf.benchmarks import ablation_arms as arms
from mtct_tf.benchmarks import confirm_report
from mtct_tf.benchmarks.ablation_stats import holm, paired, summarize

RENDER_SEED = 2019
SEEDS = 3
# The confirmatory core (one run, <= 60 min on 2 cores): the two ends of
# the label curve, no end-to-end, no JAN. ``--extension`` adds the rest.
CORE_FRACTIONS = (0.1, 1.0)
FRACTIONS = (0.1, 0.25, 1.0)
END_TO_END_FRACTIONS = (0.1, 1.0)
# The protocol's budget (docs/PROTOCOL_2.md) on top of each arm's
# ``synth_benchmark``-based experiment: a 1,000-step shop stage, so
# one-stage methods train 1,100 steps.
BUDGET = ("shop.epochs=5",)
# Method -> (experiment, cross-domain kind) of the methods with a
# cross-domain term, whose weight comes from the rule.
CROSS = {"MTCT": ("mtct", "tste_poster"), "DDAN": ("mtct", "coral"),
         "End-to-end": ("end_to_end", "tste_poster")}
CURVE_METHODS = ("FTT", "MTCT", "UD", "End-to-end")
SCORE_KEY = "street_val_mAP_cls"


def label(method, fraction=None):
    """An arm's label in the report: ``"MTCT 10%"``, ``"JAN"``."""
    return method if fraction is None else (
        f"{method} {arms.fraction_name(fraction)}")


def family(fractions=FRACTIONS, e2e_fractions=END_TO_END_FRACTIONS,
           jan=True):
    """The confirmatory comparisons: ``(a, b)`` arm labels, ``a - b``
    (the core's: ``family(CORE_FRACTIONS, (), jan=False)``)."""
    out = [(label("MTCT", f), label("UD", f)) for f in fractions]
    out += [(label("MTCT", f), label("End-to-end", f)) for f in e2e_fractions]
    out += [(label("MTCT", f), label("FTT matched", f)) for f in fractions]
    out += [(label("MTCT matched", f), label("UD", f)) for f in fractions]
    out += [(label("MTCT", f), label("DDAN", f)) for f in fractions]
    return out + [("No-Adapt", "JAN")] if jan else out


def _round(weight):
    """Two significant digits, as ``loss_balance.weight_grid`` rounds."""
    digits = 1 - int(math.floor(math.log10(abs(weight))))
    return round(weight, digits)


def weights(shards, base, overrides=(), batches=8):
    """The weighting rule, applied at each method's start (seed 0).

    MTCT and DDAN start their street stage from seed 0's shop model (every
    layer trainable); end-to-end starts from its untrained network. Each
    weight is 1 / (|grad cross| / |grad CE|) over ``batches`` triplet
    batches with every street label (``loss_balance.measure``), rounded to
    two significant digits.

    Returns:
        ``(weights, measurements)``: method -> weight, and method -> the
        ``loss_balance.measure`` dict.
    """
    import keras

    from mtct_tf import loss_balance

    shop = os.path.join(base, "_shop")
    if not os.path.exists(os.path.join(shop, "shop", "done.json")):
        raise ValueError(f"{shop}: the seed's shop stage is not trained")
    out, measured = {}, {}
    for name, (experiment, kind) in CROSS.items():
        keras.backend.clear_session()
        config = arms.config_of(experiment, shards, 0, 1.0, [
            *overrides, "street.finetune=all",
            f"street.cross_domain.kind={kind}",
            "street.cross_domain.weight=1"])
        m = loss_balance.measure(config, shop, batches=batches,
                                 verbose=False)
        measured[name] = m
        out[name] = _round(m["balancing_weight"])
    return out, measured


def matched_steps(shards, overrides, fraction):
    """UD's street batches at ``fraction``: its one stage's steps times the
    street share of its training records (labelled street photos among
    shop and labelled street ones), rounded; at least 1.

    Returns:
        ``(steps, counts)``.
    """
    import tensorflow as tf

    from mtct_tf import stages
    from mtct_tf.data import pipeline
    from mtct_tf.data import shards as shards_lib

    files = shards_lib.shard_files(shards, "train")
    n_shop = shards_lib.count_records(files, "shop")
    ds = pipeline.make_dataset(
        files, shards_lib.load_schema(shards), image_size=8, batch_size=256,
        training=False, domain="street", label_fraction=fraction,
        repeat=False)
    n_street = int(sum(int(tf.shape(x)[0]) for x, _ in ds))
    _, _, one_spe, one_epochs = stages.budget(
        arms.config_of("ud", shards, 0, fraction, overrides))
    steps = one_spe * one_epochs
    return max(1, round(steps * n_street / (n_shop + n_street))), {
        "ud_steps": steps, "shop_records": n_shop,
        "street_records": n_street}


def plan(w, matched, fractions=FRACTIONS, e2e_fractions=END_TO_END_FRACTIONS,
         jan=True):
    """``[(label, Arm), ...]``: every arm of one seed, cheapest first."""
    all_layers = ["street.finetune=all"]

    def street(method, f, kind="none", weight=None, steps=None):
        experiment = "ftt" if kind == "none" else "mtct"
        extra = [*all_layers]
        key = f"{method.lower().replace(' ', '_')}_all_{f:g}"
        if kind != "none":
            extra += [f"street.cross_domain.kind={kind}",
                      f"street.cross_domain.weight={weight:g}"]
            key += f"_w{weight:g}"
        if steps is not None:
            extra += ["street.epochs=1", f"street.steps_per_epoch={steps}"]
            key += f"_s{steps}"
        return arms.Arm(key, experiment, f, extra)

    out = [("No-Adapt", arms.no_adapt())]
    for f in fractions:
        out += [
            (label("FTT", f), street("FTT", f)),
            (label("MTCT", f), street("MTCT", f, "tste_poster", w["MTCT"])),
            (label("DDAN", f), street("DDAN", f, "coral", w["DDAN"])),
            (label("FTT matched", f), street("FTT matched", f,
                                             steps=matched[f])),
            (label("MTCT matched", f), street(
                "MTCT matched", f, "tste_poster", w["MTCT"], matched[f])),
        ]
    if jan:
        out.append(("JAN", arms.Arm(
            "jan_no_adapt", "no_adapt", 1.0, ["model.heads=joint"],
            shop_key="_shop_jan", shop_overrides=["model.heads=joint"])))
    out += [(label("UD", f), arms.control_arm("ud", 0, f))
            for f in fractions]
    out += [(label("End-to-end", f), arms.Arm(
        f"end_to_end_{f:g}_w{w['End-to-end']:g}", "end_to_end", f,
        [f"street.cross_domain.weight={w['End-to-end']:g}"]))
        for f in e2e_fractions]
    return out


class StreetValScore:
    """A Keras callback (built lazily) logging street *validation* mAP_cls
    after every epoch as ``street_val_mAP_cls`` (so into history.csv):
    the curves of the End-to-End vs. Curriculum figure."""

    def __new__(cls, shards, schema, image_size, margin):
        import keras

        from mtct_tf import evaluation, metrics
        from mtct_tf.data import pipeline

        ds = pipeline.make_dataset(
            pipeline.shard_files(shards, "val"), schema,
            image_size=image_size, batch_size=128, training=False,
            domain="street", margin=margin, repeat=False, decode_cache=0)
        names = list(schema.names)

        class Score(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                probs, labels, _ = evaluation.predict(self.model.net, ds)
                if logs is not None:
                    logs[SCORE_KEY] = round(100 * metrics.evaluate_predictions(
                        probs, labels, names)["mAP_cls"], 3)

        return Score()


# --------------------------------------------------------------------------
# The run.


def _compare(pairs, per_seed):
    """Paired comparisons of ``pairs`` with Holm's correction across all of
    them; a comparison whose arms did not run is kept (``"not run"``) and
    counted in the family, so Holm stays over the family's full size."""
    out = []
    for a, b in pairs:
        if a in per_seed and b in per_seed:
            out.append(dict(paired(per_seed[a], per_seed[b]), a=a, b=b))
        else:
            out.append({"a": a, "b": b, "differences": [], "mean": None,
                        "std": None, "interval": None, "p": None})
    adjusted, rejected = holm([float("nan") if c.get("p") is None
                               else c["p"] for c in out])
    for c, p_adj, rej in zip(out, adjusted, rejected):
        c["p_holm"] = p_adj
        c["holm"] = ("not run" if c["mean"] is None else
                     "not separated" if not rej else
                     "better" if c["mean"] > 0 else "worse")
    return out


def load_reuse(path, seeds, render_seed, items):
    """An earlier run's ``confirm.json`` whose arms are reused, not trained
    again (its run directories may be gone: a new checkout keeps only the
    committed results). Refused unless it ran the same seeds on the same
    data."""
    import json

    with open(path) as f:
        prior = json.load(f)
    info = prior["info"]
    for key, value in (("seeds", seeds), ("render_seed", render_seed),
                       ("items", items)):
        if info.get(key) != value:
            raise ValueError(f"{path}: ran with {key}={info.get(key)}, this "
                             f"run has {key}={value}; its arms cannot be "
                             "reused")
    return prior


def run(seeds=SEEDS, workdir="runs/confirm", out_dir="docs", overrides=(),
        render_seed=RENDER_SEED, items=arms.DATA_ITEMS, command=None,
        extension=False, reuse=None, only=None, log=print):
    """Runs the protocol's core arms (with ``extension``, every arm) over
    the seeds, reusing finished runs; writes the report.

    Args:
        reuse: path of an earlier run's ``confirm.json``; its arms (every
            seed finished) are taken from it, not trained, and so are the
            rule's weights (measured once, on seed 0).
        only: method names (``"End-to-end"``, ``"JAN"``, ...): train only
            their arms; the family's other comparisons read "not run".

    Returns:
        The report's data (also ``<out_dir>/results/confirm.json``).
    """
    from mtct_tf.data import pipeline

    start = time.time()
    command = command or "python -m mtct_tf.benchmark confirm"
    overrides = [*BUDGET, *overrides]
    prior = (load_reuse(reuse, seeds, render_seed, items) if reuse
             else None)
    reused = {name for name, v in (prior or {}).get("per_seed", {}).items()
              if len(v) == seeds}
    shards = arms.prepare_data(workdir, items, render_seed)
    schema = pipeline.load_schema(shards)
    config = arms.config_of("mtct", shards, 0, 1.0, overrides)

    def seed_dir(seed):
        return os.path.join(workdir, f"seed{seed}")

    score = StreetValScore(shards, schema, config.data.image_size,
                           config.data.margin)
    per, seconds, trained = {}, {}, 0

    def wanted(name):
        return name not in reused and (
            not only or name == "No-Adapt" and "No-Adapt" in only
            or any(name == m or name.startswith(m + " ") for m in only))

    def go(seed, name, arm):
        nonlocal trained
        curve = name.split(" ")[0] in CURVE_METHODS or name == "No-Adapt"
        r = arms.timed_run(arm, shards, seed, seed_dir(seed), overrides,
                           callbacks=[score] if curve else ())
        if prior is not None and abs(100 * r["chance_mAP_cls"]
                                     - prior["info"]["chance"]) > 1e-6:
            raise ValueError(
                f"{workdir}: the street test labels differ from those of "
                f"{reuse} (chance mAP_cls {100 * r['chance_mAP_cls']:.6f} "
                f"against {prior['info']['chance']:.6f}): not the same data")
        trained += r.pop("trained")
        per.setdefault(name, []).append(r)
        seconds[name] = seconds.get(name, 0.0) + r["seconds"]

    if prior is not None:
        w = prior["info"]["weights"]
        measured = prior["info"]["weight_measurements"]
    else:
        # The rule's weights need seed 0's shop model: No-Adapt trains it.
        go(0, "No-Adapt", arms.no_adapt())
        w, measured = weights(shards, seed_dir(0), overrides)
    log(f"[confirm] weights by the rule: {w}")
    fractions = FRACTIONS if extension else CORE_FRACTIONS
    scope = dict(fractions=fractions, jan=extension,
                 e2e_fractions=END_TO_END_FRACTIONS if extension else ())
    matched, matched_info = {}, {}
    for f in fractions:
        matched[f], matched_info[f] = matched_steps(shards, overrides, f)
    log(f"[confirm] budget-matched street steps: {matched}")
    todo = [(name, arm) for name, arm in plan(w, matched, **scope)
            if wanted(name)]
    log(f"[confirm] reused: {sorted(reused)}; to train: "
        f"{[name for name, _ in todo]}")
    for seed in range(seeds):
        for name, arm in todo:
            if seed == 0 and name == "No-Adapt" and prior is None:
                continue
            go(seed, name, arm)
        log(f"[confirm] seed {seed} done after "
            f"{(time.time() - start) / 60:.1f} min")

    minutes = (time.time() - start) / 60
    data = _assemble(per, prior, reused, seeds)
    data["family"] = _compare(
        family(CORE_FRACTIONS, (), jan=False), data["per_seed"])
    if extension:
        data["extension_family"] = _compare(family(**scope),
                                            data["per_seed"])
    invocations = (prior or {}).get("invocations") or (
        [{"command": prior["info"]["command"],
          "minutes": prior["info"]["minutes"],
          "arms": sorted(prior["per_seed"])}] if prior else [])
    invocations.append({"command": command, "minutes": minutes,
                        "arms": sorted(per), "trained_runs": trained})
    data["invocations"] = invocations
    chance = (prior["info"]["chance"] if prior is not None else 100 * float(
        np.mean([r["chance_mAP_cls"] for r in per["No-Adapt"]])))
    data["info"] = {
        "command": command, "minutes": minutes, "trained_runs": trained,
        "reused_from": reuse,
        "seeds": seeds, "render_seed": render_seed, "items": items,
        "fractions": list(fractions), "extension": extension,
        "render": arms.render_settings(workdir),
        "weights": w, "weight_measurements": measured,
        "matched_steps": {f"{f:g}": s for f, s in matched.items()},
        "matched_info": {f"{f:g}": v for f, v in matched_info.items()},
        "seconds": {**((prior or {}).get("info", {}).get("seconds", {})),
                    **seconds},
        "machine": f"{platform.processor() or platform.machine()}, "
                   f"{os.cpu_count()} CPUs",
        "street_test_images": (prior["info"]["street_test_images"]
                               if prior is not None else
                               per["No-Adapt"][0]["num_images"]),
        "chance": chance,
        "budget": _budget_text(config),
    }
    data["curves"] = {**(prior or {}).get("curves", {}),
                      **curves(workdir, seeds)}
    path = confirm_report.write_report(data, out_dir)
    log(f"[confirm] wrote {path} ({minutes:.1f} min)")
    return data


def _assemble(per, prior, reused, seeds):
    """Per-arm summaries, per-seed mAP_cls and retrieval of the arms trained
    now (``per``) and of those reused from ``prior``."""
    data = {
        "summary": {name: summarize(r) for name, r in per.items()},
        "per_seed": {name: [100 * x["mAP_cls"] for x in r]
                     for name, r in per.items()},
        "retrieval": {name: {key: [x[key] for x in r if key in x]
                             for key in ("retrieval",
                                         "retrieval_shop_gallery")}
                      for name, r in per.items()},
    }
    for name in reused:
        if name in per:
            continue
        for key in data:
            if name in prior.get(key, {}):
                data[key][name] = prior[key][name]
    return data


def _budget_text(config):
    return (f"shop {config.shop.epochs} x {config.shop.steps_per_epoch} "
            f"steps, street {config.street.epochs} x "
            f"{config.street.steps_per_epoch} steps (every layer), batch "
            f"{config.data.batch_size}, {config.data.image_size} px; "
            "one-stage methods get the sum")


def curves(workdir, seeds):
    """Street validation mAP_cls per epoch of the curve arms' stages:
    ``{arm label: {"steps": [...], "seconds": [...], "score": [...]}}``
    averaged over the seeds (steps count from the first stage's start;
    curriculum methods start with the shared shop stage)."""
    import csv

    from mtct_tf import runs

    def read(run_dir, stage):
        path = os.path.join(runs.stage_dir(run_dir, stage), runs.HISTORY_FILE)
        done = runs.read_done(run_dir, stage)
        rows = []
        with open(path) as f:
            for row in csv.DictReader(f):
                if row.get(SCORE_KEY):
                    rows.append((done["steps_per_epoch"],
                                 float(row["epoch_seconds"]),
                                 float(row[SCORE_KEY])))
        return rows

    out = {}
    for f in (FRACTIONS[0], FRACTIONS[-1]):
        arms_of = {
            "FTT": (f"ftt_all_{f:g}", ("shop", "street")),
            "MTCT": (None, ("shop", "street")),
            "UD": (f"ud_{f:g}" if f != 1 else "ud", ("united",)),
            "End-to-end": (None, ("joint",)),
        }
        for method, (key, stages) in arms_of.items():
            per_seed = []
            for seed in range(seeds):
                base = os.path.join(workdir, f"seed{seed}")
                if key is None:
                    prefix = ("mtct_all" if method == "MTCT"
                              else "end_to_end")
                    found = sorted(
                        d for d in os.listdir(base)
                        if d.startswith(f"{prefix}_{f:g}_w")) if \
                        os.path.isdir(base) else []
                    if not found:
                        continue
                    run_dir = os.path.join(base, found[0])
                else:
                    run_dir = os.path.join(base, key)
                if not os.path.isdir(run_dir):
                    continue
                rows = []
                try:
                    if stages[0] == "shop":
                        rows += read(os.path.join(base, "_shop"), "shop")
                    rows += read(run_dir, stages[-1])
                except (OSError, KeyError, ValueError):
                    continue
                per_seed.append(rows)
            if not per_seed:
                continue
            n = min(len(r) for r in per_seed)
            steps = np.cumsum([per_seed[0][i][0] for i in range(n)])
            out[label(method, f)] = {
                "steps": steps.tolist(),
                "seconds": np.mean([np.cumsum([r[i][1] for i in range(n)])
                                    for r in per_seed], axis=0).tolist(),
                "score": np.mean([[r[i][2] for i in range(n)]
                                  for r in per_seed], axis=0).tolist(),
                "seeds": len(per_seed)}
    return out


def add_arguments(parser):
    """The ``python -m mtct_tf.benchmark confirm`` command line."""
    parser.add_argument("--seeds", type=int, default=SEEDS)
    parser.add_argument("--workdir", default="runs/confirm",
                        help="data and runs (finished runs are reused)")
    parser.add_argument("--out", default="docs",
                        help="where RESULTS_2.md, results/ and images/ go")
    parser.add_argument("--items", type=int, default=arms.DATA_ITEMS,
                        help="rendered items (fewer for a quick trial)")
    parser.add_argument("--render_seed", type=int, default=RENDER_SEED)
    parser.add_argument("--extension", action="store_true",
                        help="also the 25%% fraction, end-to-end and JAN "
                             "(docs/PROTOCOL_2.md's extension run)")
    parser.add_argument(
        "--reuse", default=None, metavar="CONFIRM_JSON",
        help="an earlier run's results/confirm.json: its arms and the "
             "rule's weights are taken from it, not trained again (e.g. "
             "the committed core run, when its run directories are gone)")
    parser.add_argument(
        "--only", default=None, metavar="METHODS",
        help="comma-separated methods (e.g. End-to-end,JAN): train only "
             "their arms now; comparisons without their arms read 'not run'")
    parser.add_argument("--override", action="append", default=[],
                        metavar="KEY=VALUE",
                        help="applied to every arm alike (trials only: the "
                             "protocol fixes the budget)")

    def func(args):
        import shlex
        import sys

        command = "python -m mtct_tf.benchmark " + " ".join(
            shlex.quote(a) for a in sys.argv[1:])
        run(seeds=args.seeds, workdir=args.workdir, out_dir=args.out,
            overrides=args.override, render_seed=args.render_seed,
            items=args.items, command=command, extension=args.extension,
            reuse=args.reuse,
            only=tuple(args.only.split(",")) if args.only else None)
        return 0

    parser.set_defaults(func=func)
