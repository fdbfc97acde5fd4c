"""The decisive benchmark's report: docs/RESULTS.md and ``--show``.

``write_report`` writes, from a finished run's data (``ablation.run``),
``results/ablation.json``, the plots (``ablation_plots``) and the Markdown:
the verdicts first (``headline``, one line per paired cell), a replication
on other data beside them, the hand-written reading kept across
regenerations (``results/notes.md``), then the tables. ``show`` prints the
No-Adapt / FTT / MTCT table and the headline of a finished run.
"""

import json
import os

import numpy as np

from mtct_tf import fileio
from mtct_tf.benchmarks.ablation_arms import (COLUMNS, CONTROLS, FRACTIONS,
                                              LOSSES, MODES, PAPER_ROWS,
                                              control_label, fraction_name)
from mtct_tf.benchmarks.ablation_plots import plot
from mtct_tf.benchmarks.ablation_stats import paired

RETRIEVAL_K = ("1", "5", "10", "20")
NOTES = "notes.md"
VERDICT_TEXT = {"better": "**MTCT better (separated)**",
                "worse": "**MTCT worse (separated)**",
                "not separated": "**not separated**"}
CONTRAST_TEXT = {
    "better": "**MTCT's gain larger with fewer labels (separated)**",
    "worse": "**MTCT's gain smaller with fewer labels (separated)**",
    "not separated": "**not separated**"}
LOSS_VERDICT_TEXT = {"better": "**above FTT (separated)**",
                     "worse": "**below FTT (separated)**",
                     "not separated": "**not separated**"}


def cell(mean_std, n=None):
    """``"48.91 ± 2.72"`` (``"48.91"`` with one seed)."""
    mean, std = mean_std
    if n == 1:
        return f"{mean:.2f}"
    return f"{mean:.2f} ± {std:.2f}"


def diff_cell(p):
    """A ``paired`` difference: ``"+2.41 ± 0.21 [+1.89, +2.93]"``."""
    if p["interval"] is None:
        return f"{p['mean']:+.2f} (1 seed)"
    low, high = p["interval"]
    return f"{p['mean']:+.2f} ± {p['std']:.2f} [{low:+.2f}, {high:+.2f}]"


def _verdict_text(p):
    return (VERDICT_TEXT if p["fraction"] is not None
            else CONTRAST_TEXT)[p["verdict"]]


def verdict_lines(table):
    """One Markdown line per entry of ``comparisons``."""
    lines = []
    for p in table:
        where = (f"{fraction_name(p['fraction'])} street labels"
                 if p["fraction"] is not None else "small-data contrast")
        text = _verdict_text(p)
        lines.append(f"`{p['mode']}`, {where}: {p['what']} = "
                     f"{diff_cell(p)} → {text}")
    return lines


def _table(rows, summary, with_attributes):
    """Markdown table of ``rows`` (display name -> summary label)."""
    rows = {name: summary[label] for name, label in rows.items()
            if label in summary}
    if not rows:
        return "(not run)"
    first = next(iter(rows.values()))
    names = list(first["ap"]) if with_attributes else []
    header = (["Method"] + [a.replace("_", " ").capitalize() for a in names]
              + list(COLUMNS) + ["seeds"])
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for name, s in rows.items():
        cells = ([cell(s["ap"][a], s["n"]) for a in names]
                 + [cell(s[k], s["n"]) for k in COLUMNS] + [str(s["n"])])
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _small_data_table(summary, verdicts, fractions):
    lookup = {(p["mode"], p["fraction"], p["what"]): p for p in verdicts}
    lines = ["| mode | street labels | FTT | MTCT | MTCT − FTT (paired) "
             "| verdict | MTCT − No-Adapt (paired) | verdict |",
             "|---|---|---|---|---|---|---|---|"]
    for mode in MODES:
        for f in fractions:
            d1 = lookup[(mode, f, "MTCT - FTT")]
            d2 = lookup[(mode, f, "MTCT - No-Adapt")]
            lines.append(
                f"| {mode} | {fraction_name(f)} | "
                f"{cell(summary[f'FTT {mode} {f:g}']['mAP_cls'])} | "
                f"{cell(summary[f'MTCT {mode} {f:g}']['mAP_cls'])} | "
                f"{diff_cell(d1)} | {VERDICT_TEXT[d1['verdict']]} | "
                f"{diff_cell(d2)} | {VERDICT_TEXT[d2['verdict']]} |")
    return "\n".join(lines)


