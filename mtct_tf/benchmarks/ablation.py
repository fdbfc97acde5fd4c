"""The ablation benchmark of SPEC §5 on X-Domain-synth.

``python -m mtct_tf.benchmark ablation --seeds 3`` renders the benchmark data
(fixed renderer settings), then for every seed trains and evaluates on the
street test split:

* the baselines No-Adapt, UD, FTT, end-to-end and MTCT;
* MTCT with every cross-domain loss (none = FTT, contrastive, triplet,
  t-STE poster = MTCT, t-STE canonical);
* the small-data curve: FTT and MTCT with 10%, 25% and 100% of the street
  training items' labels (No-Adapt uses no street label at all).

Every method uses the ``synth_benchmark`` experiment unchanged: same data,
model, optimiser and step budget (see ``training``); nothing is tuned per
method. Two-stage methods of one seed share one shop stage, trained once.
Results go to ``docs/RESULTS.md``, ``docs/results/ablation.json`` and
``docs/images/ablation.png``.
"""

import json
import os
import platform
import shutil
import time

import numpy as np

from mtct_tf import fileio

# Rows of the tables: name -> (registered experiment, label fraction).
METHODS = {
    "No-Adapt": "no_adapt",
    "UD": "ud",
    "FTT": "ftt",
    "End-to-end": "end_to_end",
    "MTCT": "mtct",
}
LOSSES = {
    "none (FTT)": "ftt",
    "contrastive": "mtct_contrastive",
    "triplet": "mtct_triplet",
    "t-STE poster (MTCT)": "mtct",
    "t-STE canonical": "mtct_tste_canonical",
}
FRACTIONS = (0.1, 0.25, 1.0)
CURVE_METHODS = ("ftt", "mtct")
COLUMNS = ("mAP_cls", "mP_ins", "mR_ins")

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
    from mtct_tf.data import convert
    from mtct_tf.data import synthetic

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
    if not os.path.exists(os.path.join(shards, convert.SUMMARY)):
        if not os.path.exists(os.path.join(data, "manifest.jsonl")):
            synthetic.render_dataset(data, progress=False, **settings)
        convert.convert_manifest(os.path.join(data, "manifest.jsonl"), shards)
    return shards


def _config(experiment, shards, seed, fraction, overrides):
    from mtct_tf import configs

    config = configs.build(experiment, None, [
        f"data.shards_dir={shards}", f"seed={seed}",
        f"data.street_label_fraction={fraction}", *overrides])
    return config


def _run(experiment, shards, seed, fraction, run_dir, shop_cache, overrides):
    """Trains (reusing a cached shop stage) and evaluates one run."""
    import keras

    from mtct_tf import evaluation, runs, training
    from mtct_tf import stages as stages_lib

    config = _config(experiment, shards, seed, fraction, overrides)
    stage = stages_lib.final_stage(config.method)
    result_path = os.path.join(run_dir, "eval",
                               f"{stage}_street_test.json")
    if os.path.exists(result_path):
        with open(result_path) as f:
            return json.load(f)
    plan = stages_lib.METHODS[config.method]
    os.makedirs(run_dir, exist_ok=True)
    if plan[0] == "shop" and len(plan) > 1:
        # MTCT, FTT and the loss variants start from the same shop stage.
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
    evaluation.evaluate(run_dir, split="test", domain="street",
                        config=config)
    with open(result_path) as f:
        return json.load(f)


def _summary(runs):
    """Mean and std over seeds of each table column (in %)."""
    out = {}
    for key in COLUMNS:
        values = [100 * r[key] for r in runs]
        out[key] = (float(np.mean(values)), float(np.std(values)))
    names = list(runs[0]["ap"])
    out["ap"] = {a: (float(np.mean([100 * r["ap"][a] for r in runs])),
                     float(np.std([100 * r["ap"][a] for r in runs])))
                 for a in names}
    return out


def _cell(mean_std):
    mean, std = mean_std
    return f"{mean:.2f} ± {std:.2f}"


