"""Exports a trained MTN as a TF Serving SavedModel (and a .keras file).

    python export/export_saved_model.py --model runs/demo/mtct \
        --export_dir runs/demo/serving [--model_name mtct] [--version N] \
        [--with_detector DETECTOR_SAVEDMODEL [--min_score 0.5]] \
        [--margin 0.1] [--keras_out runs/demo/mtct.keras] \
        [--gallery GALLERY.npz [--top_k 10]]

``--model`` is a training run directory (its last stage's model.keras and
the run's schema) or a .keras file (with ``--schema``, or schema.json beside
it). The SavedModel goes to ``<export_dir>/<model_name>/<version>/``
(version: the next free integer unless given). ``--with_detector`` bakes a
Faster R-CNN SavedModel (``python -m mtct_tf.detect export``) into the graph
so that ``serving_default`` takes whole street photos. ``--margin``
(default: the run's ``data.margin``, else 0.1) is the context kept around a
detector box. ``--gallery`` (from ``python -m mtct_tf.retrieve index`` on
the same run: for MTCT embedded by its shop stage, see export/README.md)
bakes a shop gallery into the graph: both signatures
then also return the top-k gallery items of each photo. Prints a JSON
summary. See export/README.md.
"""

import argparse
import json
import sys
import time


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True,
                   help="training run directory or .keras file")
    p.add_argument("--stage", help="stage of a run (default: the last)")
    p.add_argument("--schema", help="schema name or JSON file")
    p.add_argument("--export_dir", required=True,
                   help="TF Serving base directory's parent")
    p.add_argument("--model_name", default="mtct")
    p.add_argument("--version", type=int, help="default: next integer")
    p.add_argument("--with_detector", metavar="DETECTOR_SAVEDMODEL",
                   help="detector SavedModel to put in front of the MTN")
    p.add_argument("--min_score", type=float, default=0.5,
                   help="lowest detection score accepted")
    p.add_argument("--margin", type=float,
                   help="context around a detector box (fraction per side)")
    p.add_argument("--keras_out", help="also write a .keras file here")
    p.add_argument("--gallery", metavar="GALLERY_NPZ",
                   help="a gallery of this run (`python -m mtct_tf.retrieve "
                        "index --model RUN`; for MTCT embedded by its shop "
                        "stage) to search in the graph")
    p.add_argument("--top_k", type=int, default=10,
                   help="gallery neighbours returned (with --gallery)")
    args = p.parse_args(argv)

    from mtct_tf import export_lib, retrieval, runs

    try:
        net, schema, run_margin = runs.load_model_and_schema(
            args.model, schema=args.schema, stage=args.stage)
        margin = args.margin
        if margin is None:
            margin = run_margin if run_margin is not None else 0.1
        gallery = (retrieval.Gallery.load(args.gallery) if args.gallery
                   else None)
        start = time.time()
        version_dir = export_lib.export_saved_model(
            net, schema, args.export_dir, model_name=args.model_name,
            version=args.version, margin=margin,
            detector=args.with_detector, min_score=args.min_score,
            gallery=gallery, top_k=args.top_k)
        summary = {"saved_model": version_dir,
                   "seconds": round(time.time() - start, 1),
                   "image_size": net.image_size, "schema": schema.name,
                   "detector": args.with_detector, "margin": margin,
                   "gallery": args.gallery,
                   "signatures": [export_lib.SIGNATURE_IMAGES,
                                  export_lib.SIGNATURE_TENSORS]}
        if args.keras_out:
            summary["keras"] = export_lib.export_keras(net, args.keras_out)
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    json.dump(summary, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