def _loss_table(summary, per_seed):
    rows = {"none (FTT)": "FTT fc 1", "t-STE poster (MTCT)": "MTCT fc 1"}
    rows.update({name: f"MTCT fc 1, {name}" for name in LOSSES})
    if not all(label in summary for label in rows.values()):
        return "(not run: `--losses` adds them)"
    ftt = [100 * r["mAP_cls"] for r in per_seed["FTT fc 1"]]
    lines = ["| cross-domain loss | mAP_cls | mP_ins | mR_ins "
             "| − FTT (paired) | verdict |", "|---|---|---|---|---|---|"]
    for name, label in rows.items():
        s = summary[label]
        cells = [cell(s[k]) for k in COLUMNS]
        if label == "FTT fc 1":
            cells += ["", ""]
        else:
            p = paired([100 * r["mAP_cls"] for r in per_seed[label]], ftt)
            cells += [diff_cell(p), LOSS_VERDICT_TEXT[p["verdict"]]]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _retrieval_table(summary, fractions):
    rows = {"No-Adapt": "No-Adapt"}
    for mode in MODES:
        for f in (fractions[0], fractions[-1]):
            for method in ("FTT", "MTCT"):
                rows[f"{method} ({mode}, {fraction_name(f)})"] = (
                    f"{method} {mode} {f:g}")
    lines = ["| model | " + " | ".join(f"top-{k}" for k in RETRIEVAL_K)
             + " |", "|---" * (len(RETRIEVAL_K) + 1) + "|"]
    for name, label in rows.items():
        r = summary[label].get("retrieval")
        if r:
            lines.append(f"| {name} | "
                         + " | ".join(cell(r[k]) for k in RETRIEVAL_K)
                         + " |")
    return "\n".join(lines)


def _shop_table(summary, per_seed):
    s = summary["Shop model on shop test"]
    names = list(s["ap"])
    header = ["shop model"] + [a.replace("_", " ").capitalize()
                               for a in names] + ["mAP_cls"]
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|",
             "| mean ± std | " + " | ".join(cell(s["ap"][a]) for a in names)
             + f" | {cell(s['mAP_cls'])} |"]
    seeds = [100 * r["mAP_cls"] for r in per_seed["Shop model on shop test"]]
    lines += ["", "mAP_cls per seed: "
              + ", ".join(f"{v:.2f}" for v in seeds) + "."]
    return "\n".join(lines)


def _several(n, word):
    """``"1 mode"``, ``"2 modes"``."""
    return f"{n} {word}{'' if n == 1 else 's'}"


