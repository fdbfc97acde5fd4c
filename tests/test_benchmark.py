"""The speed benchmark: report arithmetic, the CLI, a quick real run.

Also checks ``FusedBatchNormalization`` against Keras' batch norm: the
benchmark is why the trunk uses it, so the equivalence is tested here.
"""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from mtct_tf import benchmark
from mtct_tf import model as model_lib
from mtct_tf.benchmarks import measurement
from mtct_tf.benchmarks import speed
from mtct_tf.benchmarks import speed_report as report_lib
from mtct_tf.benchmarks import speed_summary as summary

SECTIONS = ("## Machine", "## Targets", "## 1. Matrix-multiply peak",
            "## 2. Training step", "## 3. Input pipeline", "## 4. Serving",
            "## 5. Data tools and memory", "## What was tried")


def _sample(gflop, wall, cpu=None):
    return {"n": 2048, "gflop": gflop, "wall": wall, "cpu": cpu or wall * 2}


def _fake_results():
    """A results dict of known numbers, shaped like ``run_speed``'s."""
    steps = {"float32": [{"wall": 2.0, "cpu": 4.0}, {"wall": 1.0,
                                                      "cpu": 2.0}],
             "mixed_bfloat16": [{"wall": 1.0, "cpu": 2.0},
                                {"wall": 0.5, "cpu": 1.0}]}
    return {
        "quick": True, "sizes": {"image_size": 64},
        "command": "python -m mtct_tf.benchmark speed --quick",
        "date": "2026-01-01T00:00:00", "seconds": 60.0,
        "machine": {"cpu": "x", "logical_cpus": 2, "usable_cpus": 2,
                    "flags": ["avx512f"], "python": "3", "tensorflow": "2",
                    "keras": "3", "onednn": "default (on)", "platform": "p",
                    "loadavg_start": [1.0, 1.0, 1.0],
                    "loadavg_end": [1.0, 1.0, 1.0]},
        "render": {"images": 8, "images_per_second": 10.0, "workers": 1,
                   "image_size": 64, "peak_rss_mb": 100.0,
                   "children_peak_rss_mb": 0.0},
        "convert": {"images": 8, "images_per_second": 50.0, "workers": 1,
                    "peak_rss_mb": 400.0, "children_peak_rss_mb": 0.0},
        "peak": {"float32": {"gflops": 100.0, "best_n": 2048,
                             "gflops_per_cpu_s": 50.0,
                             "samples": [_sample(100.0, 1.0)]},
                 "bfloat16": {"gflops": 400.0, "best_n": 2048,
                              "gflops_per_cpu_s": 200.0,
                              "samples": [_sample(400.0, 1.0)]},
                 "bf16_over_f32": 4.0, "peak_rss_mb": 500.0},
        "training": [{
            "preset": "paper", "image_size": 224, "batch_size": 8,
            "forward": 5e9, "train": 15e9, "rounds": 2,
            "first_step_seconds": {"float32": 10.0, "mixed_bfloat16": 9.0},
            # Adjacent float32 samples: 80 GFLOP/s wall, 50 per CPU-s.
            "round_peaks": {"float32": [_sample(80.0, 1.0, 1.6)] * 2,
                            "bfloat16": [_sample(300.0, 1.0)] * 2},
            "steps": steps, "peak_rss_mb": 900.0}],
        "pipeline": {"preset": "small", "precision": "float32",
                     "batch_size": 4, "steps": 10, "rounds": 2,
                     "image_size": 64, "peak_rss_mb": 700.0,
                     "samples": {"tfrecord": [{"wall": 1.0, "cpu": 1.0},
                                              {"wall": 2.0, "cpu": 2.0}],
                                 "memory": [{"wall": 0.9, "cpu": 0.8},
                                            {"wall": 1.9, "cpu": 1.6}],
                                 "alone": {
                                     "64": [{"wall": 0.5, "cpu": 0.5}] * 2,
                                     "224": [{"wall": 4.0, "cpu": 4.0}] * 2,
                                 }}},
        "serving": [{"preset": "small", "batch_size": 4, "image_size": 64,
                     "jpeg_size": 1000, "max_abs_diff": 1e-7,
                     "session_max_abs_diff": 3e-8,
                     "peak_rss_mb": 800.0,
                     "samples": {
                         "savedmodel_jpeg": {
                             "batch": [{"wall": 0.2, "cpu": 0.2}],
                             "single": [{"wall": 0.01, "cpu": 0.01}]},
                         "keras_tensors": {
                             "batch": [{"wall": 0.1, "cpu": 0.1}],
                             "single": [{"wall": 0.01, "cpu": 0.01}]},
                         "savedmodel_tensors": {
                             "batch": [{"wall": 0.12, "cpu": 0.12}],
                             "single": [{"wall": 0.01, "cpu": 0.01}]}}}],
        "accuracy": {"preset": "tiny", "steps": 4, "batch_size": 4,
                     "peak_rss_mb": 600.0, "seeds": [0, 1],
                     "runs": {"float32": [
                         {"seed": 0, "val_mean_acc": 0.52, "val_ce": 1.0,
                          "train_loss": 2.0},
                         {"seed": 1, "val_mean_acc": 0.48, "val_ce": 1.0,
                          "train_loss": 2.0}]},
                     "float32": {"val_mean_acc": 0.5, "val_ce": 1.0,
                                 "train_loss": 2.0},
                     "mixed_bfloat16": {"val_mean_acc": 0.49, "val_ce": 1.0,
                                        "train_loss": 2.0}},
    }


