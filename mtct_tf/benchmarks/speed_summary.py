"""The speed benchmark's maths: the numbers the report shows, from the samples.

Pure Python on the samples ``measurement`` returns; no TensorFlow. Ratios are
medians of per-round ratios, because the configurations they compare
alternate round by round in one process (see ``mtct_tf.benchmarks.speed``).
"""

import statistics


def median(values):
    """The median as a float; NaN for no values."""
    return float(statistics.median(values)) if values else float("nan")


def rate(sample):
    """GFLOP per wall second and per CPU second of a matmul sample."""
    return {"wall": sample["gflop"] / sample["wall"],
            "cpu": sample["gflop"] / max(sample["cpu"], 1e-9)}


def summarize(results):
    """Adds the derived numbers (images/s, ratios, utilisation) in place."""
    peak = results["peak"]
    f32 = peak["float32"]["gflops"]
    f32_cpu = peak["float32"]["gflops_per_cpu_s"]
    for run in results.get("training", []):
        run["summary"] = s = {}
        # The reference is the best float32 sample of the whole benchmark:
        # the peak section's and this worker's own round samples.
        round_f32 = [rate(x) for x in run["round_peaks"]["float32"]]
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
                      / rate(m)["wall"]
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


def recommended_bf16(results):
    """Whether the training runs say ``mixed_bfloat16`` is faster here."""
    summarize({k: v for k, v in results.items()
               if k in ("peak", "training")})
    speedups = [r["summary"].get("bf16_speedup", 0.0)
                for r in results["training"]]
    return bool(speedups) and min(speedups) > 1.0