def headline(data):
    """The verdict lines of a finished run, without their bullets.

    Per comparison the count of its cells by verdict, per fine-tuning mode
    MTCT - FTT at each label fraction, the label-copy oracle, and the
    one-stage controls against MTCT seed by seed.

    Args:
        data: the run's data (``summary``, ``verdicts``, ``per_seed``).

    Returns:
        A list of Markdown lines.
    """
    verdicts = data["verdicts"]["mAP_cls"]
    summary = data["summary"]
    # The modes the run compared, in the protocol's order.
    modes = [m for m in MODES if any(p["mode"] == m for p in verdicts)]
    lines = []
    for what in ("MTCT - FTT", "MTCT - No-Adapt"):
        cells = [p for p in verdicts
                 if p["what"] == what and p["fraction"] is not None]
        counts = {v: sum(p["verdict"] == v for p in cells)
                  for v in ("better", "worse", "not separated")}
        fractions = {p["fraction"] for p in cells}
        lines.append(
            f"{what.replace(' - ', ' − ')}, street test mAP_cls, "
            f"{_several(len(cells), 'cell')} ({_several(len(modes), 'mode')} "
            f"× {_several(len(fractions), 'label fraction')}): "
            f"{counts['better']} MTCT better, {counts['worse']} MTCT worse, "
            f"{counts['not separated']} not separated (paired differences "
            "over seeds, 95% t-interval).")
    words = {"better": "separated", "worse": "separated, MTCT below",
             "not separated": "not separated"}
    for mode in modes:
        cells = [p for p in verdicts if p["mode"] == mode
                 and p["what"] == "MTCT - FTT" and p["fraction"] is not None]
        name = {"fc": "Fine-tuning the FC branches (`fc`)",
                "all": "Fine-tuning every layer (`all`)"}[mode]
        lines.append(
            f"{name}: MTCT − FTT is " + ", ".join(
                f"{p['mean']:+.2f} at {fraction_name(p['fraction'])} "
                f"({words[p['verdict']]})" for p in cells)
            + " mAP_cls points; MTCT "
            + cell(summary[f"MTCT {mode} {cells[0]['fraction']:g}"]
                   ["mAP_cls"])
            + f" with {fraction_name(cells[0]['fraction'])} of the labels "
            f"against FTT {cell(summary[f'FTT {mode} 1']['mAP_cls'])} with "
            "all of them.")
    for mode in MODES:
        label = f"Oracle {mode}"
        if label in summary:
            lines.append(
                f"Label-copy oracle (`{mode}`): "
                f"{cell(summary[label]['mAP_cls'])} against FTT with every "
                f"street label {cell(summary[f'FTT {mode} 1']['mAP_cls'])} "
                f"and No-Adapt {cell(summary['No-Adapt']['mAP_cls'])}.")
    per_seed = data.get("per_seed", {})
    for name in CONTROLS:
        for f in sorted({float(k.split()[-1]) for k in summary
                         if k.startswith("MTCT ") and "," not in k}):
            label = control_label(name, f)
            if label not in summary:
                continue
            s = summary[label]
            best = max((f"MTCT {m} {f:g}" for m in MODES),
                       key=lambda k: summary[k]["mAP_cls"][0])
            text = (f"{name} (one-stage, {fraction_name(f)} labels, "
                    f"{s['n']} seed{'s' if s['n'] > 1 else ''}): "
                    f"{cell(s['mAP_cls'], s['n'])} against MTCT "
                    f"(`{best.split()[1]}`, {fraction_name(f)}) "
                    f"{cell(summary[best]['mAP_cls'])}")
            mine = [100 * r["mAP_cls"] for r in per_seed.get(best, [])]
            theirs = [100 * r["mAP_cls"] for r in per_seed.get(label, [])]
            if len(theirs) > 1:
                p = paired(mine[:len(theirs)], theirs)
                text += (f"; MTCT − {name} {diff_cell(p)} → "
                         f"{VERDICT_TEXT[p['verdict']]} (exploratory: this "
                         "comparison is not in the protocol)")
            else:
                text += " (no verdict)"
            lines.append(text + ".")
    return lines


