"""Trains MTCT and its baselines: ``python -m mtct_tf.train``.

Examples:
    python -m mtct_tf.train --experiment demo --model_dir runs/demo/mtct \
        --stage all
    python -m mtct_tf.train --experiment demo --model_dir runs/x \
        --stage shop --override shop.epochs=2 --override data.batch_size=16
    python -m mtct_tf.train --experiment paper --config_file my.yaml \
        --model_dir runs/paper --stage pretrain --tfds_name imagenet2012

Rerunning a killed command resumes from its last checkpoint.
"""

import argparse
import sys


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m mtct_tf.train", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--experiment", default="demo",
                   help="registered experiment (--list shows them)")
    p.add_argument("--model_dir", help="where checkpoints, logs and models go")
    p.add_argument("--stage", default="all",
                   choices=("all", "shop", "street", "united", "joint",
                            "pretrain"))
    p.add_argument("--config_file", help="YAML overrides")
    p.add_argument("--override", action="append", default=[],
                   metavar="KEY=VALUE", help="e.g. shop.epochs=2 (repeatable)")
    p.add_argument("--strategy", help="default|mirrored|multi_worker|tpu")
    p.add_argument("--tfds_name", help="stage 0: TFDS dataset name")
    p.add_argument("--tfds_data_dir", help="stage 0: TFDS data_dir")
    p.add_argument("--manual_dir", help="stage 0: TFDS manual download dir")
    p.add_argument("--list", action="store_true",
                   help="list registered experiments and exit")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    from mtct_tf import configs

    if args.list:
        for name in configs.experiments():
            doc = configs.get_experiment(name).description.splitlines()[0]
            print(f"{name:22s} {doc}")
        return 0
    if not args.model_dir:
        print("error: --model_dir is required", file=sys.stderr)
        return 2
    overrides = list(args.override)
    if args.strategy:
        overrides.append(f"runtime.strategy={args.strategy}")
    try:
        config = configs.build(args.experiment, args.config_file, overrides)
    except (configs.ConfigError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from mtct_tf import training

    try:
        options = {}
        if args.stage == "pretrain":
            from mtct_tf import pretrain

            if not args.tfds_name:
                raise configs.ConfigError("--stage pretrain needs --tfds_name")
            options["source"] = pretrain.TfdsSource(
                args.tfds_name, data_dir=args.tfds_data_dir,
                manual_dir=args.manual_dir)
        training.run(config, args.model_dir, args.stage, **options)
    except (configs.ConfigError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
