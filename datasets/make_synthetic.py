"""Renders the X-Domain-synth dataset (mtct_tf.data.synthetic).

    python datasets/make_synthetic.py --out data/xdomain_synth --items 2000 \
        --seed 1 --workers 2 --contact_sheet docs/images/synth_contact_sheet.png

The paper's regime (many shop-only items, few with street photos), as the
``synth_benchmark`` experiment uses it:

    python datasets/make_synthetic.py --out data/xdomain_paper --items 3400 \
        --street_items 400 --seed 2017 --workers 2

Writes ``<out>/images/{shop,street}/*.jpg``, ``<out>/schema.json`` and, last,
``<out>/manifest.jsonl`` (docs/DATA_FORMAT.md); prints a JSON summary.
"""

import argparse
import json

from mtct_tf.data import synthetic


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="dataset root to write")
    p.add_argument("--items", type=int, required=True, help="garments")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image_size", type=int, default=128)
    p.add_argument("--shop_per_item", type=int, default=1)
    p.add_argument("--street_per_item", type=int, default=3)
    p.add_argument("--street_items", type=int, default=None,
                   help="only this many items get street images (the rest "
                        "are shop-only); default: every item")
    p.add_argument("--missing_rate", type=float, default=0.1)
    p.add_argument("--split_fractions", type=float, nargs=3,
                   default=(0.6, 0.2, 0.2), metavar=("TRAIN", "VAL", "TEST"))
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--contact_sheet", metavar="PATH",
                   help="also save a PNG of the first 8 items")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    try:
        summary = synthetic.render_dataset(
            args.out, items=args.items, seed=args.seed,
            image_size=args.image_size, shop_per_item=args.shop_per_item,
            street_per_item=args.street_per_item,
            missing_rate=args.missing_rate,
            split_fractions=tuple(args.split_fractions),
            workers=args.workers, progress=not args.quiet,
            street_items=args.street_items)
    except ValueError as e:
        p.error(str(e))
    if args.contact_sheet:
        summary["contact_sheet"] = synthetic.contact_sheet(
            args.out, args.contact_sheet)
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
