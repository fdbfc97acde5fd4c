"""The decisive benchmark's plots (``docs/images/ablation*.png``).

``plot`` draws, from a finished run's data (``ablation.run``): every method
at 100% street labels (the paper's second table), FTT and MTCT against the
street label fraction per fine-tuning mode, and the paired per-seed
differences with their intervals.
"""

import os

from mtct_tf import fileio
from mtct_tf.benchmarks.ablation_arms import MODES, PAPER_ROWS, fraction_name


def plot(data, out_dir):
    """Writes the three PNGs into ``<out_dir>/images``.

    Args:
        data: the run's data (``summary``, ``info``, ``verdicts``).
        out_dir: the report's directory.

    Returns:
        The paths written.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    summary = data["summary"]
    fractions = data["info"]["fractions"]
    images = os.path.join(out_dir, "images")
    paths = []
    # 1. The paper's second table: every method at 100% street labels.
    rows = {k: v for k, v in PAPER_ROWS.items() if v in summary}
    fig, ax = plt.subplots(figsize=(10, 3.8))
    names = list(rows)
    means = [summary[rows[n]]["mAP_cls"][0] for n in names]
    stds = [summary[rows[n]]["mAP_cls"][1] for n in names]
    ax.bar(range(len(names)), means, yerr=stds, capsize=3, color="#4c72b0")
    ax.axhline(data["info"]["chance"], color="grey", ls=":", label="chance")
    ax.set_xticks(range(len(names)), names, rotation=20, fontsize=8)
    ax.set_ylabel("street test mAP_cls (%)")
    ax.set_title("Methods, 100% street labels (mean ± std over seeds)")
    ax.legend(fontsize=8)
    low = min(m - s for m, s in zip(means, stds))
    ax.set_ylim(max(0, min(low, data["info"]["chance"]) - 5), max(means) + 5)
    fig.tight_layout()
    paths.append(fileio.save_figure(
        fig, os.path.join(images, "ablation.png")))

    # 2. Small street data, per mode.
    fig, axes = plt.subplots(1, len(MODES), figsize=(10, 3.8), sharey=True)
    xs = [100 * f for f in fractions]
    for ax, mode in zip(axes, MODES):
        for method, colour in (("FTT", "#dd8452"), ("MTCT", "#4c72b0")):
            s = [summary[f"{method} {mode} {f:g}"]["mAP_cls"]
                 for f in fractions]
            ax.errorbar(xs, [m for m, _ in s], yerr=[d for _, d in s],
                        marker="o", capsize=3, label=method, color=colour)
        ax.axhline(summary["No-Adapt"]["mAP_cls"][0], color="grey",
                   ls="--", label="No-Adapt")
        if f"Oracle {mode}" in summary:
            ax.axhline(summary[f"Oracle {mode}"]["mAP_cls"][0],
                       color="green", ls=":", label="label-copy oracle")
        ax.set_xscale("log")
        ax.set_xticks(xs, [fraction_name(f) for f in fractions])
        ax.set_xlabel("street training items with labels")
        ax.set_title(f"fine-tune {mode}")
        ax.legend(fontsize=8)
    axes[0].set_ylabel("street test mAP_cls (%)")
    fig.tight_layout()
    paths.append(fileio.save_figure(
        fig, os.path.join(images, "ablation_small_data.png")))

    # 3. Paired differences with their intervals.
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
    verdicts = data["verdicts"]["mAP_cls"]
    for ax, what in zip(axes, ("MTCT - FTT", "MTCT - No-Adapt")):
        for i, mode in enumerate(MODES):
            for j, f in enumerate(fractions):
                p = next(q for q in verdicts if q["mode"] == mode
                         and q["fraction"] == f and q["what"] == what)
                x = j + (i - 0.5) * 0.25
                if p["interval"]:
                    low, high = p["interval"]
                    ax.plot([x, x], [low, high], color=f"C{i}")
                ax.plot([x] * len(p["differences"]), p["differences"], ".",
                        color=f"C{i}", alpha=0.5)
                ax.plot([x], [p["mean"]], "o", color=f"C{i}",
                        label=mode if j == 0 else None)
        ax.axhline(0, color="black", lw=0.8)
        ax.set_xticks(range(len(fractions)),
                      [fraction_name(f) for f in fractions])
        ax.set_xlabel("street training items with labels")
        ax.set_title(f"{what.replace(' - ', ' − ')}: per seed, mean, 95% "
                     "interval", fontsize=9)
        ax.legend(fontsize=8, title="fine-tune", title_fontsize=8)
    axes[0].set_ylabel("street test mAP_cls difference (points)")
    fig.tight_layout()
    paths.append(fileio.save_figure(
        fig, os.path.join(images, "ablation_paired.png")))
    return paths
