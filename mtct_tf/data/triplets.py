"""Cross-domain triplets for the street stage, built from the ordinary shards.

Each element is a street image (anchor, with its labels), a shop image of
the same item (positive) and a shop image of another item (negative; with
``negatives="hard"`` one of the same garment category when there is one).

Small street-label experiments (``label_fraction < 1``) keep *every* street
image as an anchor and hide the labels of the items outside the fraction
(-1, missing): a street photo linked to its shop item is cheap, its
attribute labels are dear, so unlabelled anchors still give the
cross-domain term while the cross-entropy sees only the labelled items.

Street anchors stream from their shards like any other data. Positives and
negatives are looked up by item in a table of the split's *encoded* shop
images, built by one streaming pass over the shop records: memory grows
with the number of shop images of the split (their JPEG bytes, ~5 KB each at
128 px), not with the street data. Convert with ``--resize`` to bound it on
large datasets.
"""

import numpy as np
import tensorflow as tf

from mtct_tf.data import pipeline
from mtct_tf.data.example import parse_example


class ShopTable:
    """The split's shop images, one per item (the first one seen).

    Attributes:
        item_ids: list of item ids (str), index = item index.
        encoded: list of encoded image bytes.
        bboxes: float32 [N, 4] normalised (ymin, xmin, ymax, xmax).
        labels: dict attribute -> int32 [N] (-1 missing).
    """

    def __init__(self, files, schema):
        ds = tf.data.TFRecordDataset(files).map(
            lambda s: parse_example(s, schema),
            num_parallel_calls=tf.data.AUTOTUNE,
        ).filter(lambda e: tf.equal(e["domain"], "shop"))
        self.item_ids, self.encoded, boxes = [], [], []
        labels = {a: [] for a in schema.names}
        seen = set()
        for e in ds.as_numpy_iterator():
            item = e["item_id"].decode()
            if item in seen:
                continue
            seen.add(item)
            self.item_ids.append(item)
            self.encoded.append(e["encoded"])
            boxes.append(e["bbox"])
            for a in schema.names:
                labels[a].append(e["labels"][a])
        if not self.item_ids:
            raise ValueError(
                f"no shop record in {files}: the street stage pairs street "
                "images with shop images of the same item"
            )
        self.bboxes = np.asarray(boxes, np.float32)
        self.labels = {a: np.asarray(v, np.int32) for a, v in labels.items()}

    def __len__(self):
        return len(self.item_ids)

    def hard_candidates(self, attribute="category"):
        """Ragged [N, ?]: other items sharing the item's ``attribute`` value.

        Items with a missing value, or alone in their value, get every other
        item (a random negative).
        """
        n = len(self)
        codes = self.labels.get(attribute, np.full(n, -1, np.int32))
        rows = []
        for i in range(n):
            same = np.flatnonzero((codes == codes[i]) & (np.arange(n) != i))
            if codes[i] < 0 or not len(same):
                same = np.delete(np.arange(n), i)
            rows.append(same)
        return tf.ragged.constant(rows, dtype=tf.int32)


def make_triplet_dataset(street_files, shop_files, schema, *, image_size,
                         batch_size, training, negatives="random", margin=0.1,
                         label_fraction=1.0, seed=None, repeat=None,
                         shuffle_buffer=2048, drop_remainder=None,
                         keep_unlabelled=True, augment=pipeline.BOX,
                         min_area=pipeline.CROP_MIN_AREA):
    """Batches of ``({"image", "positive", "negative"}, {"street", "shop"})``.

    Args:
        street_files: shard files holding the street records (anchors).
        shop_files: shard files holding the shop records of the same split.
        schema: the ``AttributeSchema``.
        image_size: output height and width.
        batch_size: triplets per batch.
        training: shuffle, augment and repeat.
        negatives: ``"random"`` or ``"hard"`` (same garment category).
        margin: context kept around boxes (see ``pipeline.preprocess``).
        label_fraction: the street labels of only this fraction of items
            are kept (small-data experiments; the items are chosen by
            ``pipeline.item_kept``, so the subsets are nested).
        keep_unlabelled: ``True``: the street images of the other items
            stay as anchors with every label missing (-1); ``False``: they
            are dropped, as ``pipeline.make_dataset`` drops them.
        seed: shuffling and negative sampling seed.
        repeat: repeat forever (default: ``training``).
        shuffle_buffer: street records held for shuffling.
        drop_remainder: default ``training``.
        augment, min_area: the training framing of every image
            (``pipeline.frame``).

    Returns:
        A ``tf.data.Dataset``. Street records whose item has no shop image
        are dropped.
    """
    if negatives not in ("random", "hard"):
        raise ValueError(
            "`negatives` must be 'random' or 'hard'. "
            f"Received: negatives={negatives!r}"
        )
    table = ShopTable(shop_files, schema)
    n_items = len(table)
    if n_items < 2:
        raise ValueError(
            f"need shop images of at least 2 items for negatives; {shop_files} "
            f"has {n_items}"
        )
    lookup = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(
            tf.constant(table.item_ids), tf.range(n_items, dtype=tf.int32)
        ),
        default_value=-1,
    )
    encoded = tf.constant(table.encoded)
    bboxes = tf.constant(table.bboxes)
    shop_labels = {a: tf.constant(v) for a, v in table.labels.items()}
    hard = table.hard_candidates() if negatives == "hard" else None
    repeat = training if repeat is None else repeat
    drop_remainder = training if drop_remainder is None else drop_remainder

    streets = pipeline.make_dataset(
        street_files, schema, image_size=image_size, batch_size=1,
        training=training, domain="street", margin=margin,
        shuffle_buffer=shuffle_buffer, seed=seed, repeat=repeat,
        with_meta=True, drop_remainder=False,
        label_fraction=1.0 if keep_unlabelled else label_fraction,
        augment=augment, min_area=min_area,
    ).unbatch()
    hide = keep_unlabelled and label_fraction < 1.0

    def pair(image, labels, meta):
        pos = lookup.lookup(meta["item_id"])
        if hide:
            kept = pipeline.item_kept(meta["item_id"], label_fraction)
            labels = {a: tf.where(kept, v, -tf.ones_like(v))
                      for a, v in labels.items()}
        return image, labels, pos

    def add_shop(image, labels, pos):
        rng = tf.random.uniform([2], 0, 2**30, dtype=tf.int32)
        if hard is not None:
            candidates = hard[pos]
            neg = candidates[rng[0] % tf.shape(candidates)[0]]
        else:
            # Any other item: shift by 1..n-1 so it is never the positive.
            neg = (pos + 1 + rng[0] % (n_items - 1)) % n_items
        prep = dict(image_size=image_size, training=training, margin=margin,
                    augment=augment, min_area=min_area)
        x = {
            "image": image,
            "positive": pipeline.preprocess(
                encoded[pos], bboxes[pos], **prep),
            "negative": pipeline.preprocess(
                encoded[neg], bboxes[neg], **prep),
        }
        y = {"street": labels,
             "shop": {a: v[pos] for a, v in shop_labels.items()}}
        return x, y

    ds = streets.map(pair, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.filter(lambda image, labels, pos: pos >= 0)
    ds = ds.map(add_shop, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    return ds.prefetch(tf.data.AUTOTUNE)