def test_summary_arithmetic_and_report():
    results = summary.summarize(_fake_results())
    s = results["training"][0]["summary"]
    # Best float32 step: 8 images in 1 s; 15 GFLOP each -> 120 GFLOP/s over
    # the best float32 matmul of the run (100, the peak section's).
    assert s["peak_gflops"] == 100.0
    assert s["float32"]["images_per_second"] == pytest.approx(8.0)
    assert s["float32"]["images_per_second_median"] == pytest.approx(8 / 1.5)
    assert s["float32"]["utilisation_best"] == pytest.approx(8 * 15 / 100)
    # Paired with the matmul sample before each step (80 GFLOP/s): 60 and
    # 120 GFLOP/s -> 0.75 and 1.5, median 1.125.
    assert s["float32"]["utilisation"] == pytest.approx(1.125)
    # CPU: 120 GFLOP in a median 3 CPU-s = 40 per CPU-s, over 80 / 1.6 = 50.
    assert s["float32"]["utilisation_cpu"] == pytest.approx(40 / 50)
    assert s["bf16_speedup"] == pytest.approx(2.0)
    p = results["pipeline"]["summary"]
    assert p["efficiency"] == pytest.approx(np.median([0.9, 0.95]))
    assert p["memory_images_per_second"] > p["tfrecord_images_per_second"]
    v = results["serving"][0]["summary"]
    assert v["throughput_ratio"] == pytest.approx(0.5)
    rows = {r["key"]: r for r in report_lib.target_rows(results)}
    assert rows["utilisation"]["value"] == pytest.approx(1.125)
    assert rows["bf16_accuracy"]["value"] == pytest.approx(-0.01)
    assert "moves by 0.040 between seeds 0, 1" in rows["bf16_accuracy"][
        "bound"]
    assert rows["bf16_speedup"]["value"] == pytest.approx(2.0)
    # Pipeline alone: 0.5 CPU-s for 10 batches of 4 = 12.5 CPU-ms per image;
    # the memory-fed step: median 1.2 CPU-s / 40 images = 30 CPU-ms.
    assert p["alone"][64]["cpu_ms"] == pytest.approx(12.5)
    assert p["train_cpu_ms"] == pytest.approx(30.0)
    assert p["expected"] == pytest.approx(30 / 42.5)
    # And for `paper` from its float32 step: median 3 CPU-s / 8 images.
    e = p["expected_by_preset"]["paper"]
    assert e["expected"] == pytest.approx(375 / (375 + 100))
    # Serving per image: JPEG path 50 ms, SavedModel on tensors 30 ms (so
    # decoding D = 20 ms), Keras 25 ms.
    assert v["decode_ms"] == pytest.approx(20.0)
    assert v["graph_ratio"] == pytest.approx(0.1 / 0.12)
    assert v["expected_ratio"] == pytest.approx(25 / 45)
    assert "estimate K / (K + D) = 0.556" in rows["serving"]["bound"]

    report = report_lib.render_report(results)
    for section in SECTIONS:
        assert section in report
    assert "not met (-0.450)" in report  # Serving: 0.5 vs 0.95.
    row = next(line for line in report.splitlines()
               if line.startswith("| small |") and "| 1.0e-07 |" in line)
    assert row.endswith("| 3.0e-08 |")  # The session-loader check.
    assert "not measured: pass --detector" in report
    # The fixture's CPU has AVX-512 but no bfloat16 units.
    assert "neither AMX-BF16 nor AVX512_BF16" in report
    for flags, says in ((["avx512_bf16"], "AVX512_BF16 but no AMX"),
                        (["avx512_bf16", "amx_bf16"], "has AMX-BF16")):
        results["machine"]["flags"] = flags
        assert says in report_lib.render_report(results)


