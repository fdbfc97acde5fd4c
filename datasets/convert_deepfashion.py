"""DeepFashion (Consumer-to-shop, Category and Attribute) -> a manifest.

    python datasets/convert_deepfashion.py --benchmark consumer2shop \
        --root DeepFashion/Consumer-to-shop --out data/deepfashion_c2s
    python datasets/convert_deepfashion.py --benchmark attributes \
        --root DeepFashion/Category-and-Attribute --out data/deepfashion_attr

Writes OUT/manifest.jsonl, OUT/schema.json, OUT/conversion.json (counts and
anything skipped) and a symbolic link OUT/images -> ROOT; then make the
TFRecords with the standard converter:

    python datasets/convert_manifest.py --manifest OUT/manifest.jsonl \
        --out OUT/shards --resize 256

Nothing is downloaded: DeepFashion is distributed by hand under a research
licence (docs/DATASETS.md). Place these files under --root, exactly as
distributed (unzip Img/img.zip inside Img/; ROOT/img/ works too):

  consumer2shop:
    Anno/list_bbox_consumer2shop.txt
    Anno/list_attr_cloth.txt
    Anno/list_attr_items.txt
    Anno/list_item_consumer2shop.txt
    Eval/list_eval_partition.txt
    Img/img/
    (optional) Anno/list_attr_type.txt   names the attribute groups
  attributes:
    Anno/list_bbox.txt
    Anno/list_attr_cloth.txt
    Anno/list_attr_img.txt
    Anno/list_category_cloth.txt
    Anno/list_category_img.txt
    Eval/list_eval_partition.txt
    Img/img/

A missing file is reported with every other missing one; a malformed line
with its file, line number and what was expected (exit status 1).
"""

import argparse
import json
import sys


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--benchmark", required=True,
                   choices=("consumer2shop", "attributes"))
    p.add_argument("--root", required=True,
                   help="the benchmark's folder (Anno/, Eval/, Img/)")
    p.add_argument("--out", required=True,
                   help="output directory for the manifest and schema")
    p.add_argument("--skip_bad", action="store_true",
                   help="drop images that are missing on disk or absent "
                        "from one of the files, and list them in "
                        "conversion.json, instead of stopping")
    p.add_argument("--domain", default="shop", choices=("shop", "street"),
                   help="attributes only: the domain of every image "
                        "(the benchmark has no domain labels)")
    p.add_argument("--anno_dir", default="Anno",
                   help="attributes only: annotation folder (Anno_coarse "
                        "in the 2020 re-release)")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    from mtct_tf.data import deepfashion
    from mtct_tf.data.manifest import ManifestError

    kwargs = {"skip_bad": args.skip_bad}
    if args.benchmark == "attributes":
        kwargs.update(domain=args.domain, anno_dir=args.anno_dir)
    try:
        report = deepfashion.convert(args.benchmark, args.root, args.out,
                                     **kwargs)
    except (deepfashion.AnnotationError, ManifestError, FileNotFoundError,
            FileExistsError) as e:
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
