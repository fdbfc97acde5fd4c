"""Street-to-shop retrieval with the MTN's embedding.

The embedding output (the branches' penultimate FC layers, concatenated) is
what the cross-domain loss pulls towards a street photo's shop item, so it
doubles as a retrieval feature: embed a gallery of shop images, then rank it
for a street photo by cosine similarity (the embeddings are L2-normalised,
as the cross-domain loss normalises them, so a dot product ranks exactly as
the loss's squared distance does).

* ``Gallery``: embeddings (float32 [N, D], unit rows), image ids and item
  ids, saved as one ``.npz`` (written whole, then renamed into place).
* ``ExactSearch``: the reference, one matrix product per query batch.
* ``ScannSearch``: ScaNN's tree + asymmetric-hashing index for large
  galleries (approximate; ``search_recall`` measures it against exact).
* ``topk_accuracy``: the consumer-to-shop protocol (DeepFashion
  Consumer-to-shop, Liu et al. 2016): a query is a hit at k when one of its k
  nearest gallery images shows the query's item.

``python -m mtct_tf.retrieve`` wraps these (index, query, evaluate).
"""

import dataclasses
import json
import os

import numpy as np

from mtct_tf import fileio

# Retrieval accuracy is reported at these k (DeepFashion's curve runs to 50).
TOP_K = (1, 5, 10, 20)
# Rows are divided by max(||x||, this): a zero row stays 0.
_EPSILON = 1e-12


def normalize(x):
    """Rows of ``x`` scaled to unit L2 norm (float32; zero rows stay 0).

    Args:
        x: [N, D] embeddings.

    Returns:
        float32 [N, D] NumPy array.

    Raises:
        ValueError: ``x`` is not [N, D].
    """
    # Keras only here: building a gallery from a file needs no TensorFlow
    # before this.
    import keras

    x = np.asarray(x, np.float32)
    if x.ndim != 2:
        raise ValueError(f"embeddings must be [N, D]. Received: {x.shape}")
    return keras.ops.convert_to_numpy(
        keras.ops.normalize(x, axis=-1, epsilon=_EPSILON))


# Which network embeds a run's shop gallery (docs/RESULTS_2.md, retrieval
# diagnosis; chosen on validation retrieval): for MTCT, whose cross-domain
# loss pulls the street network's f_t(street) towards the shop stage's
# f_s(shop), the shop stage's network in these fine-tuning modes; for every
# other run (FTT, UD, end-to-end, CORAL, which aligns f_t with itself) its
# own final network.
SHOP_GALLERY_MODES = ("fc", "all")


def gallery_stage(config):
    """The stage of a run whose network embeds its shop gallery (see
    ``SHOP_GALLERY_MODES``); the queries are always the final stage's."""
    from mtct_tf import stages

    if (config.method == "mtct"
            and config.street.cross_domain.kind != "coral"
            and config.street.finetune in SHOP_GALLERY_MODES):
        return "shop"
    return stages.final_stage(config.method)


