"""Balancing the street stage's losses: gradient ratio and weight choice.

The street stage minimises ``CE + w * cross``, where ``CE`` is the sum of
the attributes' masked cross-entropies (SPEC §2) and ``cross`` the mean
cross-domain loss over the batch's triplets. Their gradients on the
trainable FC branches can differ by orders of magnitude (nine summed
cross-entropies against one bounded t-STE term), and then ``w = 1`` makes
MTCT FTT in all but name. ``gradient_ratio`` measures
``|grad cross| / |grad CE|`` on the branch variables at the start of a
street stage; ``select_weight`` picks ``w`` from a small grid by street
*validation* scores (never test), once, to be frozen for every seed and
label fraction (docs/BENCHMARK_DESIGN_NOTES.md).

    python -m mtct_tf.loss_balance --experiment synth_benchmark \
        --model_dir runs/benchmark/seed0/_shop --override seed=0

measures the ratio from a run whose shop stage is trained.
"""

import argparse
import json
import math
import os

# The weight grid, in multiples of the weight that equalises the gradient
# norms measured at the start of the street stage (1 / ratio), so that the
# grid means the same whatever the model. The ablation runs MTCT with each
# on seed 0 and keeps the one with the best mean street-validation
# mAP_cls (``select_weight``).
WEIGHT_GRID_MULTIPLES = (0.25, 1.0, 4.0)


def global_norm(grads):
    """L2 norm of a list of gradient tensors (``None`` entries count 0)."""
    import tensorflow as tf

    grads = [g for g in grads if g is not None]
    if not grads:
        return 0.0
    return float(tf.linalg.global_norm(grads))


def gradient_norms(trainer, batch, variables=None):
    """Norms of the CE and cross-domain gradients for one batch.

    Args:
        trainer: a ``transfer.MTNTrainer`` with a cross-domain kind.
        batch: one ``(x, y)`` batch of the triplet pipeline.
        variables: the variables to differentiate; default the trainable
            variables of the street network's FC branches.

    Returns:
        Dict with ``"ce"`` and ``"cross"`` gradient norms (floats) and the
        loss values ``"ce_value"``, ``"cross_value"``; ``cross`` is the
        unweighted term (before the trainer's ``weight``). ``ce`` is every
        cross-entropy the trainer minimises: the street labels', plus the
        shop labels' when it supervises them (end-to-end).
    """
    import tensorflow as tf

    if variables is None:
        variables = [v for layer in trainer.net.branch_layers()
                     for v in layer.trainable_weights]
    x, street_labels, shop_labels = trainer._unpack(batch)
    # With the cross-domain weight at 0 the trainer's total is exactly its
    # cross-entropies (no large term subtracted back out of it).
    weight, trainer.weight = trainer.weight, 0.0
    try:
        with tf.GradientTape(persistent=True) as tape:
            ce, _, cross, _, _, _ = trainer._forward(
                x, street_labels, shop_labels, training=True)
    finally:
        trainer.weight = weight
    out = {"ce": global_norm(tape.gradient(ce, variables)),
           "cross": global_norm(tape.gradient(cross, variables)),
           "ce_value": float(ce), "cross_value": float(cross)}
    del tape
    return out


def gradient_ratio(trainer, dataset, batches=8, variables=None):
    """``|grad cross| / |grad CE|`` averaged over ``batches`` batches.

    The ratio of the mean norms (not the mean of ratios): a batch whose
    CE gradient is tiny would dominate a mean of ratios.

    Returns:
        Dict: ``ratio``, mean ``ce`` and ``cross`` gradient norms and loss
        values, ``batches``, and ``balancing_weight`` = 1 / ratio, the
        weight at which both terms pull equally hard.
    """
    rows = [gradient_norms(trainer, batch, variables)
            for batch in dataset.take(batches)]
    if not rows:
        raise ValueError("the dataset gave no batch")
    mean = {k: sum(r[k] for r in rows) / len(rows) for k in rows[0]}
    ratio = mean["cross"] / mean["ce"] if mean["ce"] else math.inf
    return {**mean, "ratio": ratio, "batches": len(rows),
            "balancing_weight": 1.0 / ratio if ratio else math.inf}


