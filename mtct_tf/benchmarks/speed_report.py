"""The speed benchmark's report: ``docs/BENCHMARKS.md`` from the results.

``target_rows`` compares the results with the goals; ``render_report`` writes
the whole Markdown page. The renderer is long because the page is: one
function per page keeps its sections in reading order.
"""

from mtct_tf.benchmarks.measurement import PRECISIONS

# The goals (thresholds) of the speed targets.
GOALS = {"utilisation": 0.80, "bf16_speedup": 1.4, "bf16_accuracy": -0.02,
         "pipeline": 0.97, "serving": 0.95}


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
        "(`mtct_tf/benchmarks/speed.py`); do not edit by hand. Rerun it on "
        "your machine: "
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

    lines += ["", "## What was tried", "",
              "The experiments run while writing this benchmark (profiles, "
              "kernels, precisions, batch sizes, input-pipeline and "
              "decoding variants), what each measured and whether it was "
              "kept, are written up by hand in `docs/BENCHMARKS_TRIED.md`: "
              "they are not rerun.", ""]
    return "\n".join(lines)
