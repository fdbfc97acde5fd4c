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
"""

import datetime
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time

from mtct_tf import fileio

PAPER_BATCH = 16
SMALL_BATCH = 32
SERVE_BATCH = 32
# A matmul of n = 2048 takes ~0.1-0.3 s here: long enough to time, short
# enough to sample between training steps.
PEAK_SIZES = (2048, 3072, 4096)
ROUND_PEAK_SIZE = 2048
PRECISIONS = ("float32", "mixed_bfloat16")

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
# Timing helpers (no TensorFlow).


class Clock:
    """Wall and process-CPU seconds since creation."""

    def __init__(self):
        self.wall = time.perf_counter()
        self.cpu = time.process_time()

    def read(self):
        return (time.perf_counter() - self.wall,
                time.process_time() - self.cpu)


def median(values):
    return float(statistics.median(values)) if values else float("nan")


def peak_rss_mb():
    """Peak RSS in MB: ``(this process, largest finished child)``.

    This process's comes from ``VmHWM`` in ``/proc/self/status``, which
    counts only this program: ``getrusage``'s ``ru_maxrss`` would also
    count the parent's memory at the fork that started it (Linux carries
    it across ``exec``). Children (worker pools) only have ``getrusage``,
    so theirs is an upper bound of the same kind.
    """
    own = None
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    own = int(line.split()[1]) / 1024.0
    except OSError:
        pass
    if own is None:
        own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0
    return round(own, 1), round(kids, 1)


# --------------------------------------------------------------------------
# Measurements. Each runs in a fresh process (``_worker_main``) and returns a
# JSON-able dict.


def _quiet_tensorflow():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    return tf


def matmul_sample(tf, dtype, n, min_seconds=0.2):
    """Times chained ``n x n`` matmuls (~``min_seconds``); returns a dict.

    Returns:
        ``{"n", "gflop", "wall", "cpu"}`` for one sample; the result is
        fetched to the host, so the time covers the whole computation.
    """
    key = (dtype, n)
    cache = matmul_sample.__dict__.setdefault("cache", {})
    if key not in cache:
        a = tf.cast(tf.random.normal([n, n], stddev=n ** -0.5), dtype)
        b = tf.cast(tf.random.normal([n, n], stddev=n ** -0.5), dtype)
        fn = tf.function(tf.matmul)
        fn(a, b).numpy()  # Warm-up: trace, pack the operands.
        t = Clock()
        fn(a, b).numpy()
        one = max(t.read()[0], 1e-3)
        cache[key] = (a, b, fn, max(1, int(round(min_seconds / one))))
    a, b, fn, reps = cache[key]
    t = Clock()
    for _ in range(reps):
        c = fn(a, b)
    c.numpy()  # CPU ops run as they are called; this only syncs.
    wall, cpu = t.read()
    return {"n": n, "gflop": 2.0 * n ** 3 * reps / 1e9, "wall": wall,
            "cpu": cpu}


def _rate(sample):
    return {"wall": sample["gflop"] / sample["wall"],
            "cpu": sample["gflop"] / max(sample["cpu"], 1e-9)}


def measure_peak(sizes=PEAK_SIZES, samples=4):
    """Matmul peak (GFLOP/s, best of ``samples`` per size) per dtype."""
    tf = _quiet_tensorflow()
    out = {}
    for name, dtype in (("float32", tf.float32), ("bfloat16", tf.bfloat16)):
        runs = []
        for _ in range(samples):  # Sizes alternate: drift hits all alike.
            runs += [matmul_sample(tf, dtype, n) for n in sizes]
        best = max(runs, key=lambda s: _rate(s)["wall"])
        out[name] = {
            "gflops": _rate(best)["wall"], "best_n": best["n"],
            "gflops_per_cpu_s": median([_rate(s)["cpu"] for s in runs]),
            "samples": runs,
        }
    out["bf16_over_f32"] = out["bfloat16"]["gflops"] / out["float32"]["gflops"]
    import keras

    out["versions"] = {"tensorflow": tf.__version__,
                       "keras": keras.__version__}
    return out


def _schema():
    from mtct_tf.attributes import synth_schema

    return synth_schema()


def build_trainer(preset, precision, *, image_size=None, jit_compile=False,
                  seed=0, learning_rate=1e-3):
    """An ``MTN`` in a compiled ``MTNTrainer``, as ``training`` makes.

    The dtype policy is set only while the network is built, so trainers
    of both precisions can live (and alternate) in one process.
    """
    import keras

    from mtct_tf import distribute, transfer
    from mtct_tf import model as model_lib

    keras.utils.set_random_seed(seed)
    distribute.set_precision(precision)
    try:
        net = model_lib.MTN(_schema(), preset=preset, image_size=image_size)
        trainer = transfer.MTNTrainer(net)
        trainer.compile(optimizer=keras.optimizers.Adam(learning_rate),
                        jit_compile=jit_compile)
    finally:
        distribute.set_precision("")
    return trainer


def _random_batch(batch, size, seed=0):
    import numpy as np

    rng = np.random.RandomState(seed)
    x = rng.uniform(0, 255, (batch, size, size, 3)).astype("float32")
    y = {a: rng.randint(0, n, batch).astype("int32")
         for a, n in _schema().num_values.items()}
    return x, y


def flops_per_image(net):
    """Training FLOPs per image: 3 x ``count_flops`` (see the report)."""
    from mtct_tf import model as model_lib

    forward = model_lib.count_flops(net)
    return {"forward": forward, "train": 3 * forward}


def measure_training(preset, batch_size, rounds, precisions=PRECISIONS,
                     jit_compile=False, peak_sizes=None, peak_samples=0):
    """Images/s of the training step per precision, against matmul peak.

    Every round times one matmul sample of each dtype and one step of each
    precision, alternating, so that the machine's load hits all alike.
    """
    tf = _quiet_tensorflow()
    out = {"preset": preset, "batch_size": batch_size, "rounds": rounds}
    if peak_samples:
        out["peak"] = measure_peak(peak_sizes or PEAK_SIZES, peak_samples)
    trainers, build = {}, {}
    for precision in precisions:
        t = Clock()
        trainers[precision] = build_trainer(preset, precision,
                                            jit_compile=jit_compile)
        size = trainers[precision].street.image_size
        x, y = _random_batch(batch_size, size)
        trainers[precision].train_on_batch(x, y)  # Trace and warm up.
        build[precision] = t.read()[0]
    net = trainers[precisions[0]].street
    out.update(flops_per_image(net), image_size=net.image_size,
               first_step_seconds=build)
    samples = {p: [] for p in precisions}
    peaks = {"float32": [], "bfloat16": []}
    # Round 0 is not timed: the first steps after the other precision's
    # model was built and traced ran 1.3-1.8x slower than the rest in
    # every run (memory faulted back in), which no training run sees.
    for r in range(rounds + 1):
        for precision in precisions:
            dtype = "float32" if precision == "float32" else "bfloat16"
            peak = matmul_sample(tf, getattr(tf, dtype), ROUND_PEAK_SIZE,
                                 min_seconds=0.5)
            t = Clock()
            trainers[precision].train_on_batch(x, y)
            wall, cpu = t.read()
            if r:
                peaks[dtype].append(peak)
                samples[precision].append({"wall": wall, "cpu": cpu})
    out["round_peaks"] = peaks
    out["steps"] = samples
    return out


class _BatchTimer:
    """Keras callback: wall / CPU time at every batch end."""

    def __new__(cls):
        import keras

        class Timer(keras.callbacks.Callback):
            def on_train_begin(self, logs=None):
                self.marks = []

            def on_train_batch_end(self, batch, logs=None):
                self.marks.append((time.perf_counter(), time.process_time()))

        return Timer()


def measure_pipeline(shards_dir, preset, batch_size, steps, rounds,
                     precision, skip=2, cache=False, alone_sizes=()):
    """``fit`` from TFRecords (decode + augment) vs from in-memory tensors.

    Both feeds give ``fit`` the same shapes, so one traced train function
    serves both. The first ``skip`` steps of each ``fit`` (iterator start,
    shuffle-buffer fill) are not timed: ``fit`` keeps one iterator for all
    its epochs, so they are paid once per training run.

    Every round also times the pipeline alone (``steps`` batches pulled
    with no training) at the preset's image size and at each of
    ``alone_sizes``: its CPU time per image is the work that the TFRecord
    feed adds to every training step.
    """
    tf = _quiet_tensorflow()
    from mtct_tf.data import pipeline

    trainer = build_trainer(preset, precision)
    size = trainer.street.image_size
    files = pipeline.shard_files(shards_dir, "train")

    def records(image_size=size):
        return pipeline.make_dataset(files, _schema(), image_size=image_size,
                                     batch_size=batch_size, training=True,
                                     cache=cache)

    def alone(image_size):
        it = iter(records(image_size))
        for _ in range(skip):
            next(it)
        t = Clock()
        for _ in range(steps):
            next(it)
        wall, cpu = t.read()
        return {"wall": wall, "cpu": cpu}

    # The in-memory feed holds real pipeline batches, already decoded.
    held = list(records().take(steps).as_numpy_iterator())
    xs = tf.constant([b[0] for b in held])
    ys = {a: tf.constant([b[1][a] for b in held]) for a in held[0][1]}
    memory = tf.data.Dataset.from_tensor_slices((xs, ys)).repeat().prefetch(
        tf.data.AUTOTUNE)
    feeds = {"tfrecord": records, "memory": lambda: memory}
    trainer.fit(memory, steps_per_epoch=skip + 1, epochs=1, verbose=0)
    samples = {k: [] for k in feeds}
    sizes = [size] + [int(s) for s in alone_sizes if int(s) != size]
    samples["alone"] = {str(s): [] for s in sizes}
    for r in range(rounds):
        order = list(feeds) if r % 2 == 0 else list(feeds)[::-1]
        for name in order:
            timer = _BatchTimer()
            trainer.fit(feeds[name](), steps_per_epoch=steps + skip,
                        epochs=1, verbose=0, callbacks=[timer])
            (w0, c0), (w1, c1) = timer.marks[skip - 1], timer.marks[-1]
            samples[name].append({"wall": w1 - w0, "cpu": c1 - c0})
        for s in sizes:
            samples["alone"][str(s)].append(alone(s))
    return {"preset": preset, "precision": precision,
            "batch_size": batch_size, "steps": steps, "rounds": rounds,
            "image_size": size, "samples": samples}


def _jpegs(data_dir, count):
    """Up to ``count`` encoded JPEGs from the rendered dataset."""
    with open(os.path.join(data_dir, "manifest.jsonl")) as f:
        lines = [json.loads(line) for line in f if line.strip()]
    out = []
    for line in lines[:count]:
        with open(os.path.join(data_dir, line["path"]), "rb") as f:
            out.append(f.read())
    while len(out) < count:
        out += out[:count - len(out)]
    return out


def measure_serving(data_dir, export_dir, preset, batch_size, rounds,
                    precision="float32", latency_calls=20):
    """SavedModel from JPEG bytes vs ``predict_on_batch`` on tensors.

    The Keras side gets the images already decoded and resized exactly as
    the serving graph does it (``pipeline.decode_image`` +
    ``crop_and_resize`` of the whole image), so the ratio is the cost of
    doing that inside the graph.
    """
    tf = _quiet_tensorflow()
    from mtct_tf import export_lib
    from mtct_tf.data import pipeline

    net = build_trainer(preset, precision).street
    size = net.image_size
    t = Clock()
    version = export_lib.export_saved_model(net, _schema(), export_dir)
    export_seconds = t.read()[0]
    loaded = tf.saved_model.load(version)
    serve = loaded.signatures[export_lib.SIGNATURE_IMAGES]
    serve_tensors = loaded.signatures[export_lib.SIGNATURE_TENSORS]
    jpegs = _jpegs(data_dir, batch_size)
    tensors = tf.stack([
        pipeline.crop_and_resize(pipeline.decode_image(j),
                                 [0.0, 0.0, 1.0, 1.0], size, 0.0)
        for j in jpegs]).numpy()
    # The SavedModel's own tensor signature splits the gap in two: JPEG vs
    # tensors in the same graph is the cost of decoding there; tensors vs
    # Keras is that of the graph itself.
    calls = {
        "savedmodel_jpeg": lambda n: serve(images=tf.constant(jpegs[:n])),
        "keras_tensors": lambda n: net.predict_on_batch(tensors[:n]),
        "savedmodel_tensors": lambda n: serve_tensors(
            images=tf.constant(tensors[:n])),
    }
    # Both paths must give the same answer before their speeds are compared.
    a = calls["savedmodel_jpeg"](batch_size)
    b = calls["keras_tensors"](batch_size)
    name = _schema().names[0]
    max_diff = float(abs(a[f"{name}_probabilities"].numpy()
                         - b[name]).max())
    session_diff = _session_loader_diff(
        tf, version, jpegs, f"{name}_probabilities", b[name])
    for fn in calls.values():  # Warm up at both batch sizes.
        fn(1)
        fn(batch_size)
    samples = {k: {"batch": [], "single": []} for k in calls}
    for r in range(rounds):
        order = list(calls) if r % 2 == 0 else list(calls)[::-1]
        for key in order:
            t = Clock()
            calls[key](batch_size)
            samples[key]["batch"].append(dict(zip(("wall", "cpu"),
                                                  t.read())))
        for key in order:
            t = Clock()
            for _ in range(latency_calls):
                calls[key](1)
            wall, cpu = t.read()
            samples[key]["single"].append({"wall": wall / latency_calls,
                                           "cpu": cpu / latency_calls})
    return {"preset": preset, "precision": precision,
            "batch_size": batch_size, "image_size": size,
            "jpeg_size": len(jpegs[0]), "export_seconds": export_seconds,
            "max_abs_diff": max_diff, "session_max_abs_diff": session_diff,
            "samples": samples}


def _session_loader_diff(tf, version_dir, jpegs, key, reference):
    """Max |output - reference| of one batch run as TF Serving runs it.

    TF Serving (and ``saved_model_cli run``) load the MetaGraph, run the
    saver's restore op and feed the signature's tensors by name, a path
    ``tf.saved_model.load`` does not take: a SavedModel can pass one and
    fail the other. Raises if the session loader cannot run the model, so
    no serving number is ever reported for a model TF Serving cannot load.
    """
    from mtct_tf import export_lib

    graph = tf.Graph()
    with graph.as_default(), tf.compat.v1.Session(graph=graph) as sess:
        meta = tf.compat.v1.saved_model.loader.load(
            sess, [tf.saved_model.SERVING], version_dir)
        sig = meta.signature_def[export_lib.SIGNATURE_IMAGES]
        out = sess.run(sig.outputs[key].name,
                       {sig.inputs[export_lib.INPUT].name: jpegs})
    return float(abs(out - reference).max())


def measure_render(data_dir, items, image_size, workers):
    from mtct_tf.data import synthetic

    s = synthetic.render_dataset(data_dir, items=items, seed=0,
                                 image_size=image_size, workers=workers,
                                 progress=False)
    return {"images": s["images"], "seconds": s["seconds"],
            "images_per_second": s["images_per_second"], "workers": workers,
            "image_size": image_size}


def measure_convert(data_dir, shards_dir, workers):
    from mtct_tf.data import convert

    s = convert.convert_manifest(os.path.join(data_dir, "manifest.jsonl"),
                                 shards_dir, num_shards=4, workers=workers,
                                 progress=False)
    return {"images": s["records"], "seconds": s["seconds"],
            "images_per_second": s["images_per_second"], "workers": workers}


def measure_detector(detector, shards_dir, out_dir):
    from mtct_tf import detector as detector_lib

    stats = detector_lib.crop_with_detector(detector, shards_dir, out_dir,
                                            progress=False)
    images = stats.detector + stats.ground_truth + stats.whole_image
    return {"images": images, "seconds": stats.seconds,
            "images_per_second": images / max(stats.seconds, 1e-9)}


def measure_accuracy(shards_dir, preset, steps, batch_size,
                     precisions=PRECISIONS, seeds=(0,)):
    """Trains one network per precision and seed; validation accuracy.

    For each seed both precisions start from the same initial weights
    (variables are float32 under both policies) and see the same data
    order: only the compute dtype differs. Two seeds give the
    seed-to-seed spread, the scale against which to read a difference.
    """
    _quiet_tensorflow()
    from mtct_tf.data import pipeline

    out = {"preset": preset, "steps": steps, "batch_size": batch_size,
           "seeds": list(seeds), "runs": {p: [] for p in precisions}}
    for seed in seeds:
        for precision in precisions:
            trainer = build_trainer(preset, precision, seed=seed,
                                    learning_rate=2e-3)
            size = trainer.street.image_size
            train = pipeline.make_dataset(
                shards_dir, _schema(), split="train", image_size=size,
                batch_size=batch_size, training=True, seed=seed)
            val = pipeline.make_dataset(
                shards_dir, _schema(), split="val", image_size=size,
                batch_size=batch_size, training=False)
            t = Clock()
            hist = trainer.fit(train, steps_per_epoch=steps, epochs=1,
                               verbose=0)
            wall, cpu = t.read()
            logs = trainer.evaluate(val, verbose=0, return_dict=True)
            accs = [v for k, v in logs.items() if k.endswith("_acc")]
            out["runs"][precision].append({
                "seed": seed, "val_mean_acc": sum(accs) / len(accs),
                "val_ce": logs["ce"], "train_loss": hist.history["loss"][-1],
                "fit_wall": wall, "fit_cpu": cpu})
    for precision, runs in out["runs"].items():
        out[precision] = {k: sum(r[k] for r in runs) / len(runs)
                          for k in ("val_mean_acc", "val_ce", "train_loss")}
    return out


MEASUREMENTS = {
    "peak": measure_peak,
    "training": measure_training,
    "pipeline": measure_pipeline,
    "serving": measure_serving,
    "render": measure_render,
    "convert": measure_convert,
    "detector": measure_detector,
    "accuracy": measure_accuracy,
}


def _worker_main(argv):
    """``python -c ... <name> <kwargs.json> <out.json>``: one measurement."""
    name, args_path, out_path = argv
    with open(args_path) as f:
        kwargs = json.load(f)
    t = Clock()
    result = MEASUREMENTS[name](**kwargs)
    result["seconds_total"] = round(t.read()[0], 1)
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF,
                                                 resource.RUSAGE_CHILDREN)]
    result["cpu_seconds_total"] = round(
        sum(u.ru_utime + u.ru_stime for u in usage), 1)
    result["peak_rss_mb"], result["children_peak_rss_mb"] = peak_rss_mb()
    with open(out_path, "w") as f:
        json.dump(result, f)


def run_measurement(name, work_dir, env=None, log=print, **kwargs):
    """Runs ``MEASUREMENTS[name](**kwargs)`` in a fresh Python process.

    Raises:
        RuntimeError: the process failed; the message ends with its log.
    """
    tag = f"{name}-{len(os.listdir(work_dir))}"
    args_path = os.path.join(work_dir, f"{tag}.args.json")
    out_path = os.path.join(work_dir, f"{tag}.out.json")
    log_path = os.path.join(work_dir, f"{tag}.log")
    with open(args_path, "w") as f:
        json.dump(kwargs, f)
    code = ("import sys; from mtct_tf import speed; "
            "speed._worker_main(sys.argv[1:])")
    full_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})}
    log(f"[speed] {name} {json.dumps(kwargs)[:100]}")
    start = time.time()
    with open(log_path, "w") as logf:
        proc = subprocess.run(
            [sys.executable, "-c", code, name, args_path, out_path],
            stdout=logf, stderr=subprocess.STDOUT, env=full_env)
    if proc.returncode != 0:
        with open(log_path) as f:
            tail = f.read()[-3000:]
        raise RuntimeError(f"measurement {name!r} failed "
                           f"(exit {proc.returncode}):\n{tail}")
    with open(out_path) as f:
        result = json.load(f)
    log(f"[speed] {name} done in {time.time() - start:.0f} s, "
        f"peak RSS {result['peak_rss_mb']:.0f} MB")
    return result


# --------------------------------------------------------------------------
# Summaries: the numbers the report shows, derived from the samples.


def summarize(results):
    """Adds the derived numbers (images/s, ratios, utilisation) in place."""
    peak = results["peak"]
    f32 = peak["float32"]["gflops"]
    f32_cpu = peak["float32"]["gflops_per_cpu_s"]
    for run in results.get("training", []):
        run["summary"] = s = {}
        # The reference is the best float32 sample of the whole benchmark:
        # the peak section's and this worker's own round samples.
        round_f32 = [_rate(x) for x in run["round_peaks"]["float32"]]
        ref = max([f32] + [r["wall"] for r in round_f32])
        ref_cpu = median([r["cpu"] for r in round_f32]) if round_f32 \
            else f32_cpu
        s["peak_gflops"] = ref
        s["peak_gflops_per_cpu_s"] = ref_cpu
        flops = run["train"]
        for precision, steps in run["steps"].items():
            if not steps:
                continue
            best = min(x["wall"] for x in steps)
            ips = run["batch_size"] / best
            ips_med = run["batch_size"] / median([x["wall"] for x in steps])
            cpu = median([x["cpu"] for x in steps])
            # Each step against the float32 matmul sample taken just
            # before it: the machine's speed drifts (other tenants, clock)
            # by +-20% within a run, and the pairs drift together.
            paired = [flops * run["batch_size"] / x["wall"] / 1e9
                      / _rate(m)["wall"]
                      for x, m in zip(steps, run["round_peaks"]["float32"])]
            s[precision] = {
                "images_per_second": ips,
                "images_per_second_median": ips_med,
                "gflops": flops * ips / 1e9,
                "utilisation": median(paired),
                "utilisation_best": flops * ips / 1e9 / ref,
                "gflops_per_cpu_s": flops * run["batch_size"] / cpu / 1e9,
                "utilisation_cpu": (flops * run["batch_size"] / cpu / 1e9
                                    / ref_cpu),
            }
        if "float32" in s and "mixed_bfloat16" in s:
            f, b = run["steps"]["float32"], run["steps"]["mixed_bfloat16"]
            s["bf16_speedup"] = median(
                [x["wall"] / y["wall"] for x, y in zip(f, b)])
            s["bf16_speedup_cpu"] = median(
                [x["cpu"] / y["cpu"] for x, y in zip(f, b)])
    if "pipeline" in results:
        p = results["pipeline"]
        n = p["steps"] * p["batch_size"]
        rec, mem = p["samples"]["tfrecord"], p["samples"]["memory"]
        p["summary"] = {
            "tfrecord_images_per_second": n / median([x["wall"] for x in rec]),
            "memory_images_per_second": n / median([x["wall"] for x in mem]),
            "efficiency": median([m["wall"] / r["wall"]
                                  for r, m in zip(rec, mem)]),
            "efficiency_cpu": median([m["cpu"] / r["cpu"]
                                      for r, m in zip(rec, mem)]),
        }
        # Expected efficiency when the pipeline's work can only take CPU
        # from the step (no idle core to hide in): T / (T + P), with T and
        # P the CPU-seconds per image of the step and of the pipeline.
        train_cpu = median([x["cpu"] for x in mem]) / n
        alone = {int(k): {"cpu_ms": 1e3 * median([x["cpu"] for x in v]) / n,
                          "images_per_second":
                              n / median([x["wall"] for x in v])}
                 for k, v in p["samples"].get("alone", {}).items() if v}
        p["summary"]["train_cpu_ms"] = 1e3 * train_cpu
        p["summary"]["alone"] = alone
        if p["image_size"] in alone:
            pipe = alone[p["image_size"]]["cpu_ms"] / 1e3
            p["summary"]["expected"] = train_cpu / (train_cpu + pipe)
        # The same estimate for each trained preset whose image size the
        # pipeline was timed at, from that preset's float32 step.
        p["summary"]["expected_by_preset"] = expected = {}
        for run in results.get("training", []):
            steps = run["steps"].get("float32")
            if steps and run["image_size"] in alone:
                t = median([x["cpu"] for x in steps]) / run["batch_size"]
                pipe = alone[run["image_size"]]["cpu_ms"] / 1e3
                expected[run["preset"]] = {
                    "train_cpu_ms": 1e3 * t, "pipeline_cpu_ms": 1e3 * pipe,
                    "expected": t / (t + pipe)}
    for v in results.get("serving", []):
        sm, kt = v["samples"]["savedmodel_jpeg"], v["samples"]["keras_tensors"]
        b = v["batch_size"]
        v["summary"] = {
            "savedmodel_images_per_second":
                b / median([x["wall"] for x in sm["batch"]]),
            "keras_images_per_second":
                b / median([x["wall"] for x in kt["batch"]]),
            "throughput_ratio": median([k["wall"] / s["wall"] for s, k in
                                        zip(sm["batch"], kt["batch"])]),
            "throughput_ratio_cpu": median([k["cpu"] / s["cpu"] for s, k in
                                            zip(sm["batch"], kt["batch"])]),
            "savedmodel_latency_ms":
                1e3 * median([x["wall"] for x in sm["single"]]),
            "keras_latency_ms": 1e3 * median([x["wall"] for x in kt["single"]]),
        }
        st = v["samples"].get("savedmodel_tensors")
        if st and st["batch"]:
            # Per image: K (Keras on tensors), G (the SavedModel on
            # tensors) and D = JPEG path - G, the decoding in the graph.
            # Decoding runs on the cores the network uses, so with the
            # graph as fast as Keras the ratio can reach K / (K + D).
            ms = lambda x: 1e3 * median([y["wall"] for y in x]) / b  # noqa
            k, g, j = ms(kt["batch"]), ms(st["batch"]), ms(sm["batch"])
            v["summary"].update(
                keras_ms=k, graph_ms=g, jpeg_ms=j, decode_ms=j - g,
                graph_ratio=median([x["wall"] / y["wall"] for x, y in
                                    zip(kt["batch"], st["batch"])]),
                expected_ratio=k / (k + max(j - g, 0.0)))
    return results


# --------------------------------------------------------------------------
# The machine.


def machine_info():
    """CPU model, cores, flags and load (no TensorFlow import: the
    measurement processes start from this one, see ``peak_rss_mb``)."""
    model, flags = platform.processor() or "unknown", []
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and model in ("", "unknown",
                                                               "x86_64"):
                    model = line.split(":", 1)[1].strip()
                if line.startswith("flags") and not flags:
                    flags = line.split(":", 1)[1].split()
    except OSError:
        pass
    wanted = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni",
              "amx_bf16", "amx_tile")
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    return {
        "cpu": model,
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "flags": [f for f in wanted if f in flags],
        "python": platform.python_version(),
        "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default (on)"),
        "platform": platform.platform(),
        "loadavg_start": load,
    }


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
                       (out_path, render_report(results))):
        fileio.write_text(path, text)
    log(f"[speed] {results['seconds']:.0f} s; wrote {out_path} and "
        f"{json_path}")
    if own_tmp:
        tmp.cleanup()
    return results


def recommended_bf16(results):
    """Whether the training runs say ``mixed_bfloat16`` is faster here."""
    summarize({k: v for k, v in results.items()
               if k in ("peak", "training")})
    speedups = [r["summary"].get("bf16_speedup", 0.0)
                for r in results["training"]]
    return bool(speedups) and min(speedups) > 1.0


# --------------------------------------------------------------------------
# The report.

# The goals (thresholds) of the speed targets.
GOALS = {"utilisation": 0.80, "bf16_speedup": 1.4, "bf16_accuracy": -0.02,
         "pipeline": 0.97, "serving": 0.95}

# Experiments run while writing this benchmark, with their outcome. Each
# was measured like the rest: alternating configurations in one process
# (or alternating processes for environment variables), ratios of medians.
TRIED = (
    ("Profile of the `paper` float32 step (TF profiler, batch 16)",
     "convolutions (oneDNN `_MklNativeConv2D*`) 73% of op time; the "
     "batch-norm arithmetic of Keras 3's `BatchNormalization` (Mul, Sum, "
     "Mean, Tile, Sub, SquaredDifference: separate passes forward and "
     "backward) ~20%; Adam and dropout most of the rest",
     "led to the next row"),
    ("Keras `BatchNormalization` -> `model.FusedBatchNormalization` "
     "(`FusedBatchNormV3`, oneDNN) in the NIN trunk",
     "CPU time per step, medians of alternating rounds in one process: "
     "`paper` batch 8 float32 4.89 -> 4.08 s (-17%); `small` batch 32 "
     "float32 0.201 -> 0.178 s (-12%), mixed_bfloat16 0.192 -> 0.185 s. "
     "Same outputs, gradients and moving statistics (tests/"
     "test_benchmark.py)",
     "yes (model.py)"),
    ("`mixed_bfloat16` (AMX-BF16 / AVX512-BF16 through oneDNN)",
     "`paper` batch 8, fused batch norm: 4.15 -> 1.79 CPU-s per step "
     "(2.3x), 2.4x wall; `small`: 1.0-1.1x: its 24-256-channel convs at "
     "64 px are bound by memory traffic and per-op overhead, which "
     "bfloat16 does not shrink (and the casts add some); later runs on a "
     "quiet machine measured 0.67-0.70x for `small`, which led to the "
     "float32 batch norm / ReLU / pooling row below",
     "as an option (`runtime.mixed_precision=mixed_bfloat16`); measured "
     "again below on every run"),
    ("`TF_ENABLE_ONEDNN_OPTS=0` (Eigen kernels instead of oneDNN)",
     "float32 n = 2048 matmul 41 vs 52 GFLOP/s with oneDNN (one sample "
     "each, separate processes on the loaded machine: indicative); "
     "without oneDNN bfloat16 does not reach AMX",
     "no: oneDNN stays on (TensorFlow's default on x86)"),
    ("Batch size of the `paper` float32 step: 16, 32, 64 in one process, "
     "alternating, each step paired with the matmul sample before it",
     "utilisation (median of 3 rounds) 0.865, 0.834, 0.888: no batch "
     "effect beyond the noise (single rounds ranged 0.74-1.31)",
     "the benchmark stays at 16 (the `paper` experiment trains at 64; "
     "its 18 s steps and 6.9 GB peak RSS would add minutes to a run "
     "meant to fit in 10)"),
    ("`mixed_bfloat16` with the trunk's batch norm, ReLU and max-pooling "
     "kept in float32 (only convolutions in bfloat16)",
     "CPU-ms per step, medians of alternating steps in one process: "
     "`small` batch 32: float32 177, all-bfloat16 267, batch norm in "
     "float32 170, batch norm + ReLU + pooling in float32 161 (wall 96 "
     "vs 101 ms for float32); `paper` batch 16: float32 7790, "
     "all-bfloat16 3830, + float32 elementwise 3688. TensorFlow's CPU "
     "kernels for bfloat16 batch norm, ReLU and max-pooling (and their "
     "gradients) are slower than the float32 ones",
     "yes (`model._elementwise_dtype`, only under a bfloat16 policy)"),
    ("`tf.config.threading.set_inter_op_parallelism_threads(1)` (one op "
     "at a time, both cores inside it)",
     "`paper` batch 16 float32: 0.752 vs 0.792 with the default",
     "no"),
    ("`jit_compile=True` (XLA) for the training step",
     "`paper` batch 16 float32: 0.469 vs 0.792 without: XLA's CPU "
     "convolutions are Eigen's, not oneDNN's; first step 36 s vs 16 s",
     "no (`runtime.jit_compile` stays off by default)"),
    ("Input pipeline: parse a batch of records with `tf.io.parse_example` "
     "and flip / jitter brightness and contrast per batch instead of per "
     "image; tf.data private thread pools of 1 and 2 threads",
     "pipeline alone at 64 px, CPU-ms per image in alternating rounds: "
     "0.55-0.82 for every variant, the same spread as the current "
     "pipeline: its cost is JPEG decoding (~0.15-0.2) and tf.data's "
     "per-element machinery, not the number of ops",
     "no"),
    ("JPEG decoding: `dct_method='INTEGER_FAST'`; DCT-domain downscaling "
     "(`decode_jpeg(ratio=2)`) when the crop is at least twice the "
     "network's input; `tf.map_fn(parallel_iterations=32)` in the "
     "serving graph",
     "decode + resize of 32 JPEGs (128 -> 64 px), ms per image: default "
     "0.181, INTEGER_FAST 0.177-0.188, ratio 2: 0.143-0.148, "
     "parallel_iterations 32: 0.216 vs 0.217",
     "no: INTEGER_FAST and parallel iterations are within noise; DCT "
     "downscaling changes the pixels the network sees (a box filter "
     "instead of bilinear sampling of the full image), and the detector "
     "path, which decodes the whole photo for the detector, would not "
     "match it: a train / serve skew for 0.04 ms per image"),
)


def _f(x, digits=1):
    if x is None or x != x:
        return "n/a"
    return f"{x:,.{digits}f}"


def _sci(x):
    # Results written before the session-loader check have no value.
    return "not run" if x is None else f"{x:.1e}"


def _table(header, rows):
    out = ["| " + " | ".join(header) + " |",
           "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return out


def _accuracy_spread(acc):
    """What a bfloat16-minus-float32 accuracy difference is read against."""
    runs = acc.get("runs", {}).get("float32", [])
    if len(runs) < 2:
        return ("one short run per precision: no seed-to-seed spread "
                "measured to read the difference against")
    values = [r["val_mean_acc"] for r in runs]
    return (f"float32 alone moves by {_f(max(values) - min(values), 3)} "
            f"between seeds {', '.join(str(r['seed']) for r in runs)}: "
            f"{len(runs)} short runs per precision do not separate a "
            "difference this size from the seed")


def target_rows(results):
    """The targets table: one row per target and preset it was measured at.

    Each row is ``{"key", "text", "goal", "value", "bound"}``: ``value``
    is ``None`` when not measured; ``bound`` says, from this run's own
    numbers, what limits a target that is not met.
    """
    rows = []

    def add(key, text, value, bound=""):
        rows.append({"key": key, "text": text, "goal": GOALS[key],
                     "value": value, "bound": bound})

    training = {r["preset"]: r for r in results.get("training", [])}
    paper = training.get("paper", {}).get("summary", {})
    f32 = paper.get("float32", {})
    add("utilisation", "training utilisation at `paper`, float32 (wall, "
        "paired; best/best " + _f(f32.get("utilisation_best"), 3)
        + ", CPU time " + _f(f32.get("utilisation_cpu"), 3) + ")",
        f32.get("utilisation"),
        "the step's work that is not multiply-adds (batch norm, ReLU, "
        "pooling, dropout, Adam: memory-bound, not counted as FLOPs) and "
        "oneDNN's convolutions below the matmul peak; see What was tried")
    for preset, run in training.items():
        s = run.get("summary", {})
        if "bf16_speedup" in s:
            add("bf16_speedup",
                f"`mixed_bfloat16` training speed-up over float32, "
                f"`{preset}`", s["bf16_speedup"],
                f"`{preset}` runs at "
                f"{_f(s.get('float32', {}).get('utilisation'), 2)} of the "
                "float32 matmul peak in float32: its step is bound by "
                "memory traffic and per-op overhead (small convolutions, "
                "batch norm, ReLU, pooling, Adam), which bfloat16 does "
                "not shrink; only multiply-add-bound steps gain (see "
                "What was tried)")
    acc = results.get("accuracy", {})
    if "float32" in acc and "mixed_bfloat16" in acc:
        add("bf16_accuracy", "`mixed_bfloat16` validation accuracy minus "
            f"float32 (`{acc['preset']}` run)",
            acc["mixed_bfloat16"]["val_mean_acc"]
            - acc["float32"]["val_mean_acc"], _accuracy_spread(acc))
    p = results.get("pipeline", {}).get("summary")
    if p:
        pre = results["pipeline"]["preset"]
        bound = ""
        if "expected" in p:
            own = p["alone"][results["pipeline"]["image_size"]]["cpu_ms"]
            bound = (f"expected T / (T + P) = {_f(p['expected'], 3)}: the "
                     f"pipeline's own work (P = {_f(own, 3)}"
                     f" CPU-ms per image) runs on the cores the step uses "
                     f"(T = {_f(p['train_cpu_ms'], 3)} CPU-ms per image); "
                     "on a GPU host it would run beside the step")
        add("pipeline", f"input-pipeline efficiency (TFRecord / in-memory), "
            f"`{pre}`, measured in `fit`", p["efficiency"], bound)
        for preset, e in p.get("expected_by_preset", {}).items():
            if preset == pre:
                continue
            add("pipeline", "input-pipeline efficiency, "
                f"`{preset}`: expected T / (T + P) from this run's CPU "
                "costs (not timed in `fit`)", e["expected"],
                f"T = {_f(e['train_cpu_ms'], 1)}, P = "
                f"{_f(e['pipeline_cpu_ms'], 3)} CPU-ms per image")
    for v in results.get("serving", []):
        s = v.get("summary", {})
        bound = ""
        if "expected_ratio" in s:
            bound = (f"decoding a JPEG in the graph costs D = "
                     f"{_f(s['decode_ms'], 3)} ms per image, "
                     f"{_f(100 * s['decode_ms'] / s['keras_ms'], 0)}% of "
                     f"the network's K = {_f(s['keras_ms'], 3)} ms, on "
                     f"the same cores (estimate K / (K + D) = "
                     f"{_f(s['expected_ratio'], 3)}): a network this "
                     "small cannot hide it")
        add("serving", "SavedModel-from-JPEG / Keras-on-tensors, batch "
            f"{v['batch_size']}, `{v['preset']}`",
            s.get("throughput_ratio"), bound)
    return rows


def _bfloat16_hardware_note(flags):
    """What the ``mixed_bfloat16`` figures of this report depend on."""
    if "amx_bf16" in flags:
        kernel = ("this CPU has AMX-BF16, whose tile units multiply "
                  "bfloat16 matrices")
    elif "avx512_bf16" in flags:
        kernel = ("this CPU has AVX512_BF16 but no AMX, so bfloat16 dot "
                  "products run on the vector units, a smaller gain than "
                  "AMX tiles give")
    else:
        kernel = ("this CPU has neither AMX-BF16 nor AVX512_BF16, so "
                  "bfloat16 is converted in software and is not expected "
                  "to beat float32")
    return (
        "The `mixed_bfloat16` figures depend on the CPU's bfloat16 units, "
        "which oneDNN uses when `TF_ENABLE_ONEDNN_OPTS` is on: "
        f"{kernel}. Section 1 gives the measured bfloat16 / float32 matmul "
        "ratio; compare reports of different CPUs by their `relevant "
        "flags` row.")


def render_report(results):
    """The Markdown of ``docs/BENCHMARKS.md``."""
    m = results["machine"]
    lines = [
        "# Speed benchmark",
        "",
        "Written by `python -m mtct_tf.benchmark speed` "
        "(`mtct_tf/speed.py`); do not edit by hand. Rerun it on your machine: "
        "every number below is from one run on one machine, and every "
        "comparison alternates its configurations round by round in one "
        "process, so the ratios hold even on a shared machine where the "
        "absolute numbers do not.",
        "",
        f"Command: `{results['command']}`  ",
        f"Date: {results['date']}; run time {results['seconds']:.0f} s"
        + (" (`--quick`: smoke-test sizes, not a measurement)"
           if results["quick"] else "") + ".",
        "",
    ]
    if results.get("note"):
        lines += ["", results["note"]]
    lines += [
        "",
        "## Machine",
        "",
    ]
    load = lambda v: ", ".join(f"{x:.1f}" for x in v) if v else "n/a"  # noqa
    lines += _table(("what", "value"), (
        ("CPU", m["cpu"]),
        ("logical CPUs (usable)", f"{m['logical_cpus']} "
                                  f"({m['usable_cpus']})"),
        ("relevant flags", " ".join(m["flags"]) or "none"),
        ("TensorFlow / Keras / Python", f"{m['tensorflow']} / {m['keras']} "
                                        f"/ {m['python']}"),
        ("oneDNN (`TF_ENABLE_ONEDNN_OPTS`)", m["onednn"]),
        ("load average (1, 5, 15 min) at start",
         load(m.get("loadavg_start"))),
        ("load average at end", load(m.get("loadavg_end"))),
        ("platform", m["platform"]),
    ))
    lines += [
        "",
        "A load average above the CPU count means other processes shared "
        "the cores: wall-clock numbers then understate this code, and the "
        "CPU-time columns (work per CPU-second of this process) are the "
        "steadier view.",
        "",
        _bfloat16_hardware_note(m["flags"]),
        "",
        "## Targets",
        "",
    ]
    rows = []
    for row in target_rows(results):
        v, goal = row["value"], row["goal"]
        if v is None:
            rows.append((row["text"], f">= {goal:g}", "not measured", "",
                         ""))
            continue
        met = v >= goal
        rows.append((row["text"], f">= {goal:g}", _f(v, 3),
                     "met" if met else f"not met ({_f(v - goal, 3)})",
                     "" if met else row["bound"]))
    lines += _table(("target", "goal", "measured", "", "what bounds it"),
                    rows)

    peak = results["peak"]
    lines += ["", "## 1. Matrix-multiply peak", "",
              "Square `tf.matmul` of n x n operands through `tf.function`, "
              "after a warm-up, sizes alternating; best sample of each "
              "dtype (2 n^3 FLOPs per product).", ""]
    rows = []
    for dtype in ("float32", "bfloat16"):
        d = peak[dtype]
        rows.append((dtype, _f(d["gflops"]), d["best_n"],
                     _f(d["gflops_per_cpu_s"]), len(d["samples"])))
    lines += _table(("dtype", "peak GFLOP/s (wall)", "at n",
                     "median GFLOP per CPU-s", "samples"), rows)
    lines += ["", f"bfloat16 / float32 peak: "
                  f"{_f(peak['bf16_over_f32'], 2)}x.", ""]

    lines += ["## 2. Training step", "",
              "`MTNTrainer.train_on_batch` (forward, backward, Adam "
              "update: the step `fit` runs) on a fixed random batch; the "
              "first step (tracing) and a first full round (still 1.3-1.8x "
              "slower) are not timed. Each round times one step per "
              "precision, each after a matmul sample (~0.5 s) of its "
              "dtype.", "",
              "FLOPs per image = 3 x `count_flops` (the forward "
              "multiply-adds x 2 of every conv and dense layer): the "
              "backward pass computes the gradient of each layer's input "
              "and of its weights, each costing as much as the forward. "
              "This slightly over-counts (the first conv needs no input "
              "gradient) and leaves out batch norm, ReLU, pooling and the "
              "optimiser, which are memory-bound and do no multiply-adds.",
              "",
              "Utilisation = FLOPs per image x images/s / float32 peak. "
              "Wall clock (the target's): each step's GFLOP/s over that "
              "of the float32 matmul sample taken just before it, median "
              "over rounds; the machine's speed drifts within a run (the "
              "matmul samples of one run span +-20%), and adjacent "
              "samples drift together. Best/best: the best step over the "
              "best float32 matmul of the whole run, which favours the "
              "matmul (many short samples against a few long steps). "
              "CPU time: median GFLOP per CPU-second of the steps over "
              "that of the matmul samples taken between them.", ""]
    rows = []
    for run in results.get("training", []):
        s = run["summary"]
        for precision in run["steps"]:
            if precision not in s:
                continue
            r = s[precision]
            rows.append((
                run["preset"], run["image_size"], run["batch_size"],
                precision, _f(run["forward"] / 1e9, 3),
                _f(run["train"] / 1e9, 3),
                _f(r["images_per_second"], 2),
                _f(r["images_per_second_median"], 2), _f(r["gflops"]),
                _f(r["utilisation"], 3), _f(r.get("utilisation_best"), 3),
                _f(r["utilisation_cpu"], 3), len(run["steps"][precision])))
    lines += _table(("preset", "px", "batch", "precision", "GFLOP fwd/img",
                     "GFLOP train/img", "img/s (best)", "img/s (median)",
                     "GFLOP/s (best)", "utilisation (wall, paired)",
                     "utilisation (best/best)", "utilisation (CPU)",
                     "steps"), rows)
    lines.append("")
    for run in results.get("training", []):
        s = run["summary"]
        if "bf16_speedup" in s:
            lines.append(
                f"- `{run['preset']}`: `mixed_bfloat16` / float32 step "
                f"speed {_f(s['bf16_speedup'], 2)}x (wall, median of "
                f"per-round ratios), {_f(s['bf16_speedup_cpu'], 2)}x (CPU "
                f"time); first step (trace + warm-up) "
                + ", ".join(f"{k} {v:.0f} s" for k, v in
                            run["first_step_seconds"].items()) + ".")
    acc = results.get("accuracy")
    if acc:
        lines += ["", "Accuracy check: for each seed, the same network "
                  "(same initial weights, same data order) trained for "
                  f"{acc['steps']} steps of batch {acc['batch_size']} at "
                  f"the `{acc['preset']}` preset in each precision, then "
                  "evaluated on the validation split; the mean row is the "
                  "target's:", ""]
        rows = []
        for p in PRECISIONS:
            for r in acc.get("runs", {}).get(p, []):
                rows.append((p, r["seed"], _f(r["val_mean_acc"], 4),
                             _f(r["val_ce"], 4), _f(r["train_loss"], 4)))
            if p in acc:
                rows.append((p, "mean", _f(acc[p]["val_mean_acc"], 4),
                             _f(acc[p]["val_ce"], 4),
                             _f(acc[p]["train_loss"], 4)))
        lines += _table(("precision", "seed", "val mean attribute accuracy",
                         "val cross-entropy", "last train loss"), rows)

    p = results.get("pipeline")
    if p:
        s = p["summary"]
        lines += ["", "## 3. Input pipeline", "",
                  f"Keras `fit` of the `{p['preset']}` preset "
                  f"({p['precision']}, batch {p['batch_size']}) fed by "
                  "`pipeline.make_dataset` on the TFRecord shards (parse, "
                  "decode, jittered crop, flip, photometric jitter, on the "
                  "training path) vs the same `fit` fed by "
                  f"{p['steps']} of those batches held in memory as "
                  f"tensors. {p['rounds']} rounds of {p['steps']} timed "
                  "steps per feed, alternating (ABBA).", ""]
        lines += _table(("feed", "images/s (median)"), (
            ("TFRecord shards", _f(s["tfrecord_images_per_second"])),
            ("in-memory tensors", _f(s["memory_images_per_second"]))))
        lines += ["", f"Efficiency (TFRecord / in-memory, median of "
                      f"per-round ratios): {_f(s['efficiency'], 3)} wall, "
                      f"{_f(s['efficiency_cpu'], 3)} CPU time."]
        if s.get("alone"):
            lines += ["", "The pipeline alone (batches pulled with no "
                      "training, same rounds), and the step's CPU time per "
                      "image fed from memory, "
                      f"T = {_f(s['train_cpu_ms'], 3)} ms:", ""]
            lines += _table(("image size", "images/s", "CPU-ms per image"),
                            [(k, _f(a["images_per_second"]),
                              _f(a["cpu_ms"], 3))
                             for k, a in sorted(s["alone"].items())])
            if "expected" in s:
                lines += ["", "Both use the same cores, so the pipeline's "
                          "CPU time P per image is taken from the step's: "
                          "the expected efficiency is T / (T + P) = "
                          f"{_f(s['expected'], 3)} (measured "
                          f"{_f(s['efficiency'], 3)}). Only less work per "
                          "image, or cores the step does not use (a GPU "
                          "host's), raises it."]

    if results.get("serving"):
        v0 = results["serving"][0]
        lines += ["", "## 4. Serving", "",
                  "The MTN exported with `export_lib.export_saved_model` "
                  "(float32), its `serving_default` fed encoded JPEGs "
                  f"({v0['jpeg_size']} bytes, rendered at "
                  f"{results['sizes']['image_size']} px) vs "
                  "`predict_on_batch` on the same images already decoded "
                  "and resized as the serving graph does it. Rounds "
                  "alternate the two paths; ratio = median of per-round "
                  "ratios. The timed model is reloaded with "
                  "`tf.saved_model.load`; one batch is also run through "
                  "the TF1 session loader (MetaGraph, restore op, tensor "
                  "names: TF Serving's path), whose difference from "
                  "Keras is the last column.", ""]
        rows = []
        for v in results["serving"]:
            s = v["summary"]
            rows.append((
                v["preset"], _f(s["savedmodel_images_per_second"]),
                _f(s["keras_images_per_second"]),
                _f(s["throughput_ratio"], 3),
                _f(s["throughput_ratio_cpu"], 3),
                _f(s["savedmodel_latency_ms"], 2),
                _f(s["keras_latency_ms"], 2), f"{v['max_abs_diff']:.1e}",
                _sci(v.get("session_max_abs_diff"))))
        lines += _table((
            "preset", f"SavedModel JPEG img/s (batch {v0['batch_size']})",
            "Keras tensors img/s", "ratio (wall)", "ratio (CPU)",
            "SavedModel batch-1 ms", "Keras batch-1 ms",
            "max prob. difference", "same, TF1 session loader"), rows)
        rows = [(v["preset"], _f(v["summary"].get("keras_ms"), 3),
                 _f(v["summary"].get("graph_ms"), 3),
                 _f(v["summary"].get("graph_ratio"), 3),
                 _f(v["summary"].get("decode_ms"), 3),
                 _f(v["summary"].get("expected_ratio"), 3))
                for v in results["serving"]
                if "decode_ms" in v["summary"]]
        if rows:
            lines += ["", "Where the time goes, per image at batch "
                      f"{v0['batch_size']} (medians): K = Keras on "
                      "tensors, G = the SavedModel's `serving_tensors` "
                      "signature on the same tensors, D = its "
                      "`serving_default` on JPEGs minus G: the decoding, "
                      "bomb check and resizing inside the graph. They "
                      "share the cores with the network, so with G = K "
                      "the JPEG path reaches K / (K + D) of Keras.", ""]
            lines += _table(("preset", "K ms", "G ms", "K / G", "D ms",
                             "K / (K + D)"), rows)

    lines += ["", "## 5. Data tools and memory", ""]
    rows = [("renderer (`synthetic.render_dataset`, "
             f"{results['render']['workers']} workers, "
             f"{results['render']['image_size']} px)",
             _f(results["render"]["images_per_second"]),
             results["render"]["images"]),
            ("converter (`convert.convert_manifest`, "
             f"{results['convert']['workers']} workers)",
             _f(results["convert"]["images_per_second"]),
             results["convert"]["images"])]
    if "detector" in results:
        rows.append(("detector cropping (`detector.crop_with_detector`)",
                     _f(results["detector"]["images_per_second"]),
                     results["detector"]["images"]))
    else:
        rows.append(("detector cropping", "not measured: pass --detector",
                     ""))
    lines += _table(("tool", "images/s", "images"), rows)
    lines += ["", "Peak RSS of each measurement, which runs in a process of "
                  "its own: the process (`VmHWM`) and its largest worker "
                  "process, if any (`getrusage`, which also counts the "
                  "memory of the process it was forked from: an upper "
                  "bound).", ""]
    named = [(name, results[name]) for name in
             ("render", "convert", "peak", "pipeline", "detector",
              "accuracy") if name in results]
    named += [(f"training `{r['preset']}` (both precisions)", r)
              for r in results.get("training", [])]
    named += [(f"serving `{r['preset']}` (export, load, both paths)", r)
              for r in results.get("serving", [])]
    lines += _table(("measurement", "peak RSS (MB)", "largest worker (MB)"),
                    [(name, _f(r["peak_rss_mb"], 0),
                      _f(r["children_peak_rss_mb"], 0)
                      if r.get("children_peak_rss_mb") else "-")
                     for name, r in named])

    lines += ["", "## What was tried", ""]
    if TRIED:
        lines += _table(("what", "measured", "kept"), TRIED)
    lines += [""]
    return "\n".join(lines)


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
    parser.set_defaults(func=main)


def main(args):
    command = "python -m mtct_tf.benchmark " + " ".join(
        shlex.quote(a) for a in sys.argv[1:])
    run_speed(args.out, quick=args.quick, detector=args.detector,
              work_dir=args.work_dir, command=command)
    return 0