def _table(rows, with_attributes):
    first = next(iter(rows.values()))
    names = list(first["ap"]) if with_attributes else []
    header = ["Method"] + [a.replace("_", " ").capitalize() for a in names]
    header += list(COLUMNS)
    lines = ["| " + " | ".join(header) + " |",
             "|---" * len(header) + "|"]
    for name, s in rows.items():
        cells = [_cell(s["ap"][a]) for a in names]
        cells += [_cell(s[k]) for k in COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _plot(summary, path):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for ax, key, title in ((axes[0], "methods", "Methods"),
                           (axes[1], "losses", "Cross-domain losses")):
        rows = summary[key]
        names = list(rows)
        means = [rows[n]["mAP_cls"][0] for n in names]
        stds = [rows[n]["mAP_cls"][1] for n in names]
        ax.bar(range(len(names)), means, yerr=stds, capsize=3,
               color="#4c72b0")
        ax.set_xticks(range(len(names)), names, rotation=20, fontsize=8)
        ax.set_ylabel("street test mAP_cls (%)")
        ax.set_title(title)
        low = min(m - s for m, s in zip(means, stds))
        ax.set_ylim(max(0, low - 5), max(means) + 5)
    fig.tight_layout()
    with fileio.replacing(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5, 3.6))
    curve = summary["curve"]
    for method, points in curve.items():
        xs = [100 * float(f) for f in points]
        means = [points[f]["mAP_cls"][0] for f in points]
        stds = [points[f]["mAP_cls"][1] for f in points]
        ax.errorbar(xs, means, yerr=stds, marker="o", capsize=3,
                    label=method)
    ax.axhline(summary["methods"]["No-Adapt"]["mAP_cls"][0], color="grey",
               ls="--", label="No-Adapt")
    ax.set_xscale("log")
    ax.set_xticks([10, 25, 100], ["10%", "25%", "100%"])
    ax.set_xlabel("street training items with labels")
    ax.set_ylabel("street test mAP_cls (%)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    curve_path = path.replace(".png", "_small_data.png")
    with fileio.replacing(curve_path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


def _step(low, high, noise):
    """``"up"`` / ``"down"`` when ``high - low`` exceeds ``noise``, else
    ``"not separated"``."""
    if high - low > noise:
        return "up"
    if low - high > noise:
        return "down"
    return "not separated"


def _claim(steps):
    """A claim holds only when every step it needs is separated upwards;
    it does not hold when one is separated the other way; otherwise the
    data do not separate it."""
    if all(s == "up" for s in steps):
        return "**holds**"
    if any(s == "down" for s in steps):
        return "**does not hold**"
    return "**not separated**"


def _verdicts(summary):
    """The paper's two claims, judged against the spread over seeds.

    A gap counts only when it exceeds the larger of the two standard
    deviations over seeds; a gap within that reads "not separated", never
    "holds".
    """
    m = {k: v["mAP_cls"] for k, v in summary["methods"].items()}
    order = ["No-Adapt", "UD", "FTT", "MTCT"]
    steps = [_step(m[a][0], m[b][0], max(m[a][1], m[b][1]))
             for a, b in zip(order, order[1:])]
    unresolved = [f"{a} vs {b}" for (a, b), s in
                  zip(zip(order, order[1:]), steps) if s == "not separated"]
    lines = [
        "Paper's ordering No-Adapt < UD < FTT < MTCT (mAP_cls means): "
        + _claim(steps) + " — "
        + " / ".join(f"{k} {m[k][0]:.2f}" for k in order) + "."
        + (f" Within noise (gap ≤ the larger std over seeds): "
           f"{', '.join(unresolved)}." if unresolved else "")
    ]
    gap, noise = {}, {}
    for f, ftt in summary["curve"]["FTT"].items():
        mtct = summary["curve"]["MTCT"][f]["mAP_cls"]
        gap[f] = mtct[0] - ftt["mAP_cls"][0]
        noise[f] = max(mtct[1], ftt["mAP_cls"][1])
    fractions = sorted(gap, key=float)
    smallest = fractions[0]
    # MTCT must beat FTT at the smallest fraction, and by more there than
    # at every larger fraction, each beyond the noise.
    steps = [_step(0.0, gap[smallest], noise[smallest])] + [
        _step(gap[f], gap[smallest], max(noise[f], noise[smallest]))
        for f in fractions[1:]]
    resolved = [f for f in fractions if abs(gap[f]) > noise[f]]
    lines.append(
        "Small-data claim (MTCT's gain over FTT is largest with the fewest "
        "street labels): " + _claim(steps) + " — gain "
        + ", ".join(f"{100 * float(f):g}%: {gap[f]:+.2f}" for f in fractions)
        + " mAP_cls points"
        + ("." if resolved else
           "; every gap is within one std over seeds, so the data do not"
           " separate MTCT from FTT at any label fraction."))
    return lines


def write_report(summary, info, out_dir):
    docs = out_dir
    os.makedirs(os.path.join(docs, "results"), exist_ok=True)
    os.makedirs(os.path.join(docs, "images"), exist_ok=True)
    json_path = os.path.join(docs, "results", "ablation.json")
    fileio.write_json(json_path, {"summary": summary, "info": info})
    png = os.path.join(docs, "images", "ablation.png")
    _plot(summary, png)
    curve_rows = {}
    for method, points in summary["curve"].items():
        for f, s in points.items():
            curve_rows[f"{method}, {100 * float(f):g}% street labels"] = s
    render_seed = info.get("render_seed", DATA_SEED)
    text = f"""# Results: MTCT and its ablations on X-Domain-synth

Produced by `{info['command']}` in {info['minutes']:.1f} minutes on this
machine ({info['machine']}){info.get('note', '')}; {info['seeds']} seeds, mean ± std over seeds,
street test split ({info['street_test_images']} images), percentages.
Every method ran the `synth_benchmark` experiment unchanged (data: {info['items']}
items rendered with seed {render_seed}; model: `small` MTN at 64 px; budget:
{info['budget']}), so the comparison is at equal data, model and steps.
Per-attribute columns are class-level AP (SPEC §6). Chance mAP_cls (a
predictor that ignores the image) is {info['chance']:.2f}.

## Verdict

{chr(10).join('- ' + v for v in _verdicts(summary))}

## MTN and transfer learning (the paper's second table)

{_table(summary['methods'], with_attributes=True)}

## Cross-domain loss functions

{_table(summary['losses'], with_attributes=False)}

## Small street data

MTCT vs FTT with the labels of only part of the street training items (the
same nested subsets for both; No-Adapt uses none:
{_cell(summary['methods']['No-Adapt']['mAP_cls'])}).

{_table(curve_rows, with_attributes=False)}

![methods and losses](images/ablation.png)
![small data](images/ablation_small_data.png)

Raw numbers: `docs/results/ablation.json`. Paper (X-Domain, real photos):
No-Adapt 51.38, UD 58.76, FTT 61.82, MTCT 64.35 mAP_cls.
"""
    path = os.path.join(docs, "RESULTS.md")
    fileio.write_text(path, text)
    return path


def run(seeds=3, workdir="runs/benchmark", out_dir="docs", items=DATA_ITEMS,
        overrides=(), command="python -m mtct_tf.benchmark ablation",
        render_seed=DATA_SEED):
    """Runs the whole ablation and writes the report; returns the summary."""
    from mtct_tf import configs

    start = time.time()
    shards = prepare_data(workdir, items, render_seed)
    per = {}  # (row table, name) -> list of results over seeds

    def add(key, result):
        per.setdefault(key, []).append(result)

    for seed in range(seeds):
        base = os.path.join(workdir, f"seed{seed}")
        shop_cache = os.path.join(base, "_shop")
        done = {}
        for name, experiment in {**METHODS, **LOSSES}.items():
            if experiment not in done:
                done[experiment] = _run(
                    experiment, shards, seed, 1.0,
                    os.path.join(base, experiment), shop_cache, overrides)
            add(("methods" if name in METHODS else "losses", name),
                done[experiment])
        for method in CURVE_METHODS:
            for fraction in FRACTIONS:
                if fraction == 1.0:
                    result = done[method]
                else:
                    result = _run(method, shards, seed, fraction,
                                  os.path.join(base, f"{method}_{fraction}"),
                                  shop_cache, overrides)
                add(("curve", method.upper(), str(fraction)), result)
        print(f"seed {seed} done after {(time.time() - start) / 60:.1f} min")

    summary = {"methods": {}, "losses": {}, "curve": {}}
    for key, runs in per.items():
        if key[0] == "curve":
            summary["curve"].setdefault(key[1], {})[key[2]] = _summary(runs)
        else:
            summary[key[0]][key[1]] = _summary(runs)
    config = _config("synth_benchmark", shards, 0, 1.0, overrides)
    first = per[("methods", "MTCT")][0]
    info = {
        "command": command,
        "minutes": (time.time() - start) / 60,
        "machine": f"{platform.processor() or platform.machine()}, "
                   f"{os.cpu_count()} CPUs",
        "seeds": seeds,
        "items": items,
        "render_seed": render_seed,
        "street_test_images": first["num_images"],
        "chance": 100 * float(np.mean(
            [r["chance_mAP_cls"] for r in per[("methods", "MTCT")]])),
        "budget": (f"shop {config.shop.epochs} x {config.shop.steps_per_epoch}"
                   f" steps, street {config.street.epochs} x "
                   f"{config.street.steps_per_epoch} steps, batch "
                   f"{config.data.batch_size}; one-stage methods get the sum"),
        "config": configs.describe(config),
    }
    path = write_report(summary, info, out_dir)
    print(f"wrote {path} ({info['minutes']:.1f} min)")
    return summary


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
    parser.add_argument("--override", action="append", default=[],
                        metavar="KEY=VALUE",
                        help="applied to every method alike")

    def func(args):
        command = "python -m mtct_tf.benchmark ablation " + " ".join(
            f"--seeds {args.seeds}".split()
            + ([f"--render_seed {args.render_seed}"]
               if args.render_seed != DATA_SEED else [])
            + [f"--override {o}" for o in args.override])
        run(seeds=args.seeds, workdir=args.workdir, out_dir=args.out,
            items=args.items, overrides=args.override, command=command,
            render_seed=args.render_seed)
        return 0

    parser.set_defaults(func=func)
