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


def run(seeds=SEEDS, workdir="runs/confirm", out_dir="docs", overrides=(),
        render_seed=RENDER_SEED, items=arms.DATA_ITEMS, command=None,
        extension=False, log=print):
    """Runs the protocol's core arms (with ``extension``, every arm) over
    the seeds, reusing finished runs; writes the report.

    Returns:
        The report's data (also ``<out_dir>/results/confirm.json``).
    """
    from mtct_tf.data import pipeline

    start = time.time()
    overrides = [*BUDGET, *overrides]
    shards = arms.prepare_data(workdir, items, render_seed)
    schema = pipeline.load_schema(shards)
    config = arms.config_of("mtct", shards, 0, 1.0, overrides)

    def seed_dir(seed):
        return os.path.join(workdir, f"seed{seed}")

    score = StreetValScore(shards, schema, config.data.image_size,
                           config.data.margin)
    per, seconds, trained = {}, {}, 0

    def go(seed, name, arm):
        nonlocal trained
        curve = name.split(" ")[0] in CURVE_METHODS or name == "No-Adapt"
        r = arms.timed_run(arm, shards, seed, seed_dir(seed), overrides,
                           callbacks=[score] if curve else ())
        trained += r.pop("trained")
        per.setdefault(name, []).append(r)
        seconds[name] = seconds.get(name, 0.0) + r["seconds"]

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
    for seed in range(seeds):
        for name, arm in plan(w, matched, **scope):
            if seed == 0 and name == "No-Adapt":
                continue
            go(seed, name, arm)
        log(f"[confirm] seed {seed} done after "
            f"{(time.time() - start) / 60:.1f} min")

    comparisons = []
    for a, b in family(**scope):
        values = [[100 * r["mAP_cls"] for r in per[x]] for x in (a, b)]
        comparisons.append(dict(paired(*values), a=a, b=b))
    adjusted, rejected = holm([c.get("p", float("nan"))
                               for c in comparisons])
    for c, p_adj, rej in zip(comparisons, adjusted, rejected):
        c["p_holm"] = p_adj
        c["holm"] = ("not separated" if not rej else
                     "better" if c["mean"] > 0 else "worse")
    minutes = (time.time() - start) / 60
    data = {
        "summary": {name: summarize(r) for name, r in per.items()},
        "per_seed": {name: [100 * x["mAP_cls"] for x in r]
                     for name, r in per.items()},
        "retrieval": {name: {key: [x[key] for x in r if key in x]
                             for key in ("retrieval",
                                         "retrieval_shop_gallery")}
                      for name, r in per.items()},
        "family": comparisons,
        "info": {
            "command": command or "python -m mtct_tf.benchmark confirm",
            "minutes": minutes, "trained_runs": trained,
            "seeds": seeds, "render_seed": render_seed, "items": items,
            "fractions": list(fractions), "extension": extension,
            "render": arms.render_settings(workdir),
            "weights": w, "weight_measurements": measured,
            "matched_steps": {f"{f:g}": s for f, s in matched.items()},
            "matched_info": {f"{f:g}": v for f, v in matched_info.items()},
            "seconds": seconds,
            "machine": f"{platform.processor() or platform.machine()}, "
                       f"{os.cpu_count()} CPUs",
            "street_test_images": per["No-Adapt"][0]["num_images"],
            "chance": 100 * float(np.mean(
                [r["chance_mAP_cls"] for r in per["No-Adapt"]])),
            "budget": _budget_text(config),
        },
        "curves": curves(workdir, seeds),
    }
    path = confirm_report.write_report(data, out_dir)
    log(f"[confirm] wrote {path} ({minutes:.1f} min)")
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
            items=args.items, command=command, extension=args.extension)
        return 0

    parser.set_defaults(func=func)
