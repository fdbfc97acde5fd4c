"""Evaluation: predict a split, score it with the paper's metrics, report.

``evaluate(model_dir, split, domain)`` loads the final model of a training
run, scores every labelled image of the split and domain, and writes
``<model_dir>/eval/<domain>_<split>.{json,md,png}``.
"""

import json
import math
import os

import numpy as np

from mtct_tf import metrics as metrics_lib


def predict(net, dataset):
    """Runs ``net`` over ``dataset`` of (images, labels[, meta]).

    Returns:
        ``(probs, labels, meta)``: dicts attribute -> stacked arrays, and
        meta -> list of strings when the dataset carries it.
    """
    names = tuple(net.num_values)
    probs = {a: [] for a in names}
    labels = {a: [] for a in names}
    meta = {}
    for batch in dataset:
        out = net.predict_on_batch(batch[0])
        for a in names:
            probs[a].append(np.asarray(out[a]))
            labels[a].append(np.asarray(batch[1][a]))
        if len(batch) > 2:
            for k, v in batch[2].items():
                meta.setdefault(k, []).extend(
                    x.decode() for x in np.asarray(v))
    if not probs[names[0]]:
        raise ValueError("the dataset to evaluate is empty")
    return ({a: np.concatenate(v) for a, v in probs.items()},
            {a: np.concatenate(v) for a, v in labels.items()}, meta)


def chance_map(labels):
    """mAP_cls of a predictor that ignores the image.

    The AP of a random ranking equals the value's prevalence among the
    labelled images, so an attribute's chance AP is the mean prevalence over
    its values that have a positive: 1 / (number of such values).
    """
    per = []
    for y in labels.values():
        y = np.asarray(y)
        present = np.unique(y[y >= 0])
        if len(present):
            per.append(1.0 / len(present))
    return float(np.mean(per)) if per else math.nan


def _jsonable(results):
    out = {}
    for k, v in results.items():
        if isinstance(v, dict):
            out[k] = _jsonable(v)
        elif isinstance(v, np.ndarray):
            out[k] = [None if math.isnan(x) else float(x) for x in v]
        elif isinstance(v, float) and math.isnan(v):
            out[k] = None
        else:
            out[k] = v
    return out


def bar_chart(results, path, title):
    """Per-attribute AP and top-1 accuracy as a grouped bar chart (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    names = list(results["ap"])
    ap = [100 * results["ap"][a] for a in names]
    top1 = [100 * results["top1"][a] for a in names]
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(1.0 + 0.9 * len(names), 3.6))
    ax.bar(x - 0.2, ap, 0.4, label="class-level AP")
    ax.bar(x + 0.2, top1, 0.4, label="top-1 accuracy")
    ax.axhline(100 * results["mAP_cls"], color="k", lw=1, ls="--",
               label=f"mAP_cls {100 * results['mAP_cls']:.1f}")
    ax.set_xticks(x, [a.replace("_", "\n") for a in names], fontsize=8)
    ax.set_ylim(0, 100)
    ax.set_ylabel("%")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    tmp = f"{path}.tmp.png"
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def write_report(results, out_prefix, title):
    """Writes ``<prefix>.json``, ``.md`` and ``.png``; returns the table."""
    os.makedirs(os.path.dirname(os.path.abspath(out_prefix)), exist_ok=True)
    table = metrics_lib.format_table(results, title=title)
    extra = (f"\nchance mAP_cls: {100 * results['chance_mAP_cls']:.2f}; "
             f"mean top-1: {100 * results['mean_top1']:.2f}; "
             f"images: {results['num_images']}\n")
    for suffix, text in ((".json", json.dumps(_jsonable(results), indent=1)),
                         (".md", table + extra)):
        tmp = f"{out_prefix}{suffix}.tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, out_prefix + suffix)
    bar_chart(results, out_prefix + ".png", title)
    return table + extra


def evaluate(model_dir, *, split="test", domain="street", stage=None,
             shards_dir=None, batch_size=64, config=None):
    """Evaluates a run's final model (or ``stage``'s) on a split and domain.

    Args:
        model_dir: the training run's directory (holds ``config.yaml``).
        split: ``"train"``, ``"val"`` or ``"test"``.
        domain: ``"street"`` or ``"shop"``.
        stage: which stage's model; default: the method's last stage.
        shards_dir: shards to read; default: the config's (its street shards
            for the street domain).
        batch_size: images per prediction batch.
        config: an ``ExperimentConfig``; default: ``<model_dir>/config.yaml``.

    Returns:
        The metrics dict (see ``metrics.evaluate_predictions``) plus
        ``chance_mAP_cls``; reports are written under ``<model_dir>/eval``.
    """
    from mtct_tf import configs as configs_lib
    from mtct_tf import training
    from mtct_tf.data import pipeline

    if config is None:
        path = os.path.join(model_dir, "config.yaml")
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"{path} not found: is {model_dir} a training run directory?")
        config = configs_lib.from_dict(configs_lib.load_yaml(path))
    stage = stage or training.final_stage(config.method)
    net = training.load_mtn(
        os.path.join(training.stage_dir(model_dir, stage), "model.keras"))
    if shards_dir is None:
        shards_dir = (training.street_dir(config) if domain == "street"
                      else config.data.shards_dir)
    schema = pipeline.load_schema(shards_dir)
    training.check_schema(net, schema, shards_dir)
    ds = pipeline.make_dataset(
        pipeline.shard_files(shards_dir, split), schema,
        image_size=net.image_size, batch_size=batch_size, training=False,
        domain=domain, margin=config.data.margin, repeat=False)
    probs, labels, _ = predict(net, ds)
    results = metrics_lib.evaluate_predictions(probs, labels, schema.names)
    results["chance_mAP_cls"] = chance_map(labels)
    results["model"] = os.path.join(model_dir, stage)
    title = (f"{config.method} ({stage} model) on {domain} {split} "
             f"[{os.path.basename(os.path.normpath(model_dir))}]")
    prefix = os.path.join(model_dir, "eval", f"{domain}_{split}")
    print(write_report(results, prefix, title))
    print(f"wrote {prefix}.json, .md and .png")
    return results
