"""Speed benchmark: how close training, input and serving come to the machine.

``python -m mtct_tf.benchmark speed`` measures, in one run on one machine:

1. the float32 and bfloat16 matrix-multiply peak through TensorFlow
   (square matmuls, warm-up, best of several): the reference limit;
2. the MTN training step (``MTNTrainer.train_on_batch``: forward,
   backward and Adam update, the step ``fit`` runs) at the ``paper`` and
   ``small`` presets in float32 and ``mixed_bfloat16``: FLOPs per image,
   images/s and utilisation = FLOPs x images/s / float32 peak;
3. Keras ``fit`` fed from TFRecord shards (``pipeline.make_dataset``:
   decode + augment) vs the same ``fit`` fed from in-memory tensors;
4. the exported SavedModel fed encoded JPEGs vs ``predict_on_batch`` on
   decoded tensors (batch 1 latency, batch 32 images/s);
5. renderer, converter and (with ``--detector``) detector-cropping
   images/s, and the peak RSS of every measurement;

plus a short training run of float32 vs ``mixed_bfloat16`` to check that
bfloat16 loses no accuracy. It writes ``docs/BENCHMARKS.md`` and a JSON of
every sample.

The machine may be shared, so nothing here compares numbers from separate
runs: compared configurations alternate round by round in one process, and
each ratio is a median of per-round ratios. Every timing is taken twice:
wall clock (what a user waits for) and process CPU time (the work done, which
other processes on the machine barely disturb).

Each measurement runs in its own Python process, so that its peak RSS
(``resource.getrusage``) is its own. TensorFlow is imported only inside the
measurements: ``python -m mtct_tf.benchmark --help`` stays instant.

The parts: ``measurement`` (the subprocess harness and the measurements),
``speed_summary`` (the maths) and ``speed_report`` (the Markdown); this
module runs them in order and is the command line.
"""

import datetime
import json
import os
import shlex
import sys
import tempfile
import time

from mtct_tf import fileio
from mtct_tf.benchmarks.measurement import (PAPER_BATCH, PEAK_SIZES,
                                            SERVE_BATCH, SMALL_BATCH,
                                            machine_info, run_measurement)
from mtct_tf.benchmarks.speed_report import render_report
from mtct_tf.benchmarks.speed_summary import recommended_bf16, summarize

# Sizes of the full run and of --quick (the smoke test's).
FULL = dict(items=200, image_size=128, workers=2, peak_sizes=PEAK_SIZES,
            peak_samples=4, presets=("paper", "small"), paper_rounds=6,
            small_rounds=12, pipeline_rounds=4, pipeline_steps=24,
            serve_rounds=8, paper_serve_rounds=3, accuracy_preset="tiny",
            accuracy_steps=150, accuracy_seeds=(0, 1))
QUICK = dict(items=16, image_size=64, workers=1, peak_sizes=(1024,),
             peak_samples=2, presets=("tiny",), paper_rounds=0,
             small_rounds=2, pipeline_rounds=2, pipeline_steps=4,
             serve_rounds=2, paper_serve_rounds=0, accuracy_preset="tiny",
             accuracy_steps=4, accuracy_seeds=(0,))


# --------------------------------------------------------------------------
# The run.