def _replication_section(data):
    other = data.get("replication")
    if not other:
        return ""
    seed = other["info"]["render_seed"]
    mine = {(p["mode"], p["fraction"], p["what"]): p
            for p in data["verdicts"]["mAP_cls"]}
    lines = [f"## Replication on other data (render seed {seed})", "",
             f"`{other['info']['command']}` ({other['info']['seeds']} seeds, "
             f"{other['info']['minutes']:.1f} min; cross-domain weight "
             f"{other['info']['weight']['chosen']:g}, frozen from this run). "
             "Street test mAP_cls, paired differences:", "",
             "| mode | cell | this run | verdict | render seed "
             f"{seed} | verdict | same verdict |",
             "|---|---|---|---|---|---|---|"]
    same = total = 0
    for p in other["verdicts"]["mAP_cls"]:
        q = mine.get((p["mode"], p["fraction"], p["what"]))
        if q is None:
            continue
        where = (fraction_name(p["fraction"]) if p["fraction"] is not None
                 else "small-data")
        agree = q["verdict"] == p["verdict"]
        same += agree
        total += 1
        lines.append(
            f"| {p['mode']} | {where}: {p['what']} | {diff_cell(q)} | "
            f"{_verdict_text(q)} | {diff_cell(p)} | "
            f"{_verdict_text(p)} | {'yes' if agree else '**no**'} |")
    lines += ["", f"{same} of {total} verdicts agree.", ""]
    return "\n".join(lines)


def _notes(out_dir):
    """``<out_dir>/results/notes.md``, written by hand, kept across
    regenerations: readings of the numbers that the generator cannot
    make."""
    path = os.path.join(out_dir, "results", NOTES)
    if not os.path.exists(path):
        return ""
    with open(path, encoding="utf-8") as f:
        text = f.read().strip()
    return (f"## Reading the numbers (by hand, `results/{NOTES}`)\n\n"
            f"{text}\n\n")


def _data_text(info):
    r = info.get("render") or {}
    text = f"{info['items']} items rendered with seed {info['render_seed']}"
    if r:
        text += (f" ({r['street_items']} of them with {r['street_per_item']}"
                 f" street photos each; one shop image per item; "
                 f"{r['image_size']} px photos; "
                 f"{100 * r['missing_rate']:g}% of labels missing)")
    return text


def wall_times(info):
    """Which invocations trained the runs, and their wall times."""
    done = info.get("invocations") or []
    text = (f"This invocation took {info['minutes']:.1f} min; the runs took "
            f"{info['compute_minutes']:.1f} min when they were trained "
            "(finished runs are reused).")
    if done:
        text += " Wall time of the invocations that trained them: " + "; ".join(
            f"`{d['command']}`: **{d['minutes']:.1f} min** "
            f"({d['trained_runs']} runs, finished {d['finished']})"
            for d in done) + "."
    return text


