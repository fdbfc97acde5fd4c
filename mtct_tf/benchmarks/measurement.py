"""Speed measurements, each run in a Python process of its own.

``run_measurement(name, ...)`` starts a fresh interpreter that runs
``MEASUREMENTS[name]`` (``worker_main``) and returns its JSON-able dict,
with the process's wall / CPU time and peak RSS added: the matmul peak,
the training step per precision, the input pipeline in ``fit``, serving,
the renderer, the converter, detector cropping and a short accuracy run.
``mtct_tf.benchmarks.speed`` decides what to run; ``speed_summary``
derives the numbers; ``speed_report`` writes them. The harness and the
eight measurements stay one module because every measurement is a worker
of the same harness and shares its clock, model builder and data helpers.

TensorFlow is imported only inside the measurements: the ``python -m
mtct_tf.benchmark`` parser imports this module and stays instant.
"""

import importlib
import json
import os
import platform
import resource
import subprocess
import sys
import time

from mtct_tf.benchmarks.speed_summary import median, rate

PAPER_BATCH = 16
SMALL_BATCH = 32
SERVE_BATCH = 32
# A matmul of n = 2048 takes ~0.1-0.3 s here: long enough to time, short
# enough to sample between training steps.
PEAK_SIZES = (2048, 3072, 4096)
ROUND_PEAK_SIZE = 2048
PRECISIONS = ("float32", "mixed_bfloat16")


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
# Measurements. Each runs in a fresh process (``worker_main``) and returns a
# JSON-able dict.


def _quiet_tensorflow():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    return tf


class MatmulSampler:
    """Times chained ``n x n`` matmuls, one sample per call.

    The operands, the traced function and the repetition count of a
    ``(dtype, n)`` are made at its first sample and kept, so that every
    later sample of that size times the same work.
    """

    def __init__(self, tf):
        self._tf = tf
        self._prepared = {}

    def __call__(self, dtype, n, min_seconds=0.2):
        """One sample of ~``min_seconds`` (set at the size's first sample).

        Returns:
            ``{"n", "gflop", "wall", "cpu"}``; the result is fetched to the
            host, so the time covers the whole computation.
        """
        tf = self._tf
        key = (dtype, n)
        if key not in self._prepared:
            a = tf.cast(tf.random.normal([n, n], stddev=n ** -0.5), dtype)
            b = tf.cast(tf.random.normal([n, n], stddev=n ** -0.5), dtype)
            fn = tf.function(tf.matmul)
            fn(a, b).numpy()  # Warm-up: trace, pack the operands.
            t = Clock()
            fn(a, b).numpy()
            one = max(t.read()[0], 1e-3)
            self._prepared[key] = (a, b, fn,
                                   max(1, int(round(min_seconds / one))))
        a, b, fn, reps = self._prepared[key]
        t = Clock()
        for _ in range(reps):
            c = fn(a, b)
        c.numpy()  # CPU ops run as they are called; this only syncs.
        wall, cpu = t.read()
        return {"n": n, "gflop": 2.0 * n ** 3 * reps / 1e9, "wall": wall,
                "cpu": cpu}


def measure_peak(sizes=PEAK_SIZES, samples=4, sampler=None):
    """Matmul peak (GFLOP/s, best of ``samples`` per size) per dtype."""
    tf = _quiet_tensorflow()
    sample = sampler or MatmulSampler(tf)
    out = {}
    for name, dtype in (("float32", tf.float32), ("bfloat16", tf.bfloat16)):
        runs = []
        for _ in range(samples):  # Sizes alternate: drift hits all alike.
            runs += [sample(dtype, n) for n in sizes]
        best = max(runs, key=lambda s: rate(s)["wall"])
        out[name] = {
            "gflops": rate(best)["wall"], "best_n": best["n"],
            "gflops_per_cpu_s": median([rate(s)["cpu"] for s in runs]),
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
    sample = MatmulSampler(tf)
    out = {"preset": preset, "batch_size": batch_size, "rounds": rounds}
    if peak_samples:
        out["peak"] = measure_peak(peak_sizes or PEAK_SIZES, peak_samples,
                                   sampler=sample)
    trainers, build = {}, {}
    for precision in precisions:
        t = Clock()
        trainers[precision] = build_trainer(preset, precision,
                                            jit_compile=jit_compile)
        size = trainers[precision].net.image_size
        x, y = _random_batch(batch_size, size)
        trainers[precision].train_on_batch(x, y)  # Trace and warm up.
        build[precision] = t.read()[0]
    net = trainers[precisions[0]].net
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
            peak = sample(getattr(tf, dtype), ROUND_PEAK_SIZE,
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


def _batch_timer():
    """A Keras callback that notes wall / CPU time at every batch end."""
    import keras

    class BatchTimer(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.marks = []

        def on_train_batch_end(self, batch, logs=None):
            self.marks.append((time.perf_counter(), time.process_time()))

    return BatchTimer()


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
    from mtct_tf.data import pipeline, shards

    trainer = build_trainer(preset, precision)
    size = trainer.net.image_size
    files = shards.shard_files(shards_dir, "train")

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
            timer = _batch_timer()
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

    net = build_trainer(preset, precision).net
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
            size = trainer.net.image_size
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


def worker_main(argv):
    """``python -c ... <name> <kwargs.json> <out.json>``: one measurement."""
    name, args_path, out_path = argv
    with open(args_path) as f:
        kwargs = json.load(f)
    t = Clock()
    if name in MEASUREMENTS:
        fn = MEASUREMENTS[name]
    else:  # "package.module:function" of another benchmark module.
        module, function = name.split(":")
        fn = getattr(importlib.import_module(module), function)
    result = fn(**kwargs)
    result["seconds_total"] = round(t.read()[0], 1)
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF,
                                                 resource.RUSAGE_CHILDREN)]
    result["cpu_seconds_total"] = round(
        sum(u.ru_utime + u.ru_stime for u in usage), 1)
    result["peak_rss_mb"], result["children_peak_rss_mb"] = peak_rss_mb()
    with open(out_path, "w") as f:
        json.dump(result, f)


def run_measurement(name, work_dir, env=None, log=print, **kwargs):
    """Runs ``MEASUREMENTS[name](**kwargs)`` in a fresh Python process
    (or ``name`` = ``"package.module:function"``'s function).

    Raises:
        RuntimeError: the process failed; the message ends with its log.
    """
    tag = f"{name.split(':')[-1]}-{len(os.listdir(work_dir))}"
    args_path = os.path.join(work_dir, f"{tag}.args.json")
    out_path = os.path.join(work_dir, f"{tag}.out.json")
    log_path = os.path.join(work_dir, f"{tag}.log")
    with open(args_path, "w") as f:
        json.dump(kwargs, f)
    code = ("import sys; from mtct_tf.benchmarks import measurement; "
            "measurement.worker_main(sys.argv[1:])")
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
