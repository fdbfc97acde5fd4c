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

The parts, as the speed benchmark's: ``ablation_arms`` (the arms, the data
and the cached runs), ``ablation_stats`` (summaries and paired verdicts),
``ablation_report`` (the Markdown and ``--show``) and ``ablation_plots``;
this module runs the protocol over the seeds (``run``) and is the command
line.
"""

import json
import os
import platform
import sys
import time

import numpy as np

from mtct_tf.benchmarks import ablation_arms as arms
from mtct_tf.benchmarks.ablation_arms import (  # noqa: F401
    CONTROLS, DATA_ITEMS, DATA_SEED, DEFAULT_CONTROLS, FRACTIONS, LOSSES,
    MODES, control_arm, control_label, oracle_arm, parse_controls,
    prepare_data, record_invocation, street_arm)
from mtct_tf.benchmarks.ablation_report import (  # noqa: F401
    diff_cell, headline, show, verdict_lines, wall_times, write_report)
from mtct_tf.benchmarks.ablation_stats import (  # noqa: F401
    comparisons, paired, summarize)

# Not all used here: the benchmark's names, importable from this module as
# before it was split, some under their earlier private names.
_summary, _diff_cell, _headline, _wall_times = (summarize, diff_cell,
                                                headline, wall_times)


def run(seeds=3, workdir="runs/benchmark", out_dir="docs", items=DATA_ITEMS,
        overrides=(), command="python -m mtct_tf.benchmark ablation",
        render_seed=DATA_SEED, cross_weight=None, core=False, controls=None,
        losses=False, fractions=FRACTIONS, replication=None):
    """Runs the protocol's arms and writes the report; returns its data.

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
        controls: the one-stage controls, as ``parse_controls`` returns
            them: ``{"ud": (seeds, (label fractions...)), ...}``; ``None``:
            UD on seed 0 with every label (``DEFAULT_CONTROLS``).
        losses: also MTCT with the other cross-domain losses.
        fractions: street label fractions of FTT and MTCT.
        replication: another run's ``results/ablation.json``, whose
            verdicts are set beside these.
    """
    from mtct_tf import configs

    if controls is None:
        controls = parse_controls(",".join(DEFAULT_CONTROLS), 1)
    start = time.time()
    shards = prepare_data(workdir, items, render_seed)

    def seed_dir(seed):
        return os.path.join(workdir, f"seed{seed}")

    if cross_weight is None:
        weight, grid, grid_seconds, grid_trained = arms.select_cross_weight(
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
            return arms.timed_run(arm, shards, seed, base, overrides,
                                  **options)

        add("No-Adapt", go(arms.no_adapt()))
        add("Shop model on shop test", go(arms.no_adapt(), domain="shop"))
        for mode in MODES:
            for f in fractions:
                add(f"FTT {mode} {f:g}", go(street_arm("ftt", mode, f)))
                add(f"MTCT {mode} {f:g}",
                    go(street_arm("mtct", mode, f, weight)))
        if not core:
            for mode in MODES:
                add(f"Oracle {mode}", go(oracle_arm(mode)))
            for name, experiment in (LOSSES.items() if losses else ()):
                add(f"MTCT fc 1, {name}",
                    go(arms.loss_arm(experiment, weight)))
        print(f"seed {seed} done after {(time.time() - start) / 60:.1f} min",
              flush=True)
    if not core:
        # The one-stage controls last: each costs one to four shop stages.
        for seed in range(seeds):
            for name, experiment in CONTROLS.items():
                n, control_fractions = controls.get(experiment, (0, ()))
                if seed >= n:
                    continue
                for f in control_fractions:
                    add(control_label(name, f), arms.timed_run(
                        control_arm(experiment, weight, f), shards, seed,
                        seed_dir(seed), overrides))
        print(f"controls done after {(time.time() - start) / 60:.1f} min",
              flush=True)

    summary = {label: summarize(results) for label, results in per.items()}
    verdicts = {
        "mAP_cls": comparisons(per, fractions=fractions),
        "retrieval top-10": comparisons(
            per, metric=lambda r: 100 * r["retrieval"]["10"],
            fractions=(fractions[0], fractions[-1])),
    }
    config = arms.config_of("mtct", shards, 0, 1.0, overrides)
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
        # The most seeds any control ran on (0: none ran).
        "control_seeds": 0 if core else min(seeds, max(
            (n for n, _ in controls.values()), default=0)),
        "core": core,
        "fractions": list(fractions),
        "controls": [] if core else list(controls),
        "control_plan": ({} if core else {k: [v[0], list(v[1])]
                                          for k, v in controls.items()}),
        "items": items,
        "render_seed": render_seed,
        "render": arms.render_settings(workdir),
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
            core=args.core,
            controls=parse_controls(args.controls, args.control_seeds),
            losses=args.losses,
            fractions=tuple(sorted(float(f)
                                   for f in args.fractions.split(","))),
            replication=args.replication)
        return 0

    parser.set_defaults(func=func)