@dataclasses.dataclass
class Gallery:
    """Embedded images: ``embeddings`` [N, D] with unit rows, and their ids.

    Attributes:
        embeddings: float32 [N, D], L2-normalised.
        ids: str [N], image ids (the records' ``image/source_id`` or file
            paths).
        items: str [N], item ids ("" when unknown).
        info: dict of provenance (model, source, image size), saved too.
    """

    embeddings: np.ndarray
    ids: np.ndarray
    items: np.ndarray
    info: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        self.embeddings = normalize(self.embeddings)
        self.ids = np.asarray(self.ids, dtype=str)
        self.items = np.asarray(self.items, dtype=str)
        n = len(self.embeddings)
        if len(self.ids) != n or len(self.items) != n:
            raise ValueError(
                "a gallery needs one id and one item per embedding. "
                f"Received: {n} embeddings, {len(self.ids)} ids, "
                f"{len(self.items)} items")

    def __len__(self):
        return len(self.embeddings)

    def save(self, path):
        """Writes ``path`` (``.npz``) whole, or leaves the old file."""
        path = os.fspath(path)
        if not path.endswith(".npz"):
            raise ValueError(f"a gallery file ends with .npz. Received: {path}")
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with fileio.replacing(path, ".npz") as tmp, open(tmp, "wb") as f:
            np.savez(f, embeddings=self.embeddings, ids=self.ids,
                     items=self.items, info=json.dumps(self.info))
        return path

    @classmethod
    def load(cls, path):
        """Reads a gallery written by ``save``.

        Raises:
            FileNotFoundError: no such file.
            ValueError: the file is not a gallery (names what is missing).
        """
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: no such gallery file")
        with np.load(path, allow_pickle=False) as f:
            missing = {"embeddings", "ids", "items", "info"} - set(f.files)
            if missing:
                raise ValueError(
                    f"{path}: not a gallery written by `python -m "
                    f"mtct_tf.retrieve index` (missing {sorted(missing)})")
            return cls(f["embeddings"], f["ids"], f["items"],
                       json.loads(str(f["info"])))


class ExactSearch:
    """Exact maximum-inner-product search: one matrix product per batch."""

    def __init__(self, gallery_embeddings, *, batch_size=1024):
        self._x = normalize(gallery_embeddings)
        self._batch = batch_size

    def search(self, queries, k):
        """Returns ``(indices [Q, k], scores [Q, k])``, best first.

        Within the top k, equal scores keep the lower gallery index first;
        which of several images tied at the k-th place is kept is up to
        ``np.argpartition`` (deterministic, and independent of the batch).
        """
        q = normalize(queries)
        k = min(int(k), len(self._x))
        if k < 1:
            raise ValueError(f"`k` must be >= 1. Received: k={k}")
        indices, scores = [], []
        for start in range(0, len(q), self._batch):
            s = q[start:start + self._batch] @ self._x.T
            # Select the k best in linear time, then order only those.
            top = np.argpartition(-s, k - 1, axis=1)[:, :k]
            top.sort(axis=1)  # Gallery order, so the stable sort below
            best = np.take_along_axis(s, top, axis=1)  # keeps ties by index.
            order = np.argsort(-best, axis=1, kind="stable")
            top = np.take_along_axis(top, order, axis=1)
            indices.append(top)
            scores.append(np.take_along_axis(best, order, axis=1))
        if not indices:
            return (np.zeros((0, k), np.int64), np.zeros((0, k), np.float32))
        return np.concatenate(indices), np.concatenate(scores)


