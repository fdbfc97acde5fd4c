"""Benchmarks: ``python -m mtct_tf.benchmark <command>``.

Commands (one library module each; this file only dispatches):
    speed      how close training, input and serving come to the machine's
               limits; writes docs/BENCHMARKS.md
               (``mtct_tf.benchmarks.speed``).
    ablation   the decisive benchmark (docs/PROTOCOL.md): MTCT vs FTT and
               No-Adapt, both fine-tuning modes, label fractions, oracle,
               over seeds; writes docs/RESULTS.md
               (``mtct_tf.benchmarks.ablation``).
    retrieval  ScaNN vs exact nearest-neighbour search: recall, queries/s;
               writes its section of docs/BENCHMARKS.md
               (``mtct_tf.benchmarks.retrieval``).
    confirm    the second, confirmatory protocol (docs/PROTOCOL_2.md):
               MTCT against UD, end-to-end, budget-matched arms, DDAN and
               JAN, Holm-adjusted; writes docs/RESULTS_2.md
               (``mtct_tf.benchmarks.confirm``).
    gallery    which network embeds the shop gallery: retrieval with the
               street network's and the shop stage's gallery on an
               ablation's runs (``mtct_tf.benchmarks.gallery``).
    real       real photos (clothing-dataset-small) from scratch: test
               top-1, mAP_cls, per-class AP over seeds; writes
               docs/RESULTS_REAL.md; --compare chooses the model on
               validation (``mtct_tf.benchmarks.real``).

Examples:
    python -m mtct_tf.benchmark speed
    python -m mtct_tf.benchmark speed --quick --out /tmp/speed.md
    python -m mtct_tf.benchmark ablation --seeds 3
    python -m mtct_tf.benchmark retrieval
    python -m mtct_tf.benchmark real --data ../shared/data/clothing-dataset-small
"""

import argparse
import importlib
import sys

# Command -> (module, help). A module provides ``add_arguments(parser)``,
# which sets ``func`` (called with the parsed arguments, returns the exit
# code). Modules are imported when the parser is built, so they must not
# import TensorFlow at module level.
COMMANDS = {
    "speed": ("mtct_tf.benchmarks.speed",
              "training / input / serving speed vs the machine's peak"),
    "ablation": ("mtct_tf.benchmarks.ablation",
                 "MTCT vs No-Adapt, UD, FTT, end-to-end and loss variants"),
    "retrieval": ("mtct_tf.benchmarks.retrieval",
                  "ScaNN vs exact street-to-shop search: recall, queries/s"),
    "confirm": ("mtct_tf.benchmarks.confirm",
                "second protocol: MTCT vs UD, end-to-end, DDAN, JAN (Holm)"),
    "gallery": ("mtct_tf.benchmarks.gallery",
                "retrieval diagnosis: street-net vs shop-net gallery"),
    "real": ("mtct_tf.benchmarks.real",
             "real photos from scratch: test top-1 / mAP_cls over seeds"),
}


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m mtct_tf.benchmark", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True,
                                metavar="{" + ",".join(COMMANDS) + "}")
    for name, (module, help_text) in COMMANDS.items():
        importlib.import_module(module).add_arguments(
            sub.add_parser(name, help=help_text, description=help_text))
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
