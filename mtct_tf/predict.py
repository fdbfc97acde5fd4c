"""Predicts clothing attributes of a photo: ``python -m mtct_tf.predict``.

Examples:
    python -m mtct_tf.predict photo.jpg --model runs/demo/mtct
    python -m mtct_tf.predict photo.jpg --model runs/demo/serving/mtct/1 \
        --top_k 3 --out annotated.png
    python -m mtct_tf.predict street.jpg \
        --model runs/demo/mtct/street/model.keras \
        --schema runs/demo/shards/schema.json --detector runs/det/export
    # The first street test photo of a manifest, beside its annotation:
    python -m mtct_tf.predict --manifest runs/demo/data/manifest.jsonl \
        --pick test/street --model runs/demo/serving/mtct --out a.png

``--model`` is a training run directory, a .keras file, a SavedModel
version directory or a TF Serving model directory (newest version). Prints
each attribute's top values with probabilities; ``--out`` writes a PNG with
the garment box and the top value of every attribute. With ``--manifest``
the photo's annotation is set beside the answer: the annotated value of
every attribute and whether the top-1 is right, and the annotated box
(green in the PNG) beside the detector's (red). ``--pick SPLIT/DOMAIN``
takes the manifest's first photo of that split and domain (a fixed rule,
not a chosen photo) instead of a PHOTO argument.
"""

import argparse
import json
import sys


def main(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m mtct_tf.predict", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("photo", nargs="?", help="a JPEG or PNG photo")
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
    p.add_argument("--manifest", help="a manifest.jsonl that annotates the "
                   "photo (docs/DATA_FORMAT.md)")
    p.add_argument("--pick", metavar="SPLIT/DOMAIN",
                   help="with --manifest, instead of PHOTO: the first photo "
                   "of this split and domain, e.g. test/street")
    args = p.parse_args(argv)
    if bool(args.photo) == bool(args.pick):
        p.error("give a PHOTO or --pick SPLIT/DOMAIN (with --manifest)")
    if args.pick and (not args.manifest or args.pick.count("/") != 1):
        p.error("--pick SPLIT/DOMAIN (e.g. test/street) needs --manifest")

    from mtct_tf import predicting

    from mtct_tf.data.manifest import ManifestError

    annotation = None
    try:
        predictor = predicting.load_predictor(
            args.model, schema=args.schema, stage=args.stage,
            detector=args.detector, margin=args.margin,
            min_score=args.min_score)
        if args.manifest:
            split, domain = (args.pick.split("/") if args.pick
                             else (None, None))
            annotation = predicting.find_annotation(
                args.manifest, predictor.schema, photo=args.photo,
                split=split, domain=domain)
        photo = args.photo or annotation.path
        encoded = predicting.read_photo(photo)
        prediction = predictor.predict_bytes(
            encoded, top_k=args.top_k, name=photo)
        if args.out:
            predicting.annotate(encoded, prediction, args.out, annotation)
    except (FileNotFoundError, ValueError, ManifestError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        extra = ({"annotation": {"labels": annotation.labels,
                                 "box_pixels": annotation.box_pixels,
                                 "where": annotation.where}}
                 if annotation is not None else {})
        json.dump({"photo": photo, "model": predictor.source,
                   **prediction.to_dict(), **extra}, sys.stdout, indent=1)
        print()
    else:
        print(predicting.format_prediction(photo, prediction, annotation))
    if args.out:
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