class ScannSearch:
    """ScaNN (Guo et al. 2020): k-means tree, anisotropic hashing, reorder.

    Args:
        gallery_embeddings: [N, D].
        num_leaves: partitions of the tree; default ~sqrt(N).
        leaves_to_search: partitions scanned per query; default 1/10 of
            ``num_leaves`` (at least 1).
        reorder: candidates re-scored exactly before the final top-k.
        k: default number of neighbours the index is built for.

    Raises:
        ImportError: ScaNN is not installed (``pip install scann``; Linux
            x86-64 wheels only).
    """

    def __init__(self, gallery_embeddings, *, num_leaves=None,
                 leaves_to_search=None, reorder=100, k=20):
        try:
            from scann import scann_ops_pybind
        except ImportError as e:
            raise ImportError(
                "approximate search needs ScaNN: pip install scann (Linux "
                "x86-64); or use exact search") from e
        x = normalize(gallery_embeddings)
        n = len(x)
        num_leaves = num_leaves or max(1, int(round(np.sqrt(n))))
        num_leaves = min(num_leaves, n)
        leaves_to_search = leaves_to_search or max(1, num_leaves // 10)
        builder = scann_ops_pybind.builder(x, k, "dot_product")
        if num_leaves > 1:
            builder = builder.tree(
                num_leaves=num_leaves, num_leaves_to_search=leaves_to_search,
                training_sample_size=n)
        # Asymmetric hashing needs 2-dimensional blocks.
        self._index = (builder.score_ah(
            2, anisotropic_quantization_threshold=0.2)
            .reorder(max(reorder, k)).build())
        self._n = n
        self.num_leaves, self.leaves_to_search = num_leaves, leaves_to_search

    def search(self, queries, k):
        """Returns ``(indices [Q, k], scores [Q, k])``, best first."""
        q = normalize(queries)
        k = min(int(k), self._n)
        indices, scores = self._index.search_batched(
            q, final_num_neighbors=k)
        return np.asarray(indices, np.int64), np.asarray(scores, np.float32)


def make_search(gallery_embeddings, method="exact", **kwargs):
    """``"exact"`` -> ``ExactSearch``, ``"scann"`` -> ``ScannSearch``."""
    if method == "exact":
        return ExactSearch(gallery_embeddings, **kwargs)
    if method == "scann":
        return ScannSearch(gallery_embeddings, **kwargs)
    raise ValueError(
        f"`method` must be 'exact' or 'scann'. Received: method={method!r}")


def topk_accuracy(neighbour_items, query_items, ks=TOP_K):
    """Consumer-to-shop top-k retrieval accuracy.

    Args:
        neighbour_items: str [Q, K], the item of each retrieved gallery
            image, nearest first (K >= max(ks)).
        query_items: str [Q], each query's item.
        ks: the k reported.

    Returns:
        Dict ``str(k)`` -> fraction of queries with their item among the k
        nearest gallery images.
    """
    neighbour_items = np.asarray(neighbour_items, dtype=str)
    query_items = np.asarray(query_items, dtype=str)
    if not len(query_items):
        raise ValueError("no queries to evaluate")
    hits = neighbour_items == query_items[:, None]
    # A hit at rank r counts for every k >= r + 1.
    first = np.where(hits.any(axis=1), hits.argmax(axis=1), np.inf)
    return {str(k): float(np.mean(first < k)) for k in ks}


def search_recall(approximate, exact):
    """Mean fraction of the exact top-k found by the approximate top-k."""
    approximate, exact = np.asarray(approximate), np.asarray(exact)
    found = [len(set(a) & set(e)) / len(e) for a, e in zip(approximate, exact)]
    return float(np.mean(found))


# --------------------------------------------------------------------------
# Embedding images with a model
# --------------------------------------------------------------------------


@dataclasses.dataclass
class Embedder:
    """Embeds image batches with an MTN or an exported SavedModel.

    Build with ``load_embedder``.

    Attributes:
        fn: images -> embeddings (the model's ``embedding`` output).
        image_size: the model's input side.
        margin: the context its training crops had around a box.
        source: what was loaded (for messages).
        keep: an object to keep alive with ``fn`` (a loaded SavedModel,
            whose variables its signature function needs).
    """

    fn: object
    image_size: int
    margin: float
    source: str
    keep: object = None

    def __call__(self, images):
        """float32 [B, S, S, 3] in [0, 255] -> unit embeddings [B, D]."""
        return normalize(np.asarray(self.fn(images)))


def load_embedder(model, *, stage=None, margin=None):
    """An ``Embedder`` for a run directory, ``.keras`` file or SavedModel.

    A SavedModel (a version directory, or a TF Serving model directory whose
    newest version is used) is run through its ``serving_tensors``
    signature, so the gallery is embedded by exactly what is served.

    Args:
        model: the model (see above).
        stage: the stage of a run directory.
        margin: context around boxes when cropping records; default: the
            run's ``data.margin``, else the config default.
    """
    import tensorflow as tf

    from mtct_tf import configs, export_lib, runs

    default = configs.DataConfig.margin if margin is None else margin

    version_dir = export_lib.latest_version_dir(model)
    if version_dir is not None:
        loaded = tf.saved_model.load(version_dir)
        fn = loaded.signatures[export_lib.SIGNATURE_TENSORS]
        _, meta = export_lib.read_export_info(version_dir)
        return Embedder(
            lambda x: fn(images=tf.constant(x, tf.float32))["embedding"],
            int(meta["image_size"]), default, version_dir, keep=loaded)
    net, _, run_margin = runs.load_model_and_schema(model, stage=stage)
    if margin is None and run_margin is not None:
        default = run_margin
    source = os.fspath(model) + (f"@{stage}" if stage else "")
    return Embedder(lambda x: net.predict_on_batch(x)["embedding"],
                    net.image_size, default, source, keep=net)


def embed_shards(embedder, shards_dir, split, domain, *, batch_size=64,
                 crop_to_bbox=True, progress=True):
    """Embeds one split and domain of a shards directory.

    Args:
        embedder: an ``Embedder``.
        shards_dir: converted shards (docs/DATA_FORMAT.md).
        split: ``"train"``, ``"val"`` or ``"test"``.
        domain: ``"shop"`` or ``"street"``.
        batch_size: images per model call.
        crop_to_bbox: crop each record's box (with the embedder's margin),
            as attribute evaluation does; ``False`` embeds whole images.
        progress: show a progress bar.

    Returns:
        A ``Gallery`` (ids = source ids, items = item ids).

    Raises:
        ValueError: the split holds no image of the domain.
    """
    from mtct_tf.data import pipeline, shards

    ds = pipeline.make_dataset(
        shards.shard_files(shards_dir, split),
        shards.load_schema(shards_dir),
        image_size=embedder.image_size, batch_size=batch_size,
        training=False, domain=domain, crop_to_bbox=crop_to_bbox,
        margin=embedder.margin, repeat=False, with_meta=True)
    embeddings, ids, items = [], [], []
    for images, _, meta in _progress(ds, progress, f"embed {domain} {split}"):
        embeddings.append(embedder(images))
        ids += [v.decode() for v in meta["source_id"].numpy()]
        items += [v.decode() for v in meta["item_id"].numpy()]
    if not embeddings:
        raise ValueError(
            f"{shards_dir}: split {split!r} has no {domain} image to embed")
    return Gallery(np.concatenate(embeddings), ids, items, {
        "model": embedder.source, "shards": os.fspath(shards_dir),
        "split": split, "domain": domain, "crop_to_bbox": crop_to_bbox,
        "image_size": embedder.image_size})


def format_result(result):
    """``evaluate_retrieval``'s result as a Markdown table (percentages)."""
    acc = result["topk_accuracy"]
    return "\n".join([
        f"Street-to-shop retrieval: {result['num_queries']} street queries, "
        f"{result['num_gallery']} shop images of "
        f"{result['num_gallery_items']} items ({result['method']} search)"
        + (f"; gallery embedded by {result['gallery_model']}"
           if result.get("gallery_model", result.get("query_model"))
           != result.get("query_model") else ""),
        "",
        "| " + " | ".join(f"top-{k}" for k in acc) + " |",
        "|" + "---|" * len(acc),
        "| " + " | ".join(f"{100 * v:.2f}" for v in acc.values()) + " |",
    ])


def _progress(iterable, enabled, desc):
    if not enabled:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, desc=desc, unit="batch", mininterval=5.0)


