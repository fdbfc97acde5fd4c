"""Street-to-shop retrieval: search against brute force, the protocol, CLI."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from mtct_tf import retrieval, retrieve
from mtct_tf.data import pipeline

from conftest import TINY_SCHEMA


def _brute_force_topk(queries, gallery, k):
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    g = gallery / np.linalg.norm(gallery, axis=1, keepdims=True)
    out = []
    for row in q:
        scores = [float(np.dot(row, x)) for x in g]
        # Highest score first, then the lower index.
        out.append(sorted(range(len(g)), key=lambda j: (-scores[j], j))[:k])
    return np.array(out)


def test_exact_search_matches_brute_force_and_batching():
    rng = np.random.default_rng(0)
    gallery = rng.normal(size=(50, 8)).astype("float32")
    gallery[7] = gallery[3] * 2.0  # Same direction: a tie, lower index first.
    queries = rng.normal(size=(13, 8)).astype("float32")
    queries[0] = gallery[3]
    want = _brute_force_topk(queries, gallery, 5)
    for batch in (1, 4, 1024):
        got, scores = retrieval.ExactSearch(gallery, batch_size=batch).search(
            queries, 5)
        np.testing.assert_array_equal(got, want)
        assert np.all(np.diff(scores, axis=1) <= 1e-6)
    assert list(got[0][:2]) == [3, 7]
    np.testing.assert_allclose(scores[0][:2], [1.0, 1.0], rtol=1e-5)


def test_topk_accuracy_against_a_loop():
    rng = np.random.default_rng(1)
    items = np.array([f"i{k}" for k in rng.integers(0, 6, size=(30, 20))])
    queries = np.array([f"i{k}" for k in rng.integers(0, 6, size=30)])
    got = retrieval.topk_accuracy(items, queries, ks=(1, 5, 20))
    for k in (1, 5, 20):
        hits = [q in list(row[:k]) for row, q in zip(items, queries)]
        assert got[str(k)] == pytest.approx(np.mean(hits))
    assert got["1"] <= got["5"] <= got["20"]


def test_scann_recall_against_exact():
    pytest.importorskip("scann")
    rng = np.random.default_rng(2)
    centres = rng.normal(size=(40, 32))
    gallery = (centres[rng.integers(0, 40, 4000)]
               + 0.3 * rng.normal(size=(4000, 32))).astype("float32")
    queries = (gallery[:200] + 0.05 * rng.normal(size=(200, 32))).astype(
        "float32")
    exact, _ = retrieval.ExactSearch(gallery).search(queries, 10)
    approx, _ = retrieval.ScannSearch(gallery, k=10).search(queries, 10)
    recall = retrieval.search_recall(approx, exact)
    assert recall > 0.9, recall
    # A random "index" would find ~10 / 4000 of them: the check can fail.
    shuffled = rng.permutation(exact.ravel()).reshape(exact.shape)
    assert retrieval.search_recall(shuffled, exact) < 0.1


def test_gallery_round_trip_and_errors(tmp_path):
    g = retrieval.Gallery(np.array([[3.0, 4.0], [0.0, 2.0]]), ["a", "b"],
                          ["x", "y"], {"model": "m"})
    np.testing.assert_allclose(g.embeddings, [[0.6, 0.8], [0.0, 1.0]])
    path = g.save(str(tmp_path / "sub" / "g.npz"))
    assert os.listdir(tmp_path / "sub") == ["g.npz"]
    back = retrieval.Gallery.load(path)
    np.testing.assert_array_equal(back.embeddings, g.embeddings)
    assert list(back.ids) == ["a", "b"] and back.info == {"model": "m"}
    with pytest.raises(FileNotFoundError, match="no such gallery"):
        retrieval.Gallery.load(str(tmp_path / "none.npz"))
    np.savez(tmp_path / "other.npz", x=np.zeros(2))
    with pytest.raises(ValueError, match="missing"):
        retrieval.Gallery.load(str(tmp_path / "other.npz"))
    with pytest.raises(ValueError, match="one id and one item"):
        retrieval.Gallery(np.zeros((2, 2)), ["a"], ["x", "y"])


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_shards):
    """A tiny MTN, its SavedModel and its .keras file (with the schema)."""
    import keras

    from mtct_tf import export_lib
    from mtct_tf import model as model_lib

    keras.utils.set_random_seed(0)
    net = model_lib.MTN(TINY_SCHEMA, preset="tiny", image_size=32)
    base = tmp_path_factory.mktemp("retrieval")
    version = export_lib.export_saved_model(net, TINY_SCHEMA, str(base))
    keras_path = str(base / "net" / "model.keras")
    export_lib.export_keras(net, keras_path)
    TINY_SCHEMA.save(str(base / "net" / "schema.json"))
    return net, version, keras_path


def test_evaluate_retrieval_matches_an_independent_computation(
        tiny_shards, exported):
    _, shards, _ = tiny_shards
    net, version, keras_path = exported
    got = {}
    for model in (version, keras_path):
        embedder = retrieval.load_embedder(model)
        got[model] = retrieval.evaluate_retrieval(
            embedder, shards, split="train", ks=(1, 2, 4), progress=False)
    assert got[version]["topk_accuracy"] == pytest.approx(
        got[keras_path]["topk_accuracy"])
    result = got[keras_path]
    assert result["num_queries"] == 4 and result["num_gallery_items"] == 4

    # Independently: embed the crops with the Keras net, rank by cosine.
    def embed(domain):
        ds = pipeline.make_dataset(
            pipeline.shard_files(shards, "train"), TINY_SCHEMA, image_size=32,
            batch_size=8, training=False, domain=domain, margin=0.1,
            repeat=False, with_meta=True)
        images, _, meta = next(iter(ds))
        e = np.asarray(net.predict_on_batch(images)["embedding"])
        return e, [v.decode() for v in meta["item_id"].numpy()]

    shop, shop_items = embed("shop")
    street, street_items = embed("street")
    order = _brute_force_topk(street, shop, 4)
    for k in (1, 2, 4):
        hits = [q in [shop_items[j] for j in row[:k]]
                for row, q in zip(order, street_items)]
        assert result["topk_accuracy"][str(k)] == pytest.approx(
            np.mean(hits))
    assert result["topk_accuracy"]["4"] == 1.0


def test_cli_index_query_and_strip(tiny_shards, exported, tmp_path, capsys):
    dataset, shards, _ = tiny_shards
    _, version, _ = exported
    gallery = str(tmp_path / "g.npz")
    assert retrieve.main(["index", "--model", version, "--shards", shards,
                          "--split", "train", "--out", gallery]) == 0
    assert "4 images of 4 items" in capsys.readouterr().out
    line = next(d for d in dataset.lines if d["id"] == "it02-street")
    photo = os.path.join(dataset.root, line["path"])
    strip = str(tmp_path / "strip.png")
    assert retrieve.main(["query", "--model", version, "--gallery", gallery,
                          photo, "--top_k", "3", "--out", strip]) == 0
    out = capsys.readouterr().out
    answer = json.loads(out[:out.rindex("]") + 1])
    top = answer[0]["top"]
    assert len(top) == 3 and answer[0]["photo"] == photo
    assert top[0]["score"] >= top[1]["score"] >= top[2]["score"]
    with Image.open(strip) as image:
        # Query + 3 neighbours, each a 128 px tile with an 8 px gap.
        assert image.size == (4 * 136 + 8, 128 + 28 + 16)
        # The neighbours were read back from the shards: not blank tiles.
        tile = np.asarray(image.convert("RGB"))[8:136, 8 + 136:136 + 136]
        assert tile.std() > 5


def test_retrieval_benchmark_report(tmp_path):
    from mtct_tf import benchmark, fileio

    out = str(tmp_path / "r.md")
    # The speed report's text around it is kept.
    fileio.write_text(out, "# Speed\n\nnumbers\n")
    assert benchmark.main(["retrieval", "--out", out, "--sizes", "2000",
                           "--dim", "16"]) == 0
    text = open(out).read()
    assert "| 2,000 | 16 |" in text
    row = next(line for line in text.splitlines()
               if line.startswith("| 2,000"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert float(cells[2]) > 0  # Exact queries/s.
    if cells[3] != "n/a":
        assert 0.5 < float(cells[5]) <= 1.0  # ScaNN recall.
    assert text.startswith("# Speed\n\nnumbers\n\n<!-- begin retrieval -->")


def test_marked_sections_survive_a_regenerated_report(tmp_path):
    from mtct_tf import fileio

    path = str(tmp_path / "B.md")
    fileio.write_section(path, "retrieval", "## R\n\nold")
    fileio.write_text(path, fileio.keep_sections("# Speed v2\n", path))
    fileio.write_section(path, "retrieval", "## R\n\nnew")
    fileio.write_section(path, "other", "## O")
    text = open(path).read()
    assert text == ("# Speed v2\n\n<!-- begin retrieval -->\n## R\n\nnew\n"
                    "<!-- end retrieval -->\n\n<!-- begin other -->\n## O\n"
                    "<!-- end other -->\n")
    assert list(fileio.sections(text)) == ["retrieval", "other"]


def test_a_section_after_the_title_stays_there_when_regenerated(tmp_path):
    from mtct_tf import fileio

    path = str(tmp_path / "R.md")
    fileio.write_text(path, "# Results\n\nold intro\n\n## Tables\n\nold\n")
    fileio.write_section(path, "summary", "## Summary\n\ns1",
                         after_title=True)
    fileio.write_section(path, "late", "## Late\n\nl1")
    text = open(path).read()
    assert text.startswith("# Results\n\n<!-- begin summary -->\n## Summary")
    assert text.rstrip().endswith("<!-- end late -->")
    regenerated = fileio.keep_sections(
        "# Results v2\n\nnew intro\n\n## Tables\n\nnew\n", path)
    assert regenerated.startswith(
        "# Results v2\n\n<!-- begin summary -->\n## Summary\n\ns1\n"
        "<!-- end summary -->\n\nnew intro")
    assert regenerated.rstrip().endswith("<!-- end late -->")


def test_cli_evaluate_embeds_the_gallery_with_another_stage(
        tiny_shards, tmp_path, capsys):
    from mtct_tf import configs, evaluation, training

    _, shards, _ = tiny_shards
    config = configs.build("smoke", None, [
        "method=ftt", f"data.shards_dir={shards}",
        f"data.street_shards_dir={shards}", "model.preset=tiny",
        "data.image_size=16", "data.batch_size=2", "data.shuffle_buffer=4",
        "shop.epochs=1", "shop.steps_per_epoch=1", "shop.validation_steps=1",
        "street.epochs=1", "street.steps_per_epoch=1",
        "street.validation_steps=1"])
    run = str(tmp_path / "run")
    training.run(config, run, verbose=0)
    want = evaluation.evaluate(run, split="train")
    for stage, key in ((None, "retrieval"),
                       ("shop", "retrieval_shop_gallery")):
        args = ["evaluate", "--model", run, "--shards", shards,
                "--split", "train"]
        assert retrieve.main(args + (["--gallery_stage", stage]
                                     if stage else [])) == 0
        capsys.readouterr()
        got = json.load(open(os.path.join(run, "eval",
                                          "retrieval_train.json")))
        assert got["topk_accuracy"] == pytest.approx(
            want[key]["topk_accuracy"]), stage
        assert got["query_model"] == run
        assert got["gallery_model"] == (f"{run}@shop" if stage else run)


@pytest.mark.parametrize("overrides, stage", [
    (["method=mtct"], "shop"),
    (["method=mtct", "street.finetune=all"], "shop"),
    (["method=mtct", "street.cross_domain.kind=coral"], "street"),
    (["method=ftt"], "street"),
    (["method=ud"], "united"),
    (["method=no_adapt"], "shop"),
])
def test_which_network_embeds_a_runs_gallery(overrides, stage):
    from mtct_tf import configs

    config = configs.build("smoke", None, overrides)
    assert retrieval.gallery_stage(config) == stage
