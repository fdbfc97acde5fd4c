"""Which network embeds the shop gallery: the retrieval diagnosis of
docs/PROTOCOL_2.md.

The t-STE term pulls the street network's embedding of a street photo,
f_t(street), towards the *shop stage's* network's embedding of its shop
item, f_s(shop); street-to-shop retrieval so far embedded the gallery with
the street network f_t. ``python -m mtct_tf.benchmark gallery --workdir
runs/r2018`` reads the finished FTT and MTCT runs of an ablation work
directory (both fine-tuning modes, every fraction it holds) and scores
retrieval with the gallery embedded either way:

* on the **validation** split (evaluated here, once per run): the choice of
  which network embeds the gallery (``choose``);
* on the **test** split (the runs' own evaluation): the diagnosis. The lead
  is confirmed in a cell (mode, fraction) when MTCT - FTT top-10 is higher
  with the shop-network gallery on every seed.

Writes ``<out>/results/gallery.json``; the second protocol's report
(``confirm_report``) shows it, and is re-rendered here when
``<out>/results/confirm.json`` exists.
"""

import json
import os
import re

import numpy as np

from mtct_tf import fileio

GALLERIES = {"street": "retrieval", "shop": "retrieval_shop_gallery"}
RUN = re.compile(r"^(ftt|mtct)_(fc|all)_([0-9.]+)(_w[0-9.e+]+)?$")
TOP_K = "10"


def scan(workdir):
    """``[(method, mode, fraction, seed, run_dir)]`` of the finished FTT and
    MTCT runs (a test evaluation written) of an ablation work directory."""
    out = []
    for seed_name in sorted(os.listdir(workdir)):
        if not re.fullmatch(r"seed[0-9]+", seed_name):
            continue
        base = os.path.join(workdir, seed_name)
        for key in sorted(os.listdir(base)):
            m = RUN.match(key)
            run_dir = os.path.join(base, key)
            if m and os.path.exists(_eval_path(run_dir, "test")):
                out.append((m[1].upper(), m[2], float(m[3]),
                            int(seed_name[4:]), run_dir))
    return out


def _eval_path(run_dir, split):
    return os.path.join(run_dir, "eval", f"street_street_{split}.json")


def scores(run_dir, split):
    """Top-k retrieval (%) with each gallery: ``{"street": {k: %},
    "shop": {k: %}}``; the validation split is evaluated when it has not
    been (``evaluation.evaluate``, which scores both galleries)."""
    path = _eval_path(run_dir, split)
    if not os.path.exists(path):
        import keras

        from mtct_tf import evaluation

        keras.backend.clear_session()
        evaluation.evaluate(run_dir, split=split, domain="street")
    with open(path) as f:
        result = json.load(f)
    return {name: {k: 100 * v for k, v in result[key]["topk_accuracy"].items()}
            for name, key in GALLERIES.items() if result.get(key)}


def choose(table):
    """The rule, fixed before the validation numbers were read: for each
    method and mode, the gallery network with the higher validation top-10
    averaged over fractions and seeds (the street network on a tie)."""
    out = {}
    for (method, mode), cells in _by_method_mode(table).items():
        means = {g: float(np.mean([v for c in cells for v in c["val"][g]]))
                 for g in GALLERIES}
        out[f"{method} {mode}"] = {
            "gallery": "shop" if means["shop"] > means["street"] else "street",
            "val_top10": means}
    return out


def _by_method_mode(table):
    groups = {}
    for cell in table:
        groups.setdefault((cell["method"], cell["mode"]), []).append(cell)
    return groups


def diagnose(table, choice=None):
    """Per (mode, fraction): MTCT - FTT test top-10 per seed with each
    gallery, whether the shop-network gallery raises it on every seed (the
    lead), and with ``choice`` (``choose``'s) MTCT - FTT with each method's
    chosen gallery (``"chosen"``: what a user of the defaults gets)."""
    cells = {(c["method"], c["mode"], c["fraction"]): c for c in table}
    out = []
    for (method, mode, fraction), mtct in sorted(cells.items()):
        ftt = cells.get(("FTT", mode, fraction))
        if method != "MTCT" or ftt is None:
            continue
        seeds = sorted(set(mtct["seeds"]) & set(ftt["seeds"]))
        diff = {g: [mtct["test"][g][mtct["seeds"].index(s)]
                    - ftt["test"][g][ftt["seeds"].index(s)] for s in seeds]
                for g in GALLERIES}
        if choice:
            g_m = choice[f"MTCT {mode}"]["gallery"]
            g_f = choice[f"FTT {mode}"]["gallery"]
            diff["chosen"] = [
                mtct["test"][g_m][mtct["seeds"].index(s)]
                - ftt["test"][g_f][ftt["seeds"].index(s)] for s in seeds]
        out.append({"mode": mode, "fraction": fraction, "seeds": seeds,
                    "mtct_minus_ftt": diff,
                    "lead_confirmed": bool(seeds) and all(
                        a > b for a, b in zip(diff["shop"], diff["street"]))})

    return out


def run(workdir, out_dir="docs", log=print):
    """Scores every finished FTT / MTCT run of ``workdir`` with both
    galleries on validation and test; writes ``results/gallery.json``."""
    from mtct_tf.benchmarks import confirm_report

    found = scan(workdir)
    if not found:
        raise ValueError(f"{workdir}: no finished FTT or MTCT run (a "
                         "seed*/ftt_*|mtct_* directory with a test "
                         "evaluation): run the ablation there first")
    table = {}
    for method, mode, fraction, seed, run_dir in found:
        cell = table.setdefault((method, mode, fraction), {
            "method": method, "mode": mode, "fraction": fraction,
            "seeds": [], "val": {g: [] for g in GALLERIES},
            "test": {g: [] for g in GALLERIES}})
        for split in ("val", "test"):
            s = scores(run_dir, split)
            for g in GALLERIES:
                cell[split][g].append(s[g][TOP_K])
        cell["seeds"].append(seed)
        log(f"[gallery] {method} {mode} {fraction:g} seed {seed}: val "
            f"top-10 street {cell['val']['street'][-1]:.1f} / shop "
            f"{cell['val']['shop'][-1]:.1f}")
    table = list(table.values())
    with open(os.path.join(workdir, "render.json")) as f:
        render = json.load(f)
    choice = choose(table)
    data = {"workdir": workdir, "render_seed": render.get("seed"),
            "cells": table, "choice": choice,
            "diagnosis": diagnose(table, choice)}
    os.makedirs(os.path.join(out_dir, "results"), exist_ok=True)
    fileio.write_json(os.path.join(out_dir, "results", "gallery.json"), data)
    confirm = os.path.join(out_dir, "results", "confirm.json")
    if os.path.exists(confirm):
        with open(confirm) as f:
            confirm_report.write_report(json.load(f), out_dir)
    log(f"[gallery] wrote {out_dir}/results/gallery.json")
    return data


def add_arguments(parser):
    """The ``python -m mtct_tf.benchmark gallery`` command line."""
    parser.add_argument("--workdir", required=True,
                        help="an ablation work directory with finished FTT "
                             "and MTCT runs (e.g. the replication's)")
    parser.add_argument("--out", default="docs",
                        help="where results/gallery.json goes (and the "
                             "second protocol's report, if there)")

    def func(args):
        run(args.workdir, args.out)
        return 0

    parser.set_defaults(func=func)
