"""Converts DeepFashion2 (per-image JSON annotations) to a manifest.

    python datasets/convert_deepfashion2.py --root DeepFashion2 \
        --out data/deepfashion2 [--parts train validation] \
        [--val_fraction 0.1] [--skip_bad]

One manifest line per garment (item1 ... itemN of an image): its box, its
category (13 values), domain shop (source "shop") or street (source "user"),
item id <part>/<pair_id>/<style> for paired garments (style > 0). Splits:
validation -> test, train -> train except a fixed val_fraction of pairs ->
val. Writes OUT/manifest.jsonl, OUT/schema.json, OUT/conversion.json and a
symbolic link OUT/images -> ROOT; then make the TFRecords with

    python datasets/convert_manifest.py --manifest OUT/manifest.jsonl \
        --out OUT/shards --resize 256

Nothing is downloaded: DeepFashion2 is distributed by hand under a research
licence (docs/DATASETS.md). Place these folders under --root, exactly as
unzipped (train.zip, validation.zip):

    train/annos/        000001.json ...
    train/image/        000001.jpg ...
    validation/annos/
    validation/image/

(only those of the --parts asked for). Every missing folder is reported at
once; a malformed annotation file by name, item and what was expected (exit
status 1).
"""

import argparse
import json
import sys


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", required=True,
                   help="the DeepFashion2 folder (train/, validation/)")
    p.add_argument("--out", required=True,
                   help="output directory for the manifest and schema")
    p.add_argument("--parts", nargs="+", default=["train", "validation"],
                   choices=("train", "validation"))
    p.add_argument("--val_fraction", type=float, default=0.1,
                   help="fraction of training pairs held out as val")
    p.add_argument("--skip_bad", action="store_true",
                   help="drop garments whose image is missing on disk")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    from mtct_tf.data import deepfashion2
    from mtct_tf.data.deepfashion_files import AnnotationError

    try:
        report = deepfashion2.convert(
            args.root, args.out, parts=args.parts,
            val_fraction=args.val_fraction, skip_bad=args.skip_bad)
    except (AnnotationError, FileNotFoundError, FileExistsError,
            ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    shown = {k: v for k, v in report.items()
             if not isinstance(v, (list, dict)) or k == "splits"}
    print(json.dumps(shown, indent=1, ensure_ascii=False))
    print(f"next: python datasets/convert_manifest.py --manifest "
          f"{report['manifest']} --out {args.out}/shards")
    return 0


if __name__ == "__main__":
    sys.exit(main())
