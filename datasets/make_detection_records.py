"""Writes Model Garden detection TFRecords from a manifest with boxes.

    python datasets/make_detection_records.py --manifest DATA/manifest.jsonl \
        --out runs/det_records --domain street

Every manifest line with a ``bbox`` becomes one tf.Example in TF Model
Garden's detection format (one ``garment`` box, class 1), sharded as
``<out>/<split>-0000k-of-0000n.tfrecord``; ``<out>/detection_records.json``
counts the images per split. The schema that parses the manifest is
``schema.json`` beside it unless ``--schema`` names another (a built-in name
or a JSON file). See docs/DETECTOR.md.
"""

import argparse
import json
import os
import sys


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", required=True, help="manifest.jsonl")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--domain", choices=("shop", "street"), default=None,
                        help="keep only this domain (default: all)")
    parser.add_argument("--schema", default=None,
                        help="schema name or JSON (default: schema.json "
                        "beside the manifest)")
    parser.add_argument("--records_per_shard", type=int, default=500)
    parser.add_argument("--allow_outside_root", action="store_true",
                        help="let image paths leave the manifest's directory")
    args = parser.parse_args(argv)

    from mtct_tf import attributes, detector
    from mtct_tf.data import manifest

    schema = args.schema or os.path.join(
        os.path.dirname(os.path.abspath(args.manifest)), "schema.json")
    entries, _ = manifest.read_manifest(
        args.manifest, attributes.get_schema(schema),
        allow_outside_root=args.allow_outside_root)
    info = detector.write_detection_records(
        entries, args.out, domain=args.domain, manifest_path=args.manifest,
        records_per_shard=args.records_per_shard)
    json.dump(info, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
