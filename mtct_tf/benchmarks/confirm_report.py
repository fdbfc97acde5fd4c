"""The second protocol's report: docs/RESULTS_2.md, its figure and JSON.

``write_report`` writes, from ``confirm.run``'s data, the Holm-adjusted
verdicts of the confirmatory family first, then every arm's street test
mAP_cls, the weights the rule gave, the budget-matched steps, retrieval
with the gallery embedded by either network, and the End-to-End vs.
Curriculum figure; a short summary goes to the top of docs/RESULTS.md
(a marked section the decisive benchmark's report keeps).
"""

import json
import os

import numpy as np

from mtct_tf import fileio

HOLM_TEXT = {"better": "**first better (separated)**",
             "worse": "**first worse (separated)**",
             "not separated": "**not separated**",
             "not run": "not run (counted in Holm's family)"}
FIGURE = "confirm_curves.png"
NOTES = "confirm_notes.md"  # Readings by hand, kept across regenerations.
SECTION = "protocol-2"  # Its summary's section of docs/RESULTS.md.


def _ms(summary, name):
    mean, std = summary[name]["mAP_cls"]
    return f"{mean:.2f} ± {std:.2f}"


def family_table(comparisons):
    lines = ["| comparison (street test mAP_cls) | paired difference | "
             "95% interval | p | Holm p | verdict (Holm, family-wise 5%) |",
             "|---|---|---|---|---|---|"]
    for c in comparisons:
        interval = ("-" if c["interval"] is None else
                    f"[{c['interval'][0]:+.2f}, {c['interval'][1]:+.2f}]")
        p = "-" if c.get("p") is None else f"{c['p']:.4f}"
        holm = ("-" if c.get("p_holm") is None or np.isnan(c["p_holm"])
                else f"{c['p_holm']:.4f}")
        std = "" if c["std"] is None else f" ± {c['std']:.2f}"
        mean = "-" if c["mean"] is None else f"{c['mean']:+.2f}"
        lines.append(f"| {c['a']} − {c['b']} | {mean}{std} | "
                     f"{interval} | {p} | {holm} | {HOLM_TEXT[c['holm']]} |")
    return "\n".join(lines)


def arms_table(summary, fractions):
    methods = ["FTT", "MTCT", "DDAN", "FTT matched", "MTCT matched", "UD",
               "End-to-end"]
    head = ("| method | " + " | ".join(
        f"{100 * f:g}% labels" for f in fractions) + " |")
    lines = [head, "|---" * (len(fractions) + 1) + "|"]
    for m in methods:
        cells = []
        for f in fractions:
            name = f"{m} {100 * f:g}%"
            cells.append(_ms(summary, name) if name in summary else "-")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    for m in [m for m in ("No-Adapt", "JAN") if m in summary]:
        lines.append(f"| {m} (shop stage only) | " + " | ".join(
            [_ms(summary, m)] + [""] * (len(fractions) - 1)) + " |")
    return "\n".join(lines)


