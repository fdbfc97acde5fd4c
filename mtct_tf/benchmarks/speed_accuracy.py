"""Time to accuracy: wall seconds until a shop stage reaches shop mAP_cls 80.

``python -m mtct_tf.benchmark speed --time_to_accuracy`` trains the shop
stage of each training path on the decisive benchmark's data
(X-Domain-synth in the paper's regime, render seed 2017), scoring shop
*validation* mAP_cls every ``EVAL_EVERY`` steps, and records when it first
reaches ``TARGET``: wall seconds and process CPU seconds of training (the
scoring itself is not counted), steps and images. The paths are today's
benchmark preset (``synth_benchmark``'s shop stage, which the demo uses)
and shorter schedules (``PATHS``), measured one after the other in one run,
each in a process of its own; the ratios of their times to the preset's
are the section's numbers. Its
section of docs/BENCHMARKS.md is kept when the speed report is
regenerated.

Each path trains its whole planned schedule only if it must: the run stops
at the first score at or above the target (a path that never gets there
reports its best score instead).
"""

import os
import time

from mtct_tf import fileio

TARGET = 80.0
EVAL_EVERY = 100
SECTION = "time-to-accuracy"
# Path name -> (experiment, overrides) of its shop stage.
# The preset first (the ratios' reference), then the shorter schedules
# tried for the demo: 800 steps at twice the learning rate, 1,000 at the
# preset's, and 1,000 with decoded images cached in memory and XLA.
PATHS = {
    "benchmark preset = demo (2000 steps)": ("synth_benchmark", ()),
    "800 steps, lr 4e-3": ("synth_benchmark", (
        "shop.epochs=4", "shop.learning_rate=0.004")),
    "1000 steps": ("synth_benchmark", ("shop.epochs=5",)),
    "1000 steps, decode cache, XLA": ("synth_benchmark", (
        "shop.epochs=5", "data.decode_cache=128", "runtime.jit_compile=true")),
}


def measure(shards, experiment, overrides=(), *, target=TARGET,
            eval_every=EVAL_EVERY, run_dir, seed=0):
    """Trains one path's shop stage until shop validation mAP_cls >= target.

    Returns:
        Dict with ``seconds`` / ``cpu_seconds`` / ``steps`` / ``images`` to
        the target (``None`` if not reached), ``best`` score, the
        ``curve`` [(steps, wall seconds, CPU seconds, mAP_cls)], and the
        path's budget.
    """
    import keras

    from mtct_tf import configs, evaluation, metrics, training
    from mtct_tf.data import pipeline

    config = configs.build(experiment, None, [
        f"data.shards_dir={shards}", f"seed={seed}", *overrides])
    spe = config.shop.steps_per_epoch
    planned = config.shop.epochs * spe
    schema = pipeline.load_schema(shards)
    val = pipeline.make_dataset(
        pipeline.shard_files(shards, "val"), schema,
        image_size=config.data.image_size, batch_size=128, training=False,
        domain="shop", margin=config.data.margin, repeat=False)
    names = [a.name for a in schema]
    curve, clock = [], {"wall": 0.0, "cpu": 0.0}

    class Score(keras.callbacks.Callback):
        """Scores every ``eval_every`` steps, off the clock."""

        def on_train_begin(self, logs=None):
            self._mark()

        def _mark(self):
            self._wall, self._cpu = time.perf_counter(), time.process_time()

        def on_train_batch_end(self, batch, logs=None):
            steps = int(self.model.optimizer.iterations.numpy())
            if steps % eval_every and steps != planned:
                return
            clock["wall"] += time.perf_counter() - self._wall
            clock["cpu"] += time.process_time() - self._cpu
            net = self.model.net
            probs, labels, _ = evaluation.predict(net, val)
            score = 100 * metrics.evaluate_predictions(
                probs, labels, names)["mAP_cls"]
            curve.append((steps, round(clock["wall"], 2),
                          round(clock["cpu"], 2), round(score, 2)))
            print(f"[time to accuracy] {experiment}: step {steps}, "
                  f"{clock['wall']:.0f} s, shop val mAP_cls {score:.2f}",
                  flush=True)
            if score >= target:
                self.model.stop_training = True
            self._mark()

    training.train_stage(config, run_dir, "shop", verbose=0,
                         callbacks=[Score()])
    reached = next((c for c in curve if c[3] >= target), None)
    return {
        "experiment": experiment, "overrides": list(overrides),
        "budget": {"steps": planned, "batch_size": config.data.batch_size,
                   "image_size": config.data.image_size,
                   "learning_rate": config.shop.learning_rate},
        "steps": reached[0] if reached else None,
        "images": reached[0] * config.data.batch_size if reached else None,
        "seconds": reached[1] if reached else None,
        "cpu_seconds": reached[2] if reached else None,
        "best": max(c[3] for c in curve), "curve": curve,
    }


