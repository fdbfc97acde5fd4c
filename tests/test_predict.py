"""predict: the library (run dir / .keras / SavedModel) and the CLI."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from test_export import (
    FAKE_BOXES,
    SCHEMA,
    TOL,
    encode,
    fake_detector,
    keras_reference,
    make_image,
    make_net,
)

from mtct_tf import attributes, configs, export_lib, predict, predicting, runs


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A .keras model with schema.json beside it, a photo, a detector."""
    root = tmp_path_factory.mktemp("predict")
    net = make_net(seed=2)
    keras_path = export_lib.export_keras(net, str(root / "m.keras"))
    SCHEMA.save(str(root / "schema.json"))
    photo = root / "street.png"
    photo.write_bytes(encode(make_image(60, 40, seed=7)))
    det = fake_detector(str(root / "det"))
    return net, keras_path, str(photo), det, root


def test_keras_file_top_k_matches_the_model(setup):
    net, keras_path, photo, _, _ = setup
    predictor = predicting.load_predictor(keras_path)
    assert predictor.schema == SCHEMA and not predictor.with_detector
    pred = predictor.predict_file(photo, top_k=2)
    _, ref = keras_reference(net, [open(photo, "rb").read()])
    for a in SCHEMA:
        probs = ref[a.name][0]
        order = np.argsort(-probs)[:2]
        assert [v for v, _ in pred.top[a.name]] == [a.values[k]
                                                    for k in order]
        np.testing.assert_allclose([p for _, p in pred.top[a.name]],
                                   probs[order], atol=TOL)
    assert pred.box is None


def test_run_directory_uses_the_last_stage_and_the_run_schema(setup, tmp_path):
    net, keras_path, photo, _, root = setup
    config = configs.get_experiment("smoke")
    config.method = "ftt"  # Stages shop, street: street is the last.
    config.schema = str(root / "schema.json")
    config.data.margin = 0.2
    configs.save(config, str(tmp_path / "config.yaml"))
    os.makedirs(tmp_path / "street")
    export_lib.export_keras(net, str(tmp_path / "street" / "model.keras"))
    net2, schema, margin = runs.load_model_and_schema(str(tmp_path))
    assert schema == SCHEMA and margin == 0.2
    a = predicting.load_predictor(str(tmp_path)).predict_file(photo)
    b = predicting.load_predictor(keras_path).predict_file(photo)
    assert a.top == b.top
    with pytest.raises(FileNotFoundError, match="shop"):
        runs.load_model_and_schema(str(tmp_path), stage="shop")


def test_keras_with_detector_equals_the_exported_saved_model(setup):
    net, keras_path, photo, det, root = setup
    in_memory = predicting.load_predictor(keras_path, detector=det,
                                          margin=0.1)
    a = in_memory.predict_file(photo, top_k=3)
    assert a.detected and a.score == pytest.approx(0.9)
    np.testing.assert_allclose(a.box, FAKE_BOXES[0], atol=1e-5)
    np.testing.assert_allclose(a.box_pixels,
                               np.array(FAKE_BOXES[0]) * [60, 40, 60, 40],
                               atol=1e-4)
    _, ref = keras_reference(net, [open(photo, "rb").read()],
                             [FAKE_BOXES[0]], margin=0.1)
    top = dict(a.top["colour"])
    for k, v in enumerate(SCHEMA["colour"].values):
        assert top[v] == pytest.approx(float(ref["colour"][0, k]), abs=TOL)

    version_dir = export_lib.export_saved_model(
        net, SCHEMA, str(root / "serving"), margin=0.1, detector=det)
    # The model directory resolves to its newest version.
    served = predicting.load_predictor(str(root / "serving" / "mtct"))
    assert served.source == version_dir and served.with_detector
    b = served.predict_file(photo, top_k=3)
    assert [v for v, _ in b.top["colour"]] == [v for v, _ in a.top["colour"]]
    np.testing.assert_allclose(b.box, a.box, atol=1e-6)
    for name in a.top:
        np.testing.assert_allclose([p for _, p in b.top[name]],
                                   [p for _, p in a.top[name]], atol=TOL)
    with pytest.raises(ValueError, match="already has a detector"):
        predicting.load_predictor(version_dir, detector=det)