def evaluate_retrieval(embedder, shards_dir, *, split="test",
                       street_shards_dir=None, ks=TOP_K, method="exact",
                       progress=True, query_crop_to_bbox=True,
                       gallery_embedder=None):
    """Consumer-to-shop retrieval: street queries against the shop gallery.

    Queries are the split's street images (from ``street_shards_dir`` when
    given, e.g. detector crops), the gallery the split's shop images; a
    query counts at k when one of its k nearest shop images is of its item.
    ``query_crop_to_bbox=False`` queries with whole street photos.
    ``gallery_embedder`` embeds the gallery with another network than the
    queries (default: ``embedder`` for both).

    Returns:
        ``{"topk_accuracy": {k: fraction}, "num_queries", "num_gallery",
        "num_gallery_items", "method", "query_model", "gallery_model"}``
        (the two embedders' ``source``).
    """
    gallery = embed_shards(gallery_embedder or embedder, shards_dir, split,
                           "shop", progress=progress)
    queries = embed_shards(embedder, street_shards_dir or shards_dir, split,
                           "street", progress=progress,
                           crop_to_bbox=query_crop_to_bbox)
    search = make_search(gallery.embeddings, method)
    indices, _ = search.search(queries.embeddings, max(ks))
    return {
        "topk_accuracy": topk_accuracy(gallery.items[indices], queries.items,
                                       ks),
        "num_queries": len(queries), "num_gallery": len(gallery),
        "num_gallery_items": int(len(set(gallery.items))), "method": method,
        "query_model": embedder.source,
        "gallery_model": (gallery_embedder or embedder).source,
    }


