"""Retrieval benchmark: ScaNN against exact search, recall and queries/s.

``python -m mtct_tf.benchmark retrieval`` builds synthetic galleries of
10^4 and 10^5 embeddings (the ``small`` preset's width: 9 attributes x 128
units), queries each with noisy copies of gallery items (a street photo near
its shop item), and measures for exact search (a matrix product) and ScaNN:
index build time, queries per second (batches of 1,000 queries) and ScaNN's
recall of the exact top-10. Writes its section of ``docs/BENCHMARKS.md``
(the speed report keeps it when it is regenerated).

Synthetic embeddings are enough here: search cost depends on the sizes and
on how clustered the vectors are, not on what produced them. The
items-and-noise model gives the clustered structure of a real gallery (a few
shop images per item, items of similar attributes nearby).
"""

import os
import platform
import time

import numpy as np

from mtct_tf import fileio, retrieval

SIZES = (10_000, 100_000)
DIM = 9 * 128
QUERIES = 1_000
K = 10


SECTION = "retrieval"


def synthetic(n, dim, num_queries, *, seed=0):
    """(gallery [n, dim], queries [num_queries, dim]) with item structure.

    Items are points on the unit sphere grouped around 100 attribute
    clusters; each gallery image is its item plus noise, each query a
    noisier view of a random gallery image's item.
    """
    rng = np.random.default_rng(seed)
    clusters = rng.normal(size=(100, dim))
    items = n // 3  # About 3 shop images per item.
    centres = (clusters[rng.integers(0, 100, items)]
               + 0.7 * rng.normal(size=(items, dim)))
    owner = rng.integers(0, items, n)
    gallery = centres[owner] + 0.3 * rng.normal(size=(n, dim))
    picked = owner[rng.integers(0, n, num_queries)]
    queries = centres[picked] + 0.5 * rng.normal(size=(num_queries, dim))
    return gallery.astype(np.float32), queries.astype(np.float32)


def _timed(fn, repeats=3):
    """(result of the last call, best wall seconds of ``repeats`` calls)."""
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return out, best


def measure(n, *, dim=DIM, num_queries=QUERIES, k=K, seed=0, log=print):
    """Exact vs ScaNN on one gallery size; returns a dict of numbers."""
    gallery, queries = synthetic(n, dim, num_queries, seed=seed)
    row = {"gallery": n, "dim": dim, "queries": num_queries, "k": k}
    exact, row["exact_build_s"] = _timed(
        lambda: retrieval.ExactSearch(gallery), repeats=1)
    (truth, _), seconds = _timed(lambda: exact.search(queries, k))
    row["exact_qps"] = num_queries / seconds
    log(f"  n={n}: exact {row['exact_qps']:.0f} queries/s")
    try:
        scann, row["scann_build_s"] = _timed(
            lambda: retrieval.ScannSearch(gallery, k=k), repeats=1)
    except ImportError as e:
        row["scann_error"] = str(e)
        return row
    (found, _), seconds = _timed(lambda: scann.search(queries, k))
    row["scann_qps"] = num_queries / seconds
    row["scann_recall"] = retrieval.search_recall(found, truth)
    row["scann_leaves"] = [scann.num_leaves, scann.leaves_to_search]
    log(f"  n={n}: ScaNN {row['scann_qps']:.0f} queries/s, recall@{k} "
        f"{row['scann_recall']:.3f} (build {row['scann_build_s']:.1f} s)")
    return row


def render(rows, command, seconds):
    """The Markdown report."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f
                        if line.startswith("model name")), cpu)
    except OSError:
        pass
    lines = [
        "## Street-to-shop retrieval: ScaNN vs exact search", "",
        f"Written by `{command}` (`mtct_tf/benchmarks/retrieval.py`) in "
        f"{seconds:.0f} s on {cpu} ({os.cpu_count()} logical CPUs), load "
        f"average at the end {os.getloadavg()[0]:.1f}. Synthetic clustered "
        "embeddings (see the module docstring); queries run in batches of "
        f"{rows[0]['queries']}, best of 3 runs; recall = the fraction of "
        f"exact search's top-{rows[0]['k']} that ScaNN returns.", "",
        "| gallery | dim | exact queries/s | ScaNN queries/s | speed-up | "
        f"ScaNN recall@{rows[0]['k']} | ScaNN build (s) | leaves "
        "(searched) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "scann_error" in r:
            lines.append(f"| {r['gallery']:,} | {r['dim']} | "
                         f"{r['exact_qps']:.0f} | n/a | | | | |")
            continue
        lines.append(
            f"| {r['gallery']:,} | {r['dim']} | {r['exact_qps']:.0f} | "
            f"{r['scann_qps']:.0f} | {r['scann_qps'] / r['exact_qps']:.1f}x "
            f"| {r['scann_recall']:.3f} | {r['scann_build_s']:.1f} | "
            f"{r['scann_leaves'][0]} ({r['scann_leaves'][1]}) |")
    lines += [
        "",
        "Exact search is the default of `python -m mtct_tf.retrieve` and the "
        "reference of the retrieval top-k that `evaluate` reports; "
        "`--method scann` trades the recall above for speed on large "
        "galleries.", ""]
    return "\n".join(lines)


def run(out_path, *, sizes=SIZES, dim=DIM, log=print):
    """Measures every size and writes the report (whole, then renamed)."""
    start = time.time()
    rows = [measure(n, dim=dim, log=log) for n in sizes]
    command = "python -m mtct_tf.benchmark retrieval"
    if tuple(sizes) != SIZES:
        command += " --sizes " + " ".join(str(n) for n in sizes)
    text = render(rows, command, time.time() - start)
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    fileio.write_section(out_path, SECTION, text)
    log(f"wrote {out_path}")
    return rows


def add_arguments(parser):
    """The ``python -m mtct_tf.benchmark retrieval`` command line."""
    parser.add_argument("--out", default="docs/BENCHMARKS.md",
                        help="the report whose retrieval section is "
                             "written (the rest is kept)")
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--dim", type=int, default=DIM)

    def func(args):
        run(args.out, sizes=args.sizes, dim=args.dim)
        return 0

    parser.set_defaults(func=func)
