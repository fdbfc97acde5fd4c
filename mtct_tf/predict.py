"""Predicts clothing attributes of a photo: ``python -m mtct_tf.predict``.

Examples:
    python -m mtct_tf.predict photo.jpg --model runs/demo/mtct
    python -m mtct_tf.predict photo.jpg --model runs/demo/serving/mtct/1 \
        --top_k 3 --out annotated.png
    python -m mtct_tf.predict street.jpg \
        --model runs/demo/mtct/street/model.keras \
        --schema runs/demo/shards/schema.json --detector runs/det/export

``--model`` is a training run directory, a .keras file, a SavedModel
version directory or a TF Serving model directory (newest version). Prints
each attribute's top values with probabilities; ``--out`` writes a PNG with
the garment box and the top value of every attribute.
"""

import argparse
import json
import sys


def main(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m mtct_tf.predict", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("photo", help="a JPEG or PNG photo")
    p.add_argument("--model", default="runs/demo/mtct",
                   help="run dir, .keras file or SavedModel (default: "
                   "%(default)s)")
    p.add_argument("--stage", help="stage of a run dir (default: the last)")
    p.add_argument("--schema", help="schema name or JSON file")
    p.add_argument("--detector", help="detector SavedModel: crop the "
                   "garment first")
    p.add_argument("--min_score", type=float, default=0.5)
    p.add_argument("--margin", type=float,
                   help="context around a detector box (default: the run's)")
    p.add_argument("--top_k", type=int, default=3)
    p.add_argument("--out", help="annotated PNG to write")
    p.add_argument("--json", action="store_true", help="print JSON")
    args = p.parse_args(argv)

    from mtct_tf import predicting

    try:
        encoded = predicting.read_photo(args.photo)
        predictor = predicting.load_predictor(
            args.model, schema=args.schema, stage=args.stage,
            detector=args.detector, margin=args.margin,
            min_score=args.min_score)
        prediction = predictor.predict_bytes(
            encoded, top_k=args.top_k, name=args.photo)
        if args.out:
            predicting.annotate(encoded, prediction, args.out)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        json.dump({"photo": args.photo, "model": predictor.source,
                   **prediction.to_dict()}, sys.stdout, indent=1)
        print()
    else:
        print(predicting.format_prediction(args.photo, prediction))
    if args.out:
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