def run_speed(out_path="docs/BENCHMARKS.md", *, quick=False, detector=None,
              work_dir=None, json_path=None, command=None, log=print):
    """Runs every measurement and writes the Markdown report.

    Args:
        out_path: the report (``docs/BENCHMARKS.md``).
        quick: tiny sizes (the smoke test's, ~1 minute); the ``paper``
            preset is skipped and ``tiny`` stands in for ``small``.
        detector: an exported detector (``python -m mtct_tf.detect
            export``) to time cropping with; ``None`` skips it.
        work_dir: where data, exports and logs go (default: a temporary
            directory, removed at the end).
        json_path: the samples as JSON (default: ``out_path`` with
            ``.json``).
        command: the command line shown in the report.
        log: progress printer.

    Returns:
        The results dict (also in ``json_path``).
    """
    sizes = QUICK if quick else FULL
    own_tmp = work_dir is None
    if own_tmp:
        tmp = tempfile.TemporaryDirectory(prefix="mtct_speed_")
        work_dir = tmp.name
    os.makedirs(work_dir, exist_ok=True)
    runs = os.path.join(work_dir, "runs")
    os.makedirs(runs, exist_ok=True)
    data_dir = os.path.join(work_dir, "data")
    shards_dir = os.path.join(work_dir, "shards")
    start = time.time()

    def measure(name, **kwargs):
        return run_measurement(name, runs, log=log, **kwargs)

    results = {"quick": quick, "sizes": {k: list(v) if isinstance(v, tuple)
                                         else v for k, v in sizes.items()},
               "command": command or "python -m mtct_tf.benchmark speed"
               + (" --quick" if quick else ""),
               "date": datetime.datetime.now().isoformat(timespec="seconds"),
               "machine": machine_info()}
    workers = max(1, min(sizes["workers"], os.cpu_count() or 1))
    results["render"] = measure("render", data_dir=data_dir,
                                items=sizes["items"],
                                image_size=sizes["image_size"],
                                workers=workers)
    results["convert"] = measure("convert", data_dir=data_dir,
                                 shards_dir=shards_dir, workers=workers)
    results["peak"] = measure("peak", samples=sizes["peak_samples"],
                              sizes=list(sizes["peak_sizes"]))
    results["machine"].update(results["peak"].pop("versions"))
    results["training"] = []
    for preset in sizes["presets"]:
        paper = preset == "paper"
        results["training"].append(measure(
            "training", preset=preset,
            batch_size=PAPER_BATCH if paper else SMALL_BATCH,
            rounds=sizes["paper_rounds" if paper else "small_rounds"]))
    fast = "mixed_bfloat16" if recommended_bf16(results) else "float32"
    pipeline_preset = sizes["presets"][-1]
    results["pipeline"] = measure(
        "pipeline", shards_dir=shards_dir, preset=pipeline_preset,
        batch_size=SMALL_BATCH, steps=sizes["pipeline_steps"],
        rounds=sizes["pipeline_rounds"], precision=fast,
        alone_sizes=[r["image_size"] for r in results["training"]])
    results["serving"] = []
    for preset in sizes["presets"]:
        paper = preset == "paper"
        results["serving"].append(measure(
            "serving", data_dir=data_dir,
            export_dir=os.path.join(work_dir, f"export_{preset}"),
            preset=preset, batch_size=SERVE_BATCH,
            rounds=sizes["paper_serve_rounds" if paper else "serve_rounds"],
            latency_calls=3 if paper else 20))
    if detector:
        results["detector"] = measure(
            "detector", detector=os.path.abspath(detector),
            shards_dir=shards_dir, out_dir=os.path.join(work_dir, "crops"))
    results["accuracy"] = measure(
        "accuracy", shards_dir=shards_dir, preset=sizes["accuracy_preset"],
        steps=sizes["accuracy_steps"], batch_size=SMALL_BATCH,
        seeds=list(sizes["accuracy_seeds"]))
    results["seconds"] = round(time.time() - start, 1)
    results["machine"]["loadavg_end"] = os.getloadavg()
    summarize(results)

    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    json_path = json_path or os.path.splitext(out_path)[0] + ".json"
    # Written whole or not at all: a kill here keeps the previous report.
    for path, text in ((json_path, json.dumps(results, indent=1)),
                       (out_path, fileio.keep_sections(
                           render_report(results), out_path))):
        fileio.write_text(path, text)
    log(f"[speed] {results['seconds']:.0f} s; wrote {out_path} and "
        f"{json_path}")
    if own_tmp:
        tmp.cleanup()
    return results


# --------------------------------------------------------------------------
# Command line (``python -m mtct_tf.benchmark speed``).


def add_arguments(parser):
    parser.add_argument("--out", default="docs/BENCHMARKS.md",
                        help="the Markdown report (a .json of the samples "
                             "is written beside it)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes, about a minute (the smoke test's)")
    parser.add_argument("--detector",
                        help="exported detector to time cropping with")
    parser.add_argument("--work_dir",
                        help="keep data, exports and logs here (default: a "
                             "temporary directory)")
    parser.add_argument(
        "--time_to_accuracy", action="store_true",
        help="instead: wall seconds to shop validation mAP_cls 80 of the "
             "benchmark preset and the demo's path (its section of --out; "
             "~15 min on 2 cores; mtct_tf.benchmarks.speed_accuracy)")
    parser.set_defaults(func=main)


def main(args):
    command = "python -m mtct_tf.benchmark " + " ".join(
        shlex.quote(a) for a in sys.argv[1:])
    if args.time_to_accuracy:
        from mtct_tf.benchmarks import speed_accuracy

        speed_accuracy.run(args.out, command=command,
                           workdir=args.work_dir or "runs/time_to_accuracy")
        return 0
    run_speed(args.out, quick=args.quick, detector=args.detector,
              work_dir=args.work_dir, command=command)
    return 0
