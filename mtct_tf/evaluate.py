"""Evaluates a trained model: ``python -m mtct_tf.evaluate``.

Prints the paper's table (class-level AP per attribute, mAP_cls, mP_ins,
mR_ins) and writes JSON, Markdown and a PNG bar chart to <model_dir>/eval/.

Examples:
    python -m mtct_tf.evaluate --model_dir runs/demo/mtct --split test \
        --domain street
    # The shop stage's model (No-Adapt) next to the street stage's (MTCT):
    python -m mtct_tf.evaluate --model_dir runs/demo/mtct --stage shop \
        --stage street
    # Street test with annotated boxes vs detector crops vs whole photos:
    python -m mtct_tf.evaluate --model_dir runs/demo/mtct \
        --box_source gt --box_source detector --box_source none
    # Several runs in one table, one named row each (DIR or DIR@STAGE):
    python -m mtct_tf.evaluate --row No-Adapt=runs/demo/mtct@shop \
        --row FTT=runs/demo/ftt --row MTCT=runs/demo/mtct
"""

import argparse
import sys


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m mtct_tf.evaluate",
                                description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_dir", help="the run to evaluate")
    p.add_argument("--row", action="append", metavar="NAME=DIR[@STAGE]",
                   help="instead of --model_dir: one table row per run "
                        "(its last stage's model, or STAGE's)")
    p.add_argument("--split", default="test", choices=("train", "val", "test"))
    p.add_argument("--domain", default="street", choices=("street", "shop"))
    p.add_argument("--stage", action="append",
                   help="which stage's model (default: the last); repeat to "
                        "compare stages in one table")
    p.add_argument("--shards_dir", help="default: the run config's shards")
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--box_source", action="append",
                   choices=("gt", "detector", "none"),
                   help="crops from the annotated box, the detector's crops "
                        "or the whole photo (default: the crops training "
                        "used); repeat to compare in one table")
    args = p.parse_args(argv)
    if bool(args.model_dir) == bool(args.row):
        p.error("give either --model_dir or one --row per run")
    runs = []
    for text in args.row or ():
        name, sep, where = text.partition("=")
        run_dir, _, stage = where.partition("@")
        if not sep or not name or not run_dir:
            p.error(f"--row {text!r}: expected NAME=DIR or NAME=DIR@STAGE")
        runs.append((name, run_dir, stage or None))
    from mtct_tf import evaluation

    rows = {}
    try:
        for name, run_dir, stage in runs:
            rows[name] = evaluation.evaluate(
                run_dir, split=args.split, domain=args.domain, stage=stage,
                shards_dir=args.shards_dir, batch_size=args.batch_size)
        for stage in (args.stage or [None]) if args.model_dir else ():
            for box in args.box_source or [None]:
                name = f"{stage or 'final'} model" + (
                    f", {evaluation.BOX_SOURCE_NAMES[box]}" if box else "")
                rows[name] = evaluation.evaluate(
                    args.model_dir, split=args.split, domain=args.domain,
                    stage=stage, shards_dir=args.shards_dir,
                    batch_size=args.batch_size, box_source=box)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if len(rows) > 1 or runs:
        from mtct_tf import metrics

        print(metrics.format_table(
            rows, title=f"{args.domain} {args.split}: "
                        + " vs ".join(rows)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