def write_report(data, out_dir):
    """Writes RESULTS.md, results/ablation.json and the plots.

    Args:
        data: the run's data (``ablation.run``), or the ``ablation.json``
            of an earlier one (the report then regenerates as it was).
        out_dir: where RESULTS.md, results/ and images/ go; a
            ``results/notes.md`` there is kept in the report.

    Returns:
        The Markdown file's path.
    """
    summary, info = data["summary"], data["info"]
    os.makedirs(os.path.join(out_dir, "results"), exist_ok=True)
    fileio.write_json(os.path.join(out_dir, "results", "ablation.json"), data)
    plot(data, out_dir)
    weight = info["weight"]
    if "scores" in weight:
        grid = ("Cross-domain weight chosen on street **validation**, seed 0, "
                "MTCT `fc` (mAP_cls at " + ", ".join(
                    fraction_name(f) for f in FRACTIONS) + " labels, mean): "
                + "; ".join(f"{w}: " + " / ".join(f"{v:.2f}" for v in s)
                            + f" (mean {np.mean(s):.2f})"
                            for w, s in weight["scores"].items())
                + f" → **{weight['chosen']:g}**, frozen for every arm.")
    else:
        grid = (f"Cross-domain weight **{weight['chosen']:g}**, given "
                "(frozen from the primary run; no grid here).")
    controls = ""
    if info["control_seeds"]:
        names = [n for n, e in CONTROLS.items() if e in info["controls"]]
        controls = (f" The one-stage controls ({', '.join(names)}) ran on "
                    f"{info['control_seeds']} seed(s) only (their cost; see "
                    "the protocol).")
        plan = info.get("control_plan") or {}
        if plan:
            controls = (
                " One-stage controls (their cost; see the protocol): "
                + "; ".join(
                    f"{n} on {plan[e][0]} seed(s) at "
                    + "/".join(fraction_name(f) for f in plan[e][1])
                    + " labels" for n, e in CONTROLS.items() if e in plan)
                + ".")
    mode_text = ("replication: No-Adapt, FTT and MTCT only"
                 if info["core"] else "every arm of the protocol")
    verdicts = data["verdicts"]
    text = f"""# Results: is MTCT worth it? X-Domain-synth in the paper's regime

Produced by `{info['command']}` on this machine ({info['machine']}).
{wall_times(info)}
Following the pre-registered protocol in
[docs/PROTOCOL.md](PROTOCOL.md) ({mode_text}). {info['seeds']} seeds,
mean ± std over seeds (sample std), street test split
({info['street_test_images']} photos, annotated boxes), percentages.
Data: {_data_text(info)}. Model: `small` MTN at 64 px. Budget:
{info['budget']}.{controls} Per-attribute columns are class-level AP (SPEC
§6). Chance mAP_cls (a predictor that ignores the image) is
{info['chance']:.2f}.

{grid}

## Verdict

{chr(10).join('- ' + v for v in headline(data))}

Every cell (paired per-seed differences: mean ± std
[95% Student-t interval]; "separated" only when the interval excludes 0):

{chr(10).join('- ' + v for v in verdict_lines(verdicts['mAP_cls']))}

{_replication_section(data)}{_notes(out_dir)}
## MTN and transfer learning (the paper's second table, 100% street labels)

{_table(PAPER_ROWS, summary, with_attributes=True)}

## Small street data

FTT and MTCT with the street labels of
{', '.join(fraction_name(f) for f in info['fractions'])} of the street
training items (the same nested subsets; MTCT's triplets keep every street
photo as an anchor), per fine-tuning mode. No-Adapt:
{cell(summary['No-Adapt']['mAP_cls'])}.

{_small_data_table(summary, verdicts['mAP_cls'], info['fractions'])}

![methods](images/ablation.png)
![small data](images/ablation_small_data.png)
![paired differences](images/ablation_paired.png)

## Cross-domain loss functions (`fc`, 100% street labels)

{_loss_table(summary, data['per_seed'])}

## Street-to-shop retrieval

Top-k accuracy of the embedding (queries: the street test photos; gallery:
the shop test images, one per item; a hit is the query's item), mean ± std
over seeds:

{_retrieval_table(summary, info['fractions'])}

Top-10, paired:

{chr(10).join('- ' + v for v in verdict_lines(verdicts['retrieval top-10']))}

## The shop models

Each seed's shop model (shared by No-Adapt, FTT, MTCT and the oracle) on
the shop test split:

{_shop_table(summary, data["per_seed"])}

Raw numbers: `results/ablation.json` beside this file. Paper (X-Domain,
real photos): No-Adapt 51.38, UD 58.76, FTT 61.82, MTCT 64.35 mAP_cls.
"""
    path = os.path.join(out_dir, "RESULTS.md")
    fileio.write_text(path, text)
    return path


def show(path):
    """The No-Adapt / FTT / MTCT street table and the verdicts of a
    finished ablation, as text.

    Args:
        path: its ``results/ablation.json``.

    Returns:
        The text ``--show`` prints.
    """
    with open(path) as f:
        data = json.load(f)
    info, summary = data["info"], data["summary"]
    return "\n".join([
        f"The decisive benchmark ({path}: `{info['command']}`, "
        f"{info['seeds']} seeds, render seed {info['render_seed']}, "
        f"cross-domain weight {info['weight']['chosen']:g}), street test "
        f"mAP_cls; No-Adapt {cell(summary['No-Adapt']['mAP_cls'])}, "
        f"chance {info['chance']:.2f}:", "",
        _small_data_table(summary, data["verdicts"]["mAP_cls"],
                          info["fractions"]), "",
        *("- " + line for line in headline(data))])
