"""Garment detector CLI: train, evaluate or export the Faster R-CNN.

    python -m mtct_tf.detect train --preset small --records R --model_dir D \
        [--steps N] [--init_checkpoint CKPT]
    python -m mtct_tf.detect evaluate --records R --model_dir D [--split test]
    python -m mtct_tf.detect export --model_dir D [--export_dir D/export]

``train`` runs Model Garden's orbit loop (``train_lib.run_experiment``) and
evaluates the final checkpoint on ``--eval_split`` (default ``val``);
``evaluate`` writes ``<model_dir>/eval_metrics.json`` (COCO AP, AP50, ...);
``export`` writes a SavedModel with ``image_tensor`` and ``image_bytes``
signatures. ``evaluate`` and ``export`` reuse ``<model_dir>/params.yaml`` of
the training run. See docs/DETECTOR.md.
"""

import argparse
import json
import os
import sys

from mtct_tf import detector


def _parser():
    p = argparse.ArgumentParser(
        prog="python -m mtct_tf.detect", description=__doc__.splitlines()[0])
    p.add_argument("mode", choices=("train", "evaluate", "export"))
    p.add_argument("--model_dir", required=True)
    p.add_argument("--preset", choices=detector.PRESETS, default="small")
    p.add_argument("--records", help="detection records directory")
    p.add_argument("--eval_split", default=None,
                   help="split to evaluate (train: val, evaluate: test)")
    p.add_argument("--steps", type=int, help="training steps")
    p.add_argument("--batch_size", type=int, help="training batch size")
    p.add_argument("--eval_batch_size", type=int)
    p.add_argument("--input_size", type=int, help="input side, multiple of 64")
    p.add_argument("--learning_rate", type=float)
    p.add_argument("--init_checkpoint",
                   help="backbone checkpoint (ImageNet / COCO) to start from")
    p.add_argument("--params_override", help="Model Garden YAML / dict string")
    p.add_argument("--no_eval", action="store_true",
                   help="train without the final evaluation")
    p.add_argument("--export_dir", help="default: <model_dir>/export")
    p.add_argument("--checkpoint", help="export this checkpoint")
    return p


def main(argv=None):
    args = _parser().parse_args(argv)
    split = args.eval_split or ("val" if args.mode == "train" else "test")
    saved = os.path.join(args.model_dir, "params.yaml")
    if args.mode == "train" or not os.path.isfile(saved):
        params = detector.detector_config(
            args.preset, records=args.records, eval_split=split,
            steps=args.steps, train_batch_size=args.batch_size,
            eval_batch_size=args.eval_batch_size,
            input_size=args.input_size, learning_rate=args.learning_rate,
            init_checkpoint=args.init_checkpoint,
            params_override=args.params_override)
    else:
        params = detector.load_config(saved)
        if args.records:
            params = detector.with_eval_pattern(
                params, os.path.join(args.records, f"{split}-*-of-*.tfrecord"))
    if args.mode == "train":
        out = detector.train(params, args.model_dir,
                             evaluate=not args.no_eval)
    elif args.mode == "evaluate":
        out = detector.evaluate(params, args.model_dir)
    else:
        out = {"saved_model": detector.export(
            params, args.model_dir,
            args.export_dir or os.path.join(args.model_dir, "export"),
            checkpoint=args.checkpoint)}
    json.dump(out, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