def run(out_path="docs/BENCHMARKS.md", *, workdir="runs/time_to_accuracy",
        paths=None, command=None, log=print):
    """Measures every path (each in its own process) and writes the section.

    Returns:
        Dict path name -> ``measure``'s result.
    """
    from mtct_tf.benchmarks import ablation_arms
    from mtct_tf.benchmarks.measurement import machine_info, run_measurement

    paths = PATHS if paths is None else paths
    start = time.time()
    shards = ablation_arms.prepare_data(os.path.join(workdir, "benchmark"))
    runs_dir = os.path.join(workdir, "runs")
    os.makedirs(runs_dir, exist_ok=True)
    results = {}
    for i, (name, (experiment, overrides)) in enumerate(paths.items()):
        results[name] = run_measurement(
            f"{__name__}:measure", runs_dir, log=log, shards=shards,
            experiment=experiment, overrides=list(overrides),
            run_dir=os.path.join(workdir, f"path{i}"))
    info = machine_info()
    text = section(results, command or "python -m mtct_tf.benchmark speed "
                   "--time_to_accuracy", info, time.time() - start)
    fileio.write_section(out_path, SECTION, text)
    log(f"[time to accuracy] wrote its section of {out_path}")
    return results


def section(results, command, machine, seconds):
    """The Markdown of the section."""
    names = list(results)
    base = results[names[0]]
    lines = [
        "## Time to accuracy",
        "",
        f"Written by `{command}` on {machine.get('cpu', '?')} "
        f"({machine.get('usable_cpus', '?')} usable CPUs), "
        f"{time.strftime('%Y-%m-%d')}, {seconds / 60:.1f} min in all. Each "
        "path trains the shop stage on the decisive benchmark's data "
        "(render seed 2017, 3,400 items) in a process of its own, one after "
        f"the other; shop **validation** mAP_cls is scored every "
        f"{EVAL_EVERY} steps off the clock, and the run stops at the first "
        f"score >= {TARGET:g}.",
        "",
        "| path | batch x px | lr | planned steps | steps to "
        f"{TARGET:g} | wall s | CPU s | best mAP_cls | wall / "
        f"{names[0].split(' (')[0]} |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        b = r["budget"]
        ratio = (f"{r['seconds'] / base['seconds']:.2f}"
                 if r["seconds"] and base["seconds"] else "n/a")
        lines.append(
            f"| {name} | {b['batch_size']} x {b['image_size']} | "
            f"{b['learning_rate']:g} | {b['steps']} | {r['steps'] or '-'} | "
            f"{r['seconds'] if r['seconds'] is not None else '-'} | "
            f"{r['cpu_seconds'] if r['cpu_seconds'] is not None else '-'} | "
            f"{r['best']:.2f} | {ratio} |")
    lines += ["", "Scores along the way (steps: mAP_cls):", ""]
    for name, r in results.items():
        lines.append(f"- {name}: " + ", ".join(
            f"{s}: {m:.1f}" for s, _, _, m in r["curve"]))
    return "\n".join(lines)
