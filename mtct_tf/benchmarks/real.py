"""Real-photo benchmark: ``python -m mtct_tf.benchmark real --data DIR``.

The ``real_photos`` experiment trained from scratch on a folder of real,
labelled garment photos (``clothing-dataset-small`` by default: CC0 phone
photos, 10 classes; its test photos come from photographers absent from
train), once per seed, then scored on the test split once per seed:
top-1, mAP_cls, per-class AP, a confusion matrix, validation top-1 against
wall seconds, training time and images/s. Writes docs/RESULTS_REAL.md and
its figures.

Choices of model and settings are made on the validation split only
(``--compare``: candidates under one wall-clock budget, validation top-1,
the table of docs/REAL_PHOTOS.md); the test split is read once per seed,
by the final evaluation here.

Runs live in ``--work_dir`` (default ``runs/real_benchmark``); a finished
seed is not trained again, so an interrupted benchmark resumes.
"""

import csv
import dataclasses
import json
import os
import platform
import time

import numpy as np

from mtct_tf import fileio

EXPERIMENT = "real_photos"
DOC = "docs/RESULTS_REAL.md"
DESIGN_DOC = "docs/REAL_PHOTOS.md"
IMAGES = "docs/images"
DEFAULT_DATA = os.path.join(os.pardir, "shared", "data",
                            "clothing-dataset-small")
SOURCE = {
    "name": "clothing-dataset-small",
    "repository": "https://github.com/alexeygrigorev/clothing-dataset-small",
    "licence": "CC0 1.0 (public domain)",
    "get": "git clone https://github.com/alexeygrigorev/"
           "clothing-dataset-small",
}
COMPARE_SECTION = "compare"


def prepare(data, work_dir, *, progress=True):
    """The shards of ``data``: a shard folder as it is, or a photo folder
    imported (``data/image_folder.py``) into ``work_dir/data`` once.

    Returns:
        The shards directory.
    """
    from mtct_tf.data import convert, image_folder

    if os.path.isfile(os.path.join(data, convert.SUMMARY)):
        return data
    out = os.path.join(work_dir, "data")
    shards = os.path.join(out, "shards")
    report = os.path.join(out, "conversion.json")
    if os.path.isfile(os.path.join(shards, convert.SUMMARY)) and \
            os.path.isfile(report):
        with open(report, encoding="utf-8") as f:
            if json.load(f)["root"] == os.path.abspath(data):
                return shards
    report = image_folder.import_image_folder(data, out)
    convert.convert_manifest(report["manifest"], shards, progress=progress)
    return shards


@dataclasses.dataclass
class SeedResult:
    """One seed's run and its scores."""

    seed: int
    run_dir: str
    test: dict
    confusion: list
    curve: list  # [(cumulative wall seconds, val top-1), ...]
    steps: int
    batch_size: int
    train_seconds: float
    best_val_top1: float


def _curve(stage_dir, attribute):
    """(cumulative epoch seconds, validation top-1) of a stage's epochs."""
    from mtct_tf import runs

    path = os.path.join(stage_dir, runs.HISTORY_FILE)
    out, total = [], 0.0
    with open(path, encoding="utf-8") as f:
        for row in csv.DictReader(f):
            total += float(row.get("epoch_seconds") or "nan")
            out.append((total, float(row[f"val_{attribute}_acc"])))
    return out