def weight_grid(balancing_weight, multiples=WEIGHT_GRID_MULTIPLES):
    """The candidate weights: ``balancing_weight`` times each multiple,
    rounded to 2 significant digits so that they read well in reports."""
    out = []
    for m in multiples:
        w = balancing_weight * m
        digits = 1 - int(math.floor(math.log10(abs(w)))) if w else 0
        out.append(round(w, digits))
    return tuple(out)


def select_weight(scores):
    """Picks the cross-domain weight from validation scores.

    Args:
        scores: dict weight -> a validation score (higher is better) or a
            list of them (e.g. one per label fraction; they are averaged).
            Street *validation* scores of seed 0 only: choosing on test
            would tune the method on the numbers it is judged by.

    Returns:
        The weight with the highest mean score; a tie goes to the smaller
        weight (the smaller departure from FTT).

    Raises:
        ValueError: no scores.
    """
    if not scores:
        raise ValueError("scores is empty: run the weight grid first")

    def mean(v):
        v = list(v) if isinstance(v, (list, tuple)) else [v]
        return sum(v) / len(v)

    return max(sorted(scores), key=lambda w: (mean(scores[w]), -w))


def measure(config, model_dir=None, batches=8, verbose=True):
    """Measures the gradient ratio where ``config``'s method starts.

    Two-stage methods (MTCT and its variants, DDAN): the street stage as
    ``stages.StreetStage`` builds it (the shop model of
    ``<model_dir>/shop`` as ``f_s`` and as ``f_t``'s start; the FC
    branches trainable with ``street.finetune: fc``, every layer with
    ``all``). End-to-end (``method: end_to_end``): the joint stage's
    untrained network (seeded by ``config.seed``), every layer, shop labels
    supervised too; ``model_dir`` is not read. Both on the triplet pipeline
    of the street training split, on the config's cross-domain kind; the
    ratio is over the variables the method trains.

    Returns:
        The ``gradient_ratio`` dict plus ``kind``, ``finetune``,
        ``label_fraction``, ``start`` and ``weight`` (the config's).
    """
    import keras

    from mtct_tf import runs
    from mtct_tf import stages as stages_lib
    from mtct_tf import transfer
    from mtct_tf.data import shards, triplets

    cross = config.street.cross_domain
    if cross.kind == "none":
        raise ValueError("street.cross_domain.kind is 'none': there is no "
                         "cross-domain gradient to measure")
    keras.utils.set_random_seed(config.seed)
    schema = runs.data_schema(config)
    joint = config.method == "end_to_end"
    if joint:
        net = stages_lib.build_mtn(config, schema)
        trainer = transfer.MTNTrainer(
            net, None, cross_domain=cross, shop_loss_weight=1.0,
            attribute_weights=config.attribute_weights)
    else:
        shop = runs.load_mtn(os.path.join(runs.stage_dir(model_dir, "shop"),
                                          "model.keras"))
        net = type(shop).from_config(shop.get_config())
        net.set_weights(shop.get_weights())
        if config.street.finetune == "fc":
            transfer.freeze_trunk(net)
        trainer = transfer.MTNTrainer(
            net, shop, cross_domain=cross,
            attribute_weights=config.attribute_weights)
    variables = (None if config.street.finetune == "fc" and not joint
                 else net.trainable_variables)
    d = config.data
    street = stages_lib.street_dir(config)
    ds = triplets.make_triplet_dataset(
        shards.shard_files(street, "train"),
        shards.shard_files(d.shards_dir, "train"), schema,
        image_size=d.image_size, batch_size=d.batch_size, training=True,
        negatives=d.negatives, margin=d.margin,
        label_fraction=d.street_label_fraction, seed=config.seed,
        shuffle_buffer=d.shuffle_buffer)
    out = gradient_ratio(trainer, ds, batches=batches, variables=variables)
    out.update(kind=cross.kind, finetune=config.street.finetune,
               label_fraction=d.street_label_fraction, weight=cross.weight,
               start="untrained network" if joint else "shop model")
    if verbose:
        print(json.dumps(out, indent=1))
    return out


def main(argv=None):
    from mtct_tf import configs

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--experiment", default="synth_benchmark")
    p.add_argument("--model_dir",
                   help="a run whose shop stage is trained (not for "
                        "method end_to_end, which starts untrained)")
    p.add_argument("--override", action="append", default=[],
                   metavar="KEY=VALUE")
    p.add_argument("--batches", type=int, default=8)
    args = p.parse_args(argv)
    config = configs.build(args.experiment, None, args.override)
    measure(config, args.model_dir, batches=args.batches)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