def embed_photos(model, photos, *, detector=None, stage=None):
    """Embeds encoded photos the way ``predict`` sees them.

    Args:
        model: as ``predicting.load_predictor`` takes (a SavedModel exported
            ``--with_detector`` crops the garment itself).
        photos: list of encoded JPEG / PNG bytes.
        detector: a detector SavedModel to crop the garment first (with a
            run directory or ``.keras`` model).
        stage: the stage of a run directory.

    Returns:
        Unit embeddings [len(photos), D].
    """
    from mtct_tf import predicting

    predictor = predicting.load_predictor(model, detector=detector,
                                          stage=stage)
    return normalize(np.concatenate(
        [predictor.raw([p])["embedding"] for p in photos]))


def gallery_images(gallery, ids):
    """Encoded images of some gallery ids, read back from its shards.

    Returns:
        Dict id -> encoded bytes (ids that cannot be found are left out).
    """
    import tensorflow as tf

    from mtct_tf.data import features, shards

    wanted, found = set(ids), {}
    shards_dir, split = gallery.info.get("shards"), gallery.info.get("split")
    if not shards_dir or not os.path.isdir(shards_dir):
        return found
    spec = {features.SOURCE_ID: tf.io.FixedLenFeature([], tf.string),
            features.ENCODED: tf.io.FixedLenFeature([], tf.string)}
    for raw in tf.data.TFRecordDataset(
            shards.shard_files(shards_dir, split)):
        record = tf.io.parse_single_example(raw, spec)
        source = record[features.SOURCE_ID].numpy().decode()
        if source in wanted:
            found[source] = record[features.ENCODED].numpy()
            if len(found) == len(wanted):
                break
    return found


def draw_strip(query, neighbours, path, *, tile=128):
    """A PNG strip: the query photo, then its neighbours with their scores.

    Args:
        query: encoded bytes of the query photo.
        neighbours: list of ``(encoded bytes or None, caption)``, nearest
            first.
        path: the PNG written.
        tile: side of each square tile in pixels.
    """
    import io

    from PIL import Image, ImageDraw, ImageOps

    def thumb(encoded):
        canvas = Image.new("RGB", (tile, tile), (235, 235, 235))
        if encoded is not None:
            image = ImageOps.contain(
                Image.open(io.BytesIO(encoded)).convert("RGB"), (tile, tile))
            canvas.paste(image, ((tile - image.width) // 2,
                                 (tile - image.height) // 2))
        return canvas

    caption_h, gap = 28, 8
    tiles = [(query, "query")] + list(neighbours)
    strip = Image.new("RGB", (len(tiles) * (tile + gap) + gap,
                              tile + caption_h + 2 * gap), "white")
    draw = ImageDraw.Draw(strip)
    for k, (encoded, caption) in enumerate(tiles):
        x = gap + k * (tile + gap)
        strip.paste(thumb(encoded), (x, gap))
        for j, line in enumerate(str(caption).split("\n")[:2]):
            draw.text((x, gap + tile + 2 + 12 * j), line[:22], fill="black")
        if k == 0:
            draw.rectangle([x - 2, gap - 2, x + tile + 1, gap + tile + 1],
                           outline=(200, 30, 30), width=2)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with fileio.replacing(path, ".png") as tmp:
        strip.save(tmp, format="PNG")
    return path
