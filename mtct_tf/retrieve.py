"""Street-to-shop retrieval CLI: index a shop gallery, query it, evaluate.

    python -m mtct_tf.retrieve index --model M --shards D --split test \
        --out gallery.npz
    python -m mtct_tf.retrieve query --model M --gallery gallery.npz \
        photo.jpg [--detector DET] [--top_k 5] [--out strip.png]
    python -m mtct_tf.retrieve evaluate --model M --shards D [--split test] \
        [--street_shards CROPS] [--gallery_stage shop]

``M`` is a training run directory, a ``.keras`` file or a SavedModel (a
version directory or a TF Serving model directory). ``evaluate`` follows the
consumer-to-shop protocol: the split's street images query its shop images,
a hit is a shop image of the query's item; it prints top-1/5/10/20 accuracy
and writes ``retrieval_<split>.json`` beside the model's other evaluation
reports when ``M`` is a run directory. For a run directory the gallery is
embedded by ``retrieval.gallery_stage``: the shop stage's network for MTCT
(the network its cross-domain loss pulled the street embeddings towards;
chosen on validation retrieval, docs/RESULTS_2.md), else the final one;
``index --stage`` and ``evaluate --gallery_stage`` choose another. See
``mtct_tf.retrieval``.
"""

import argparse
import json
import os
import sys

from mtct_tf import fileio, retrieval


def _parser():
    p = argparse.ArgumentParser(
        prog="python -m mtct_tf.retrieve",
        description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="mode", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--model", required=True,
                        help="run directory, .keras file or SavedModel")
    common.add_argument("--stage", help="stage of a run directory")

    index = sub.add_parser("index", parents=[common],
                           help="embed a shop gallery from shards")
    index.add_argument("--shards", required=True)
    index.add_argument("--split", default="test")
    index.add_argument("--domain", default="shop")
    index.add_argument("--out", required=True, help="gallery .npz")

    query = sub.add_parser("query", parents=[common],
                           help="top-k shop items for street photos")
    query.add_argument("photos", nargs="+")
    query.add_argument("--gallery", required=True)
    query.add_argument("--detector", help="detector SavedModel to crop with")
    query.add_argument("--top_k", type=int, default=5)
    query.add_argument("--method", choices=("exact", "scann"),
                       default="exact")
    query.add_argument("--out", help="PNG strip of the first photo's answer")

    evaluate = sub.add_parser("evaluate", parents=[common],
                              help="consumer-to-shop top-k accuracy")
    evaluate.add_argument("--shards", required=True)
    evaluate.add_argument("--street_shards",
                          help="street queries from here (e.g. crops)")
    evaluate.add_argument("--split", default="test")
    evaluate.add_argument("--method", choices=("exact", "scann"),
                          default="exact")
    evaluate.add_argument(
        "--gallery_stage",
        help="embed the gallery with this stage of the run directory; "
             "default: the shop stage for MTCT runs (the network their "
             "cross-domain loss aligned the street embeddings with), else "
             "the queries' model (docs/RESULTS_2.md)")
    return p


def _gallery_stage(model):
    """A run directory's gallery stage (``retrieval.gallery_stage``), said
    aloud, when it is not the final one; else ``None`` (the model's own
    network, as for a model file)."""
    if not os.path.isfile(os.path.join(model, "config.yaml")):
        return None
    from mtct_tf import runs, stages

    config = runs.load_config(model)
    stage = retrieval.gallery_stage(config)
    if stage == stages.final_stage(config.method):
        return None
    print(f"gallery embedded by the {stage} stage's network of {model} (the "
          "one its cross-domain loss aligned the street embeddings with; "
          "docs/RESULTS_2.md); --stage / --gallery_stage choose another",
          file=sys.stderr)
    return stage


def main(argv=None):
    args = _parser().parse_args(argv)
    if args.mode == "index":
        stage = args.stage or _gallery_stage(args.model)
        embedder = retrieval.load_embedder(args.model, stage=stage)
        gallery = retrieval.embed_shards(embedder, args.shards, args.split,
                                         args.domain)
        gallery.save(args.out)
        print(f"wrote {args.out}: {len(gallery)} images of "
              f"{len(set(gallery.items))} items")
        return 0
    if args.mode == "query":
        from mtct_tf import predicting

        gallery = retrieval.Gallery.load(args.gallery)
        photos = [predicting.read_photo(p) for p in args.photos]
        queries = retrieval.embed_photos(args.model, photos,
                                         detector=args.detector,
                                         stage=args.stage)
        search = retrieval.make_search(gallery.embeddings, args.method)
        indices, scores = search.search(queries, args.top_k)
        answers = []
        for path, row, score in zip(args.photos, indices, scores):
            answers.append({"photo": path, "top": [
                {"item": gallery.items[i], "image": gallery.ids[i],
                 "score": round(float(s), 4)} for i, s in zip(row, score)]})
        json.dump(answers, sys.stdout, indent=1)
        print()
        if args.out:
            ids = [gallery.ids[i] for i in indices[0]]
            images = retrieval.gallery_images(gallery, ids)
            retrieval.draw_strip(photos[0], [
                (images.get(gallery.ids[i]),
                 f"{gallery.items[i]}\n{float(s):.3f}")
                for i, s in zip(indices[0], scores[0])], args.out)
            print(f"wrote {args.out}")
        return 0
    embedder = retrieval.load_embedder(args.model, stage=args.stage)
    gallery_stage = args.gallery_stage or (
        None if args.stage else _gallery_stage(args.model))
    gallery_embedder = (
        retrieval.load_embedder(args.model, stage=gallery_stage)
        if gallery_stage else None)
    result = retrieval.evaluate_retrieval(
        embedder, args.shards, split=args.split,
        street_shards_dir=args.street_shards, method=args.method,
        gallery_embedder=gallery_embedder)
    print(retrieval.format_result(result))
    if os.path.isfile(os.path.join(args.model, "config.yaml")):
        out = os.path.join(args.model, "eval", f"retrieval_{args.split}.json")
        os.makedirs(os.path.dirname(out), exist_ok=True)
        fileio.write_json(out, result)
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