def test_cli_dispatches_speed_subcommand(monkeypatch):
    seen = {}
    monkeypatch.setattr(speed, "run_speed",
                        lambda out, **kw: seen.update(out=out, **kw))
    assert benchmark.main(["speed", "--quick", "--out", "x.md"]) == 0
    assert seen["out"] == "x.md" and seen["quick"] and not seen["detector"]
    with pytest.raises(SystemExit):
        benchmark.main(["no_such_command"])


@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16"])
def test_fused_batch_norm_matches_keras(policy):
    keras.mixed_precision.set_global_policy(policy)
    try:
        x = np.random.RandomState(0).normal(2, 3, (4, 6, 5, 3)).astype(
            "float32")
        ref = keras.layers.BatchNormalization(momentum=0.9)
        fused = model_lib.FusedBatchNormalization(momentum=0.9)
        for layer in (ref, fused):
            layer.build(x.shape)
            layer.gamma.assign([0.5, 1.0, 2.0])
            layer.beta.assign([0.1, -0.2, 0.3])
        w = tf.constant([1.0, 2.0, 3.0])
        outs, grads = [], []
        for layer in (ref, fused):
            xt = tf.constant(x)
            with tf.GradientTape() as tape:
                tape.watch(xt)
                y = tf.cast(layer(xt, training=True), tf.float32)
                loss = tf.reduce_sum(y ** 2 * w)
            grads.append(tape.gradient(loss, [xt, layer.gamma]))
            outs.append(y.numpy())
        tol = 1e-4 if policy == "float32" else 2e-2
        np.testing.assert_allclose(outs[1], outs[0], atol=tol * 10)
        for a, b in zip(grads[1], grads[0]):
            np.testing.assert_allclose(b.numpy(), a.numpy(),
                                       rtol=tol, atol=tol * 10)
        # Moving statistics: Keras' update (biased variance).
        mean, var = x.mean((0, 1, 2)), x.var((0, 1, 2))
        np.testing.assert_allclose(fused.moving_mean.numpy(), 0.1 * mean,
                                   rtol=1e-2 if policy != "float32" else 1e-5)
        np.testing.assert_allclose(fused.moving_variance.numpy(),
                                   0.9 + 0.1 * var, rtol=1e-2)
        np.testing.assert_allclose(fused.moving_variance.numpy(),
                                   ref.moving_variance.numpy(), rtol=1e-5)
        # Inference uses the moving statistics, as Keras does.
        np.testing.assert_allclose(
            np.asarray(fused(x, training=False), "float32"),
            np.asarray(ref(x, training=False), "float32"), atol=tol * 10)
        assert fused.get_config() == {**ref.get_config(),
                                      "name": fused.name}
    finally:
        keras.mixed_precision.set_global_policy("float32")


@pytest.mark.large
def test_quick_speed_run_writes_a_consistent_report(tmp_path):
    out = tmp_path / "BENCHMARKS.md"
    results = speed.run_speed(str(out), quick=True,
                              work_dir=str(tmp_path / "work"),
                              log=lambda *a: None)
    report = out.read_text()
    for section in SECTIONS:
        assert section in report
    assert (tmp_path / "BENCHMARKS.json").exists()
    peak = results["peak"]["float32"]["gflops"]
    assert peak > 0 and results["peak"]["bfloat16"]["gflops"] > 0
    for run in results["training"]:
        s = run["summary"]
        assert run["train"] == 3 * run["forward"] > 0
        for precision in measurement.PRECISIONS:
            r = s[precision]
            assert r["images_per_second"] > 0
            assert r["utilisation_best"] == pytest.approx(
                run["train"] * r["images_per_second"] / 1e9
                / s["peak_gflops"])
            assert r["utilisation"] > 0
            assert len(run["steps"][precision]) == run["rounds"]
            assert s["peak_gflops"] >= peak
            # The utilisation row of the table shows the same number.
            row = next(line for line in report.splitlines()
                       if line.startswith(f"| {run['preset']} |")
                       and f"| {precision} |" in line)
            assert f"{r['utilisation']:.3f}" in row
    p = results["pipeline"]["summary"]
    assert p["tfrecord_images_per_second"] > 0
    assert 0 < p["efficiency"] < 10
    for v in results["serving"]:
        assert v["summary"]["savedmodel_images_per_second"] > 0
        assert v["max_abs_diff"] < 1e-4  # Same graph, same images.
        assert v["session_max_abs_diff"] < 1e-4  # As TF Serving loads it.
    for name in ("render", "convert"):
        assert results[name]["images_per_second"] > 0
        assert results[name]["peak_rss_mb"] > 0
    acc = results["accuracy"]
    for precision in measurement.PRECISIONS:
        assert 0 <= acc[precision]["val_mean_acc"] <= 1
        assert math.isfinite(acc[precision]["val_ce"])
