"""Folders of labelled photos (one folder per class) -> sharded TFRecords.

    python datasets/convert_image_folder.py --root clothing-dataset-small \
        --out data/photos

ROOT is either ROOT/train/<class>/*.jpg with validation/ (or val/) and
test/ beside train/, or ROOT/<class>/*.jpg, split by a seeded rule
(--val_fraction, --test_fraction, --seed). An optional --csv adds
attributes (one per column; blank = missing), a `domain` column and an
`item` column (photos of one garment); --csv_key names the column that
gives each photo's path below ROOT or its file name.

Writes OUT/manifest.jsonl, OUT/schema.json, OUT/conversion.json and the
link OUT/images -> ROOT (ROOT is read, never copied or written), then the
shards in OUT/shards (docs/DATA_FORMAT.md); train with
--override data.shards_dir=OUT/shards. Photos carrying an EXIF orientation
are stored upright. Exits with status 1 and a message naming the folder,
file or CSV line on bad input.
"""

import argparse
import os
import sys

from mtct_tf.data import convert, image_folder
from mtct_tf.data.manifest import ManifestError


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", required=True, help="the photo folder")
    p.add_argument("--out", required=True,
                   help="output folder (manifest, schema, shards/)")
    p.add_argument("--attribute", default="category",
                   help="the attribute the class folders label")
    p.add_argument("--csv", default=None, help="optional labels CSV")
    p.add_argument("--csv_key", default="path",
                   help="the CSV column naming each photo")
    p.add_argument("--domain", default="shop", choices=("shop", "street"),
                   help="domain of photos the CSV does not place")
    p.add_argument("--val_fraction", type=float, default=0.1)
    p.add_argument("--test_fraction", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the split rule (one set of class folders)")
    p.add_argument("--ignore_other_files", action="store_true",
                   help="skip files that are not images by extension")
    p.add_argument("--skip_bad", action="store_true",
                   help="skip and report unreadable images")
    p.add_argument("--resize", type=int, default=None,
                   help="scale photos down to this shorter side in the "
                        "shards")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        report = image_folder.import_image_folder(
            args.root, args.out, attribute=args.attribute,
            csv_path=args.csv, csv_key=args.csv_key, domain=args.domain,
            val_fraction=args.val_fraction, test_fraction=args.test_fraction,
            seed=args.seed, ignore_other_files=args.ignore_other_files,
            skip_bad=args.skip_bad)
        print(f"{report['images']} photos ({report['layout']}) -> "
              f"{report['manifest']}")
        summary = convert.convert_manifest(
            report["manifest"], os.path.join(args.out, "shards"),
            resize=args.resize, skip_bad=args.skip_bad,
            progress=not args.quiet)
    except (image_folder.ImageFolderError, ManifestError,
            FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(convert.format_summary(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