def run_seed(shards, seed, work_dir, overrides=(), *, experiment=EXPERIMENT,
             verbose="auto"):
    """Trains one seed (unless done) and scores its test split once."""
    from mtct_tf import configs, evaluation, metrics, runs, training
    from mtct_tf.data import pipeline

    config = configs.build(experiment, overrides=[
        f"data.shards_dir={shards}", f"seed={seed}", *overrides])
    run_dir = os.path.join(work_dir, f"seed{seed}")
    results = training.run(config, run_dir, verbose=verbose)
    done = results[config_stage(config)]
    schema = pipeline.load_schema(shards)
    attribute = schema.names[0]
    net = runs.load_stage(run_dir, config_stage(config), schema,
                          f"of {shards}")
    ds = pipeline.make_dataset(
        pipeline.shard_files(shards, "test"), schema,
        image_size=net.image_size, batch_size=64, training=False,
        margin=config.data.margin, repeat=False)
    probs, labels, _ = evaluation.predict(net, ds)
    test = metrics.evaluate_predictions(probs, labels, [attribute])
    y = labels[attribute]
    pred = probs[attribute].argmax(-1)
    k = schema[attribute].num_values
    confusion = np.zeros((k, k), int)
    np.add.at(confusion, (y[y >= 0], pred[y >= 0]), 1)
    curve = _curve(runs.stage_dir(run_dir, config_stage(config)), attribute)
    return SeedResult(
        seed=seed, run_dir=run_dir, test=test,
        confusion=confusion.tolist(), curve=curve, steps=done["steps"],
        batch_size=config.data.batch_size,
        train_seconds=float(done["seconds"]),
        best_val_top1=max(v for _, v in curve))


def config_stage(config):
    from mtct_tf import stages

    return stages.final_stage(config.method)


def serve_check(result, shards, work_dir, image_path):
    """Exports a seed's model and runs its SavedModel on the test JPEGs.

    The SavedModel is loaded with the TF1 session loader (the MetaGraph and
    its restore op, then the signature's tensors by name: what TF Serving
    and ``saved_model_cli run`` do) and fed each test photo's file bytes;
    its top-1 is compared with the Keras model's on the evaluation
    pipeline's images. ``predict`` then annotates the first test photo of
    the manifest (a fixed rule) into ``image_path``.

    Returns:
        Dict: ``photos``, ``same_top1``, ``max_abs_diff`` of the
        probabilities, the export's path and the annotated photo's text.
    """
    import tensorflow as tf

    from mtct_tf import export_lib, predicting, runs
    from mtct_tf.data import pipeline

    schema = pipeline.load_schema(shards)
    attribute = schema.names[0]
    net, _, margin = runs.load_model_and_schema(result.run_dir)
    base = os.path.join(work_dir, "serving")
    version = export_lib.latest_version_dir(os.path.join(base, "mtct"))
    if version is None:
        version = export_lib.export_saved_model(net, schema, base)
    files = pipeline.shard_files(shards, "test")
    encoded = [pipeline.parse_example(s, schema)["encoded"].numpy()
               for s in tf.data.TFRecordDataset(files)]
    ds = pipeline.make_dataset(files, schema, image_size=net.image_size,
                               batch_size=64, training=False, margin=margin,
                               repeat=False)
    keras_probs = np.concatenate(
        [np.asarray(net.predict_on_batch(x)[attribute]) for x, _ in ds])
    graph = tf.Graph()
    with graph.as_default(), tf.compat.v1.Session(graph=graph) as sess:
        meta = tf.compat.v1.saved_model.loader.load(
            sess, [tf.saved_model.SERVING], version)
        sig = meta.signature_def[export_lib.SIGNATURE_IMAGES]
        out = {k: sig.outputs[f"{attribute}_{k}"].name
               for k in ("probabilities", "index")}
        served = [sess.run(out, {sig.inputs[export_lib.INPUT].name:
                                 encoded[i:i + 32]})
                  for i in range(0, len(encoded), 32)]
    probs = np.concatenate([s["probabilities"] for s in served])
    index = np.concatenate([s["index"] for s in served])
    manifest = os.path.join(os.path.dirname(shards), "manifest.jsonl")
    text = None
    if os.path.exists(manifest):
        predictor = predicting.load_predictor(version)
        note = predicting.find_annotation(manifest, schema, split="test",
                                          domain="shop")
        photo = predicting.read_photo(note.path)
        pred = predictor.predict_bytes(photo, top_k=3)
        predicting.annotate(photo, pred, image_path, note)
        text = predicting.format_prediction(note.path, pred, note)
    return {"photos": len(encoded),
            "same_top1": int((index == keras_probs.argmax(-1)).sum()),
            "max_abs_diff": float(np.abs(probs - keras_probs).max()),
            "export": version, "predict": text}