def test_cli_prints_top_values_and_writes_an_annotated_png(
        setup, tmp_path, capsys):
    net, keras_path, photo, det, _ = setup
    out = str(tmp_path / "annotated.png")
    code = predict.main([photo, "--model", keras_path, "--detector", det,
                         "--margin", "0.1", "--top_k", "2", "--out", out])
    assert code == 0
    text = capsys.readouterr().out
    pred = predicting.load_predictor(
        keras_path, detector=det, margin=0.1).predict_file(photo, top_k=2)
    assert predicting.format_prediction(photo, pred) in text
    lines = text.splitlines()
    colour = next(s for s in lines if s.strip().startswith("colour"))
    (v1, p1), (v2, p2) = pred.top["colour"]
    assert colour.split()[1:] == [v1, f"{p1:.3f}", v2, f"{p2:.3f}"]
    assert "score 0.900" in text and f"wrote {out}" in text

    # The PNG: the photo scaled x7 (60 px -> 420 >= 384), the box in red
    # at the detector's box, a white text panel on the right.
    with Image.open(out) as im:
        assert im.format == "PNG"
        image = np.asarray(im.convert("RGB"))
    scale = 7
    assert image.shape[0] == 60 * scale and image.shape[1] > 40 * scale
    ymin, xmin, ymax, xmax = (np.array(FAKE_BOXES[0]) * [60, 40, 60, 40]
                              * scale).round().astype(int)
    edge = image[(ymin + ymax) // 2, xmin]
    np.testing.assert_array_equal(edge, predicting.BOX_COLOUR)
    np.testing.assert_array_equal(image[ymin, (xmin + xmax) // 2],
                                  predicting.BOX_COLOUR)
    centre = image[(ymin + ymax) // 2, (xmin + xmax) // 2]
    assert tuple(centre) != predicting.BOX_COLOUR
    panel = image[:, 40 * scale + 2:]
    assert (panel == 0).all(axis=-1).any()  # Black text...
    assert (panel == 255).all(axis=-1).mean() > 0.5  # ...on white.


def test_cli_errors_name_the_photo(setup, tmp_path, capsys):
    _, keras_path, _, _, _ = setup
    missing = str(tmp_path / "nope.jpg")
    assert predict.main([missing, "--model", keras_path]) == 2
    err = capsys.readouterr().err
    assert missing in err and "no such photo" in err
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    assert predict.main([str(bad), "--model", keras_path]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "cannot decode" in err
    # A model path that does not exist is named too.
    assert predict.main([str(bad), "--model", str(tmp_path / "m")]) == 2
    assert str(tmp_path / "m") in capsys.readouterr().err


def test_a_keras_file_without_schema_asks_for_one(setup, tmp_path):
    net = setup[0]
    path = export_lib.export_keras(net, str(tmp_path / "alone.keras"))
    with pytest.raises(ValueError, match="schema"):
        predicting.load_predictor(path)
    assert predicting.load_predictor(
        path, schema=str(setup[4] / "schema.json")).schema == SCHEMA


def test_a_schema_with_other_value_names_is_refused_naming_the_attribute(
        setup, tmp_path, capsys):
    """Heads of the same sizes, values in another order: export and
    predict would serve wrong labels, so both refuse, naming the
    attribute."""
    net, keras_path, photo, _, root = setup
    first = SCHEMA.attributes[0]
    values = tuple(reversed(first.values))
    other = attributes.AttributeSchema(
        "reordered", [attributes.Attribute(first.name, values, first.kind),
                      *SCHEMA.attributes[1:]])
    assert other.num_values == SCHEMA.num_values
    other_path = str(tmp_path / "other.json")
    other.save(other_path)
    want = (f"attribute {first.name!r}: values {first.values} in the model, "
            f"{values} in the data")
    with pytest.raises(ValueError, match=re.escape(want)):
        runs.load_model_and_schema(keras_path, schema=other_path)
    with pytest.raises(ValueError, match=re.escape(want)):
        predicting.load_predictor(keras_path, schema=other_path)
    assert predict.main([photo, "--model", keras_path, "--schema",
                         other_path]) == 2
    assert want in capsys.readouterr().err
    script = os.path.join(os.path.dirname(__file__), os.pardir, "export",
                          "export_saved_model.py")
    proc = subprocess.run(
        [sys.executable, script, "--model", keras_path, "--schema",
         other_path, "--export_dir", str(tmp_path / "serving")],
        capture_output=True, text=True, timeout=600,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert want in proc.stderr
    assert not os.path.exists(tmp_path / "serving" / "mtct" / "1")
    # The schema it was trained with is accepted.
    assert runs.load_model_and_schema(
        keras_path, schema=str(root / "schema.json"))[1] == SCHEMA


def test_manifest_annotation_beside_the_prediction(setup, tmp_path, capsys):
    """--manifest --pick test/street: the first street test line's photo,
    each attribute's annotated value and whether the top-1 is right, the
    annotated box drawn in green beside the detector's red one."""
    net, keras_path, photo, det, root = setup
    pred = predicting.load_predictor(
        keras_path, detector=det, margin=0.1).predict_file(photo, top_k=1)
    colour_top = pred.top["colour"][0][0]
    # The second call predicts on the whole photo (no detector): its own top-1.
    whole_top = predicting.load_predictor(keras_path).predict_file(
        photo, top_k=1).top["colour"][0][0]
    wrong = next(v for v in SCHEMA["colour"].values if v != whole_top)
    data = tmp_path / "data"
    (data / "img").mkdir(parents=True)
    for name in ("train.png", "first.png", "second.png"):
        (data / "img" / name).write_bytes(open(photo, "rb").read())
    lines = [
        {"id": "a", "path": "img/train.png", "domain": "street",
         "item_id": "a", "split": "train", "attributes": {}},
        {"id": "b", "path": "img/first.png", "domain": "street",
         "item_id": "b", "split": "test", "bbox": [4, 6, 30, 50],
         "attributes": {"colour": colour_top, "sleeve": None}},
        {"id": "c", "path": "img/second.png", "domain": "street",
         "item_id": "c", "split": "test",
         "attributes": {"colour": wrong}},
    ]
    manifest = tmp_path / "data" / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(x) + "\n" for x in lines))
    out = str(tmp_path / "a.png")
    code = predict.main(["--manifest", str(manifest), "--pick",
                         "test/street", "--model", keras_path, "--detector",
                         det, "--margin", "0.1", "--out", out])
    assert code == 0
    text = capsys.readouterr().out
    assert "first.png" in text and "manifest.jsonl, line 2" in text
    assert f"[annotated {colour_top}: right]" in text
    assert "sleeve" in text and "[not annotated]" in text
    assert "top-1 right for 1 of 1 annotated attributes" in text
    assert "annotated box (ymin xmin ymax xmax) 6 4 50 30 px; IoU" in text
    with Image.open(out) as im:
        image = np.asarray(im.convert("RGB"))
    scale = 7
    np.testing.assert_array_equal(image[28 * scale, 4 * scale],
                                  predicting.ANNOTATED_COLOUR)
    # A photo named directly is found by its file; a wrong top-1 says so.
    code = predict.main([str(data / "img" / "second.png"), "--manifest",
                         str(manifest), "--model", keras_path])
    assert code == 0
    assert f"[annotated {wrong}: wrong]" in capsys.readouterr().out
    # No such split / photo: an error naming the manifest.
    assert predict.main(["--manifest", str(manifest), "--pick", "val/shop",
                         "--model", keras_path]) == 2
    assert "has no shop photo in split 'val'" in capsys.readouterr().err
    assert predict.main([photo, "--manifest", str(manifest), "--model",
                         keras_path]) == 2
    assert "names " + photo in capsys.readouterr().err
