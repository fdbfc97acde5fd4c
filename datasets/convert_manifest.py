"""Converts a dataset manifest into sharded TFRecords (docs/DATA_FORMAT.md).

    python datasets/convert_manifest.py --manifest ROOT/manifest.jsonl \
        --out SHARDS [--schema NAME_OR_PATH] [--num_shards N|auto] \
        [--resize S] [--skip_bad] [--allow_outside_root] [--workers W]

Prints a summary (also saved as SHARDS/summary.json). Exits with status 1
and a message naming the manifest line on bad input.
"""

import argparse
import sys

from mtct_tf.data import convert
from mtct_tf.data.manifest import ManifestError


def _num_shards(text):
    if text == "auto":
        return "auto"
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected an integer or 'auto', got {text!r}") from None


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--manifest", required=True, help="manifest.jsonl")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--schema", default=None,
                   help="built-in schema name or schema JSON path "
                        "(default: schema.json beside the manifest)")
    p.add_argument("--num_shards", type=_num_shards, default="auto",
                   help="shards per split, or 'auto' (~100 MB each)")
    p.add_argument("--resize", type=int, default=None,
                   help="scale images down to this shorter side")
    p.add_argument("--skip_bad", action="store_true",
                   help="skip and report bad lines instead of stopping")
    p.add_argument("--allow_outside_root", action="store_true",
                   help="let image paths leave the manifest's directory")
    p.add_argument("--workers", type=int, default=None,
                   help="image-checking processes (default: all cores)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the within-split shuffle")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        summary = convert.convert_manifest(
            args.manifest, args.out, schema=args.schema,
            num_shards=args.num_shards, resize=args.resize,
            skip_bad=args.skip_bad, allow_outside_root=args.allow_outside_root,
            workers=args.workers, progress=not args.quiet, seed=args.seed,
        )
    except (ManifestError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(convert.format_summary(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