# --------------------------------------------------------------------------
# Figures and the report.


def confusion_figure(confusion, values, path, title):
    """A confusion-matrix PNG (rows: annotated, columns: predicted)."""
    from matplotlib.figure import Figure

    m = np.asarray(confusion, float)
    share = m / np.maximum(m.sum(1, keepdims=True), 1)
    fig = Figure(figsize=(7.2, 6.2))
    ax = fig.add_subplot()
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(values)):
        for j in range(len(values)):
            if m[i, j]:
                ax.text(j, i, int(m[i, j]), ha="center", va="center",
                        fontsize=8,
                        color="white" if share[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(values)), values, rotation=45, ha="right")
    ax.set_yticks(range(len(values)), values)
    ax.set_xlabel("predicted")
    ax.set_ylabel("annotated")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fileio.save_figure(fig, path)


def curve_figure(results, path, title, target=None):
    """Validation top-1 against cumulative training wall seconds."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.2))
    ax = fig.add_subplot()
    for r in results:
        t, v = zip(*r.curve)
        ax.plot(t, v, marker=".", label=f"seed {r.seed}")
    if target is not None:
        ax.axhline(target, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("training wall seconds (with validation passes)")
    ax.set_ylabel("validation top-1")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fileio.save_figure(fig, path)


def _mean_std(values):
    values = np.asarray(values, float)
    return float(values.mean()), float(values.std(ddof=1)) if len(
        values) > 1 else 0.0


def report(results, *, schema, shards, config, command, seconds,
           image_prefix, served=None):
    """The Markdown of docs/RESULTS_REAL.md."""
    attribute = schema.names[0]
    values = schema[attribute].values
    top1 = [100 * r.test["top1"][attribute] for r in results]
    maps = [100 * r.test["mAP_cls"] for r in results]
    m1, s1 = _mean_std(top1)
    m2, s2 = _mean_std(maps)
    summary = _summary(shards)
    lines = [
        "# Real photos: training from scratch on clothing-dataset-small",
        "",
        f"Written by `{command}` (`mtct_tf/benchmarks/real.py`); do not "
        "edit by hand. Settings were chosen on the validation split "
        f"only ([{DESIGN_DOC}]({os.path.basename(DESIGN_DOC)})); the test "
        "split is read once per seed, here.",
        "",
        f"**Test top-1 {m1:.1f} ± {s1:.1f}%, mAP_cls {m2:.1f} ± {s2:.1f}** "
        f"(mean ± std over {len(results)} seeds; chance top-1 "
        f"{100 / len(values):.0f}% for {len(values)} classes, "
        f"{100 * _majority(results, attribute):.0f}% for always the most "
        "frequent test class), from scratch: nothing pretrained.",
        "",
        "## Data",
        "",
        f"[{SOURCE['name']}]({SOURCE['repository']}), {SOURCE['licence']}: "
        "phone photos of garments on hangers, beds and floors; the test "
        "photos were taken by photographers none of whom took a train "
        f"photo. Get it with `{SOURCE['get']}`.",
        "",
        "| split | photos |",
        "|---|---|",
    ] + [f"| {s} | {n} |" for s, n in summary.items()] + [
        "",
        "## Model and training",
        "",
        f"Experiment `{config.name}` ({config.model.backbone} "
        f"{config.model.preset if config.model.backbone == 'nin' else ''}"
        f" trunk, {config.data.image_size} px, batch "
        f"{config.data.batch_size}, {config.shop.epochs} x "
        f"{config.shop.steps_per_epoch} steps, {config.shop.optimizer} lr "
        f"{config.shop.learning_rate:g}, augment `{config.data.augment}`"
        f" (min area {config.data.crop_min_area:g})). Machine: "
        f"{platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} logical CPUs; the whole benchmark took "
        f"{seconds / 60:.1f} min.",
        "",
        "| seed | test top-1 | test mAP_cls | best val top-1 | steps | "
        "training s | images/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        rate = r.steps * r.batch_size / r.train_seconds
        lines.append(
            f"| {r.seed} | {100 * r.test['top1'][attribute]:.1f} | "
            f"{100 * r.test['mAP_cls']:.1f} | {100 * r.best_val_top1:.1f} | "
            f"{r.steps} | {r.train_seconds:.0f} | {rate:.0f} |")
    lines += [
        f"| mean ± std | {m1:.1f} ± {s1:.1f} | {m2:.1f} ± {s2:.1f} | | | "
        f"{np.mean([r.train_seconds for r in results]):.0f} | |",
        "",
        "Training seconds include the validation passes; images/s is "
        "training images over them.",
        "",
        "## Per class (test)",
        "",
        "| class | test photos | AP (mean ± std) | top-1 recall (mean) |",
        "|---|---|---|---|",
    ]
    confusion = np.sum([r.confusion for r in results], axis=0)
    for k, value in enumerate(values):
        ap = [100 * r.test["ap_per_value"][attribute][k] for r in results]
        n = int(np.asarray(results[0].confusion)[k].sum())
        recall = confusion[k, k] / max(confusion[k].sum(), 1)
        a, s = _mean_std(ap)
        lines.append(f"| {value} | {n} | {a:.1f} ± {s:.1f} | "
                     f"{100 * recall:.1f} |")
    lines += [
        "",
        f"![confusion matrix]({image_prefix}_confusion.png)",
        "",
        "Confusion matrix summed over the seeds (rows: annotated class, "
        "columns: predicted; colour: share of the row).",
        "",
        "## Time to accuracy",
        "",
        f"![validation top-1 against wall seconds]({image_prefix}"
        "_curve.png)",
        "",
        "## Served on real bytes",
        "",
    ] + ([
        f"Seed {results[0].seed}'s model, exported for TF Serving, loaded "
        "with the session loader (TF Serving's and `saved_model_cli run`'s "
        "path) and fed the test photos' JPEG bytes: the same top-1 as the "
        f"Keras model for **{served['same_top1']} of {served['photos']}** "
        "photos, probabilities within "
        f"{served['max_abs_diff']:.1e}.",
        "",
    ] + ([
        "`predict` on the first test photo of the manifest (the fixed rule "
        "of `--pick test/shop`), beside its annotation:",
        "",
        "```",
        served["predict"].replace(os.getcwd() + os.sep, ""),
        "```",
        "",
        f"![predict on a real test photo]({image_prefix}_predict.png)",
        "",
    ] if served.get("predict") else []) if served else []) + [
        "## Reproduce",
        "",
        "```",
        f"{SOURCE['get']} ../shared/data/clothing-dataset-small",
        command,
        "```",
        "",
        "Or train one model yourself: `python datasets/convert_image_folder."
        "py --root clothing-dataset-small --out data/photos`, then "
        "`python -m mtct_tf.train --experiment real_photos --model_dir "
        "runs/photos --override data.shards_dir=data/photos/shards`.",
    ]
    return "\n".join(lines) + "\n"


def _summary(shards):
    from mtct_tf.data import pipeline

    s = pipeline.load_summary(shards)["splits"]
    return {split: s[split]["records"] for split in ("train", "val", "test")
            if split in s}


def _majority(results, attribute):
    counts = np.asarray(results[0].confusion).sum(1)
    return counts.max() / counts.sum()


def run(data=DEFAULT_DATA, *, seeds=(0, 1, 2), work_dir="runs/real_benchmark",
        out=DOC, overrides=(), command=None, verbose="auto"):
    """Trains and scores every seed, writes the report and figures.

    Returns:
        The list of ``SeedResult``.
    """
    from mtct_tf import configs
    from mtct_tf.data import pipeline

    if not os.path.isdir(data):
        raise FileNotFoundError(
            f"{data}: no such folder; get the photos with `{SOURCE['get']}` "
            "(or pass --data)")
    start = time.time()
    shards = prepare(data, work_dir)
    results = [run_seed(shards, seed, work_dir, overrides, verbose=verbose)
               for seed in seeds]
    schema = pipeline.load_schema(shards)
    config = configs.build(EXPERIMENT, overrides=[
        f"data.shards_dir={shards}", *overrides])
    folder = os.path.dirname(os.path.abspath(out))
    images = os.path.join(folder, "images")
    name = os.path.splitext(os.path.basename(out))[0].lower()
    attribute = schema.names[0]
    confusion_figure(np.sum([r.confusion for r in results], axis=0),
                     schema[attribute].values,
                     os.path.join(images, f"{name}_confusion.png"),
                     f"{attribute}, test, {len(results)} seeds summed")
    curve_figure(results, os.path.join(images, f"{name}_curve.png"),
                 f"{config.name}: validation top-1 while training")
    served = serve_check(results[0], shards, work_dir,
                         os.path.join(images, f"{name}_predict.png"))
    text = report(results, schema=schema, shards=shards, config=config,
                  command=command or "python -m mtct_tf.benchmark real",
                  seconds=time.time() - start,
                  image_prefix=f"images/{name}", served=served)
    fileio.write_text(out, fileio.keep_sections(text, out))
    fileio.write_json(os.path.join(work_dir, "results.json"),
                      [dataclasses.asdict(r) for r in results])
    print(f"wrote {out}")
    return results


def add_arguments(parser):
    parser.add_argument("--data", default=DEFAULT_DATA,
                        help="a class-per-folder photo set, or its shards")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--work_dir", default="runs/real_benchmark")
    parser.add_argument("--out", default=DOC)
    parser.add_argument("--override", action="append", default=[],
                        help="a config override for every seed (a.b=c)")
    parser.add_argument("--compare", default=None,
                        help="instead: train these comma-separated "
                             f"candidates ({', '.join(CANDIDATES)}) for "
                             "--budget seconds each, validation only, into "
                             f"{DESIGN_DOC}")
    parser.add_argument("--budget", type=float, default=900,
                        help="wall seconds per --compare candidate")
    parser.add_argument("--section", default=COMPARE_SECTION,
                        help=f"the section of {DESIGN_DOC} a --compare "
                             "writes (one per question asked)")
    parser.set_defaults(func=_main)


def _main(args):
    import sys

    command = "python -m mtct_tf.benchmark real" + "".join(
        f" {a}" for a in sys.argv[2:])
    try:
        if args.compare:
            unknown = set(args.compare.split(",")) - set(CANDIDATES)
            if unknown:
                print(f"error: unknown candidates {sorted(unknown)}; known: "
                      f"{', '.join(CANDIDATES)}", file=sys.stderr)
                return 2
            compare(args.data, candidates=args.compare.split(","),
                    budget=args.budget, overrides=args.override,
                    command=command, section=args.section,
                    work_dir=args.work_dir.replace("real_benchmark",
                                                   "real_compare"))
            return 0
        run(args.data, seeds=tuple(range(args.seeds)),
            work_dir=args.work_dir, out=args.out, overrides=args.override,
            command=command)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


# --------------------------------------------------------------------------
# Choosing the model: candidates under one wall-clock budget, validation only.

# Candidate -> overrides of the real_photos experiment. Each trains for the
# same wall seconds (shop.max_seconds); the decay ends with the budget. The
# backbone screen ran at 96 px (decoded-photo cache 160), pinned here so
# that it reruns as documented.
_AT_96 = ["data.image_size=96", "data.decode_cache=160"]
CANDIDATES = {
    "nin_small": ["model.backbone=nin", "model.preset=small", *_AT_96],
    "nin_paper": ["model.backbone=nin", "model.preset=paper", *_AT_96],
    "mobilenetv3small": ["model.backbone=mobilenetv3small", *_AT_96],
    "mobilenetv3large": ["model.backbone=mobilenetv3large", *_AT_96],
    "efficientnetv2b0": ["model.backbone=efficientnetv2b0", *_AT_96],
    # Resolution, with the decoded-photo cache scaled to keep the crop's
    # minimum area at the same pixel density.
    "mobilenetv3small_128": ["model.backbone=mobilenetv3small",
                             "data.image_size=128", "data.decode_cache=192"],
    "mobilenetv3small_160": ["model.backbone=mobilenetv3small",
                             "data.image_size=160", "data.decode_cache=240"],
}


def compare(data=DEFAULT_DATA, *, candidates=tuple(CANDIDATES), budget=900,
            work_dir="runs/real_compare", out=DESIGN_DOC, overrides=(),
            seed=0, command=None, verbose="auto", section=COMPARE_SECTION):
    """Trains each candidate for ``budget`` seconds; validation top-1 only.

    Every candidate gets the real_photos experiment with its overrides,
    then ``overrides``, then a step budget it cannot reach in time
    (``shop.epochs`` is raised to 1,000), so that the wall-clock budget
    ends every run. The test split is not read.

    Returns:
        Dict candidate -> ``{"best_val_top1", "last_val_top1", "steps",
        "seconds", "curve"}``; also written as section ``section`` of
        ``out`` with a figure of the curves.
    """
    from mtct_tf import configs, runs, training
    from mtct_tf.data import pipeline

    shards = prepare(data, work_dir)
    schema = pipeline.load_schema(shards)
    attribute = schema.names[0]
    rows = {}
    for name in candidates:
        extra = CANDIDATES[name] if name in CANDIDATES else []
        config = configs.build(EXPERIMENT, overrides=[
            f"data.shards_dir={shards}", f"seed={seed}", *extra, *overrides,
            "shop.epochs=1000", f"shop.max_seconds={budget}"])
        run_dir = os.path.join(work_dir, f"{name}_{budget}s")
        done = training.run(config, run_dir, verbose=verbose)[
            config_stage(config)]
        curve = _curve(runs.stage_dir(run_dir, config_stage(config)),
                       attribute)
        rows[name] = {"best_val_top1": max(v for _, v in curve),
                      "last_val_top1": curve[-1][1], "steps": done["steps"],
                      "seconds": done["seconds"], "curve": curve,
                      "overrides": extra + list(overrides),
                      "image_size": config.data.image_size,
                      "batch_size": config.data.batch_size}
    _compare_section(rows, out, budget, command, work_dir, section)
    return rows


def _compare_section(rows, out, budget, command, work_dir, section):
    from matplotlib.figure import Figure

    name = os.path.splitext(os.path.basename(out))[0].lower()
    figure = os.path.join(os.path.dirname(os.path.abspath(out)), "images",
                          f"{name}_{section}.png")
    fig = Figure(figsize=(7, 4.2))
    ax = fig.add_subplot()
    for candidate, r in rows.items():
        t, v = zip(*r["curve"])
        ax.plot(t, v, marker=".", label=candidate)
    ax.set_xlabel("training wall seconds (with validation passes)")
    ax.set_ylabel("validation top-1")
    ax.set_title(f"one budget of {budget:.0f} s each", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fileio.save_figure(fig, figure)
    lines = [
        f"Written by `{command or 'python -m mtct_tf.benchmark real --compare'}`"
        f" on {time.strftime('%Y-%m-%d')}: each candidate trained for "
        f"{budget:.0f} wall seconds, scored on the validation split (the "
        "test split is not read). Runs in `" + work_dir + "`.",
        "",
        "| candidate | overrides | px | batch | steps | images/s | "
        "best val top-1 | last val top-1 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for candidate, r in rows.items():
        rate = r["steps"] * r["batch_size"] / r["seconds"]
        lines.append(
            f"| {candidate} | `{' '.join(r['overrides']) or '-'}` | "
            f"{r['image_size']} | {r['batch_size']} | {r['steps']} | "
            f"{rate:.0f} | {100 * r['best_val_top1']:.1f} | "
            f"{100 * r['last_val_top1']:.1f} |")
    lines += ["", f"![validation top-1 under one budget](images/{name}"
              f"_{section}.png)"]
    fileio.write_section(out, section, "\n".join(lines))