def retrieval_table(data):
    lines = ["| arm | top-10, gallery by the street network | top-10, "
             "gallery by the shop stage's network |", "|---|---|---|"]
    for name, r in data["retrieval"].items():
        cells = []
        for key in ("retrieval", "retrieval_shop_gallery"):
            values = [100 * x["10"] for x in r.get(key, [])]
            cells.append(f"{np.mean(values):.2f} ± "
                         f"{np.std(values, ddof=1) if len(values) > 1 else 0:.2f}"
                         if values else "-")
        lines.append(f"| {name} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


def curves_figure(curves, path):
    """Street validation mAP_cls against steps and wall seconds."""
    from matplotlib.figure import Figure

    fractions = sorted({name.rsplit(" ", 1)[1] for name in curves},
                       key=lambda s: float(s.rstrip("%")))
    fig = Figure(figsize=(11, 3.8 * max(1, len(fractions))))
    for row, fraction in enumerate(fractions):
        for col, (key, xlabel) in enumerate(
                (("steps", "training steps (curriculum: shop stage, then "
                  "street stage)"),
                 ("seconds", "training wall seconds"))):
            ax = fig.add_subplot(len(fractions), 2, 2 * row + col + 1)
            for name, c in curves.items():
                if not name.endswith(" " + fraction):
                    continue
                ax.plot(c[key], c["score"], marker=".",
                        label=name.rsplit(" ", 1)[0])
            ax.set_xlabel(xlabel)
            ax.set_ylabel("street val mAP_cls")
            ax.set_title(f"{fraction} street labels", fontsize=10)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    fig.tight_layout()
    return fileio.save_figure(fig, path)


def _notes(out_dir):
    """``<out_dir>/results/confirm_notes.md``, written by hand: readings of
    the numbers the generator cannot make."""
    path = os.path.join(out_dir, "results", NOTES)
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [f"## Reading the numbers (by hand, `results/{NOTES}`)", "",
                f.read().strip(), ""]


def _count(comparisons):
    return sum(c["holm"] in ("better", "worse") for c in comparisons)


def _invocations(data):
    """Which invocation trained which arms (a run reusing an earlier one's
    results lists both)."""
    runs = data.get("invocations", [])
    if len(runs) < 2:
        return []
    return ["Invocations whose arms this report holds:", ""] + [
        f"- `{r['command']}`: {r['minutes']:.1f} min, "
        + (", ".join(r["arms"]) if r["arms"] else "no arm trained")
        for r in runs] + [""]


def _extension_summary(extension, core):
    core_pairs = {(c["a"], c["b"]) for c in core}
    rest = "; ".join(
        f"{c['a']} − {c['b']}: " + (
            "not run" if c["mean"] is None else
            f"{c['mean']:+.2f} → {HOLM_TEXT[c['holm']]}")
        for c in extension if (c["a"], c["b"]) not in core_pairs)
    return (f"Extension family (Holm over {len(extension)}, a stricter "
            f"reading): {_count(extension)} separated. Beyond the core: "
            f"{rest}.")


def _extension_section(comparisons):
    return [
        f"### Extension family (Holm over {len(comparisons)})",
        "",
        "The stricter reading of docs/PROTOCOL_2.md: the core's 8 "
        "comparisons plus MTCT − UD, MTCT − FTT matched, MTCT matched − UD "
        "and MTCT − DDAN at 25%, MTCT − end-to-end at 10% and 100%, and "
        "No-Adapt − JAN (MTN − JAN). The core's verdicts above are the "
        f"core family's; {_count(comparisons)} of {len(comparisons)} are "
        "separated here.",
        "",
        family_table(comparisons),
        "",
    ]


def _load_gallery(out_dir):
    path = os.path.join(out_dir, "results", "gallery.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def _ms_list(values):
    sd = np.std(values, ddof=1) if len(values) > 1 else 0.0
    return f"{np.mean(values):.2f} ± {sd:.2f}"


def gallery_section(g):
    """The retrieval diagnosis (``benchmarks.gallery``) as Markdown."""
    lines = [
        f"## Retrieval diagnosis: which network embeds the gallery "
        f"(render seed {g['render_seed']}, the first protocol's runs)",
        "",
        "Street-to-shop top-10 (%), mean ± std over seeds, the gallery "
        "embedded by the street network (what retrieval used) or by the "
        "shop stage's network f_s (which the t-STE pulls street embeddings "
        "towards). Validation chooses; test reports "
        "(`python -m mtct_tf.benchmark gallery`).",
        "",
        "| mode | labels | method | val, street-net gallery | val, "
        "shop-net gallery | test, street-net gallery | test, shop-net "
        "gallery |",
        "|---|---|---|---|---|---|---|"]
    for c in sorted(g["cells"], key=lambda c: (c["mode"], c["fraction"],
                                               c["method"])):
        lines.append(
            f"| {c['mode']} | {100 * c['fraction']:g}% | {c['method']} | "
            + " | ".join(_ms_list(c[split][gal]) for split in ("val", "test")
                         for gal in ("street", "shop")) + " |")
    lines += ["", "MTCT − FTT, test top-10 per seed:", ""]
    for d in g["diagnosis"]:
        per = {k: ", ".join(f"{v:+.1f}" for v in vals)
               for k, vals in d["mtct_minus_ftt"].items()}
        lines.append(
            f"- {d['mode']}, {100 * d['fraction']:g}%: street-net gallery "
            f"{per['street']}; shop-net gallery {per['shop']} → lead "
            + ("**confirmed** (higher with the shop-net gallery on every "
               "seed)" if d["lead_confirmed"] else "**not confirmed**")
            + (f"; each with its chosen gallery {per['chosen']}"
               if "chosen" in per else ""))
    lines += ["", "Gallery network chosen on validation top-10 (mean over "
              "fractions and seeds): " + "; ".join(
                  f"{k}: **{v['gallery']}** network ({v['val_top10']['street']:.1f}"
                  f" street-net vs {v['val_top10']['shop']:.1f} shop-net)"
                  for k, v in g["choice"].items()) + ".", ""]
    return lines


def write_report(data, out_dir):
    """Writes RESULTS_2.md, results/confirm.json, the figure and the
    summary section of RESULTS.md; returns the report's path."""
    info = data["info"]
    os.makedirs(os.path.join(out_dir, "results"), exist_ok=True)
    fileio.write_text(os.path.join(out_dir, "results", "confirm.json"),
                      json.dumps(data, indent=1, default=float))
    curves_figure(data["curves"], os.path.join(out_dir, "images", FIGURE))
    comparisons = data["family"]
    separated = [c for c in comparisons if c["holm"] in ("better", "worse")]
    extension = data.get("extension_family")
    gallery = _load_gallery(out_dir)
    lines = [
        "# Results of the second protocol: MTCT against UD, end-to-end, "
        "budget-matched arms, DDAN and JAN",
        "",
        f"Produced by `{info['command']}` ({info['machine']}) in "
        f"**{info['minutes']:.1f} min**, following "
        "[PROTOCOL_2.md](PROTOCOL_2.md), committed before these runs. "
        f"{info['seeds']} seeds; data rendered with seed "
        f"{info['render_seed']} ({info['items']} items, the paper's "
        "regime); street test split "
        f"({info['street_test_images']} photos, annotated boxes); chance "
        f"mAP_cls {info['chance']:.2f}. Budget: {info['budget']}.",
        "",
    ] + _invocations(data) + [
        "## Verdicts (Holm-adjusted over the family of "
        f"{len(comparisons)})",
        "",
        f"{len(separated)} of {len(comparisons)} comparisons are separated "
        "after Holm's correction.",
        "",
        family_table(comparisons),
        "",
    ] + (_extension_section(extension) if extension else []) + [
    ] + _notes(out_dir) + [
        "## Every arm (street test mAP_cls, mean ± std over seeds)",
        "",
        arms_table(data["summary"], info["fractions"]),
        "",
        "## The weighting rule and the budget-matched steps",
        "",
        "Weights at which the cross-domain and cross-entropy gradients "
        "have equal norms where each method starts (seed 0, every street "
        "label, 8 batches): " + ", ".join(
            f"{k} **{v:g}** (ratio {info['weight_measurements'][k]['ratio']:.3g}"
            f" from the {info['weight_measurements'][k]['start']})"
            for k, v in info["weights"].items()) + ".",
        "",
        "Budget-matched street stages (UD's street batches): " + ", ".join(
            f"{100 * float(f):g}%: {s} steps (UD {info['matched_info'][f]['ud_steps']}"
            f" steps over {info['matched_info'][f]['shop_records']} shop + "
            f"{info['matched_info'][f]['street_records']} street records)"
            for f, s in info["matched_steps"].items()) + ".",
        "",
        "## Street-to-shop retrieval: which network embeds the gallery",
        "",
        retrieval_table(data),
        "",
    ] + (gallery_section(gallery) if gallery else []) + [
        "## End-to-end vs. curriculum",
        "",
        f"![street validation mAP_cls while training](images/{FIGURE})",
        "",
        "Street validation mAP_cls after every epoch of every stage (mean "
        "over seeds): curriculum methods (FTT, MTCT) first train the shop "
        "stage, then the street stage; UD and end-to-end train one stage.",
        "",
        "## Wall time per arm (all seeds)",
        "",
        "| arm | minutes |",
        "|---|---|",
    ] + [f"| {k} | {v / 60:.1f} |" for k, v in info["seconds"].items()]
    path = os.path.join(out_dir, "RESULTS_2.md")
    fileio.write_text(path, "\n".join(lines) + "\n")
    summary = [
        "## Second protocol (render seed "
        f"{info['render_seed']}, {info['seeds']} seeds, Holm-adjusted)",
        "",
        f"From [RESULTS_2.md](RESULTS_2.md) ([PROTOCOL_2.md](PROTOCOL_2.md)):"
        f" {len(separated)} of {len(comparisons)} confirmatory comparisons "
        "separated.",
        "",
    ] + [f"- {c['a']} − {c['b']}: {c['mean']:+.2f} → {HOLM_TEXT[c['holm']]}"
         f" (Holm p {c['p_holm']:.3f})" if c.get("p_holm") is not None
         and not np.isnan(c["p_holm"]) else
         f"- {c['a']} − {c['b']}: {c['mean']:+.2f} → not separated"
         for c in comparisons] + ([
        "", _extension_summary(extension, comparisons),
    ] if extension else []) + ([
        "", "Retrieval diagnosis (`fc` mode's drop, render seed "
        f"{gallery['render_seed']}): " + "; ".join(
            f"{d['mode']} {100 * d['fraction']:g}%: MTCT − FTT top-10 "
            f"{np.mean(d['mtct_minus_ftt']['street']):+.1f} with the "
            f"street-net gallery, {np.mean(d['mtct_minus_ftt']['shop']):+.1f}"
            " with the shop-net gallery"
            + (" (lead confirmed)" if d["lead_confirmed"] else "")
            for d in gallery["diagnosis"]) + ". See RESULTS_2.md.",
    ] if gallery else []) + [
        "",
        "The first protocol's results (render seeds 2017 and 2018) follow "
        "unchanged.",
    ]
    fileio.write_section(os.path.join(out_dir, "RESULTS.md"), SECTION,
                         "\n".join(summary), after_title=True)
    return path
