"""Crops street images with the exported garment detector into new shards.

    python datasets/crop_with_detector.py --detector runs/det/export \
        --source runs/demo/shards --out runs/demo/shards_cropped \
        [--min_score 0.5] [--margin 0.05] [--batch_size 8]

``--source`` is an attribute shards directory (datasets/convert_manifest.py)
or a manifest.jsonl. Street records are cropped at the detector's best
garment box (fallbacks: the ground-truth box, else the whole image); shop
records pass through. The output is a shard set like the converter's
(``<split>-NNNNN-of-NNNNN.tfrecord``, ``schema.json``, ``summary.json`` with
the crop statistics) that mtct_tf.data.pipeline reads as is. Prints the
statistics (crops, fallbacks, images/s) as JSON. See docs/DETECTOR.md.
"""

import argparse
import json
import sys


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--detector", required=True,
                   help="export directory (or its saved_model)")
    p.add_argument("--source", required=True,
                   help="attribute shards directory or manifest.jsonl")
    p.add_argument("--out", required=True, help="output shards directory")
    p.add_argument("--min_score", type=float, default=0.5)
    p.add_argument("--margin", type=float, default=0.05,
                   help="fraction of the box size added on each side")
    p.add_argument("--class_id", type=int, default=1,
                   help="detection class kept; -1 = any")
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--domains", nargs="+", default=["street"],
                   help="domains that are cropped (others pass through)")
    p.add_argument("--records_per_shard", type=int, default=1000)
    p.add_argument("--schema", help="schema name or JSON (default: the "
                   "source's schema.json)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)

    from mtct_tf import detector

    stats = detector.crop_with_detector(
        args.detector, args.source, args.out, min_score=args.min_score,
        margin=args.margin,
        class_id=None if args.class_id < 0 else args.class_id,
        batch_size=args.batch_size, domains=tuple(args.domains),
        records_per_shard=args.records_per_shard, schema=args.schema,
        progress=not args.quiet)
    json.dump(stats.to_dict(), sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
