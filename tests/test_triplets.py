"""Triplets of the street stage: small-label runs keep every anchor."""

import pytest

from mtct_tf.data import pipeline
from mtct_tf.data import triplets

# item_kept (tests/test_pipeline.py pins it): at 0.25 the training items
# it00 and it01 keep their labels, it02 and it03 do not; at 0.5 it03 joins.
KEPT = {0.25: {0, 1}, 0.5: {0, 1, 3}, 1.0: {0, 1, 2, 3}}


def _anchors(shards, fraction, keep_unlabelled=True):
    """Item index -> street labels of each anchor of the train split."""
    files = pipeline.shard_files(shards, "train")
    schema = pipeline.load_schema(shards)
    ds = triplets.make_triplet_dataset(
        files, files, schema, image_size=8, batch_size=2, training=False,
        label_fraction=fraction, keep_unlabelled=keep_unlabelled)
    out = {}
    for x, y in ds:
        assert x["positive"].shape == x["image"].shape == (
            x["negative"].shape)
        # Each tiny item has its own shop colour: it names the item.
        for i, item in enumerate(y["shop"]["colour"].numpy()):
            out.setdefault(int(item), []).append(
                {a: int(v[i]) for a, v in y["street"].items()})
    return out


@pytest.mark.parametrize("fraction", [0.25, 0.5, 1.0])
def test_every_street_image_keeps_its_pair_labels_are_nested(tiny_shards,
                                                             fraction):
    dataset, shards, _ = tiny_shards
    full = _anchors(shards, 1.0)
    got = _anchors(shards, fraction)
    # Every street training image is an anchor at every fraction.
    assert sorted(got) == sorted(full) == [0, 1, 2, 3]
    assert {k: len(v) for k, v in got.items()} == {
        k: len(v) for k, v in full.items()}
    for item, rows in got.items():
        for row, ref in zip(rows, full[item]):
            if item in KEPT[fraction]:
                assert row == ref
            else:
                assert set(row.values()) == {-1}
    # The unmasked labels really are labels (the test can fail).
    assert any(v >= 0 for row in full[0] for v in row.values())


def test_dropping_unlabelled_anchors_is_still_possible(tiny_shards):
    _, shards, _ = tiny_shards
    got = _anchors(shards, 0.25, keep_unlabelled=False)
    assert sorted(got) == sorted(KEPT[0.25])


def test_label_copy_gives_street_images_their_shop_items_labels(tiny_shards):
    """The label-copy oracle: every street training image, labelled with
    its shop pair's labels (it02's street colour is missing, its shop
    colour is blue)."""
    from mtct_tf import configs, stages

    _, shards, _ = tiny_shards
    config = configs.build("ftt", None, [
        f"data.shards_dir={shards}", "data.street_labels=pair",
        "data.batch_size=2", "data.image_size=8"])
    schema = pipeline.load_schema(shards)
    records = stages._Records(config, schema, None)
    colours = []
    for image, labels in records.label_copy("train", training=False):
        assert image.shape[1:] == (8, 8, 3)
        assert set(labels) == {a.name for a in schema}
        colours += labels["colour"].numpy().tolist()
    # One street image per training item, each with its shop colour.
    assert sorted(colours) == [0, 1, 2, 3]


def test_label_copy_is_only_for_the_street_stage_without_triplets():
    from mtct_tf import configs

    with pytest.raises(configs.ConfigError, match="label-copy"):
        configs.build("mtct", None, ["data.street_labels=pair"])
    with pytest.raises(configs.ConfigError, match="street_labels"):
        configs.build("ftt", None, ["data.street_labels=shop"])
    configs.build("ftt", None, ["data.street_labels=pair"])
