"""Configs: registry, YAML and key=value overrides, unknown keys, round trip."""

import pytest

from mtct_tf import configs


def test_registry_has_the_named_experiments():
    names = configs.experiments()
    for name in ("demo", "synth_benchmark", "paper", "no_adapt", "ud",
                 "ftt", "end_to_end", "mtct"):
        assert name in names
    assert configs.get_experiment("ud").method == "ud"
    assert configs.get_experiment("paper").model.preset == "paper"


def test_overrides_from_yaml_then_command_line(tmp_path):
    f = tmp_path / "o.yaml"
    f.write_text("shop:\n  epochs: 7\ndata:\n  batch_size: 8\n")
    c = configs.build("smoke", str(f), ["shop.epochs=3",
                                       "street.cross_domain.alpha=2"])
    assert c.shop.epochs == 3 and c.data.batch_size == 8
    assert c.street.cross_domain.alpha == 2.0


def test_float_overrides_take_exponents_without_a_dot():
    # YAML 1.1 reads 2e-3 as a string; a learning rate must still parse.
    c = configs.build("smoke", None, ["shop.learning_rate=2e-3"])
    assert c.shop.learning_rate == pytest.approx(0.002)


@pytest.mark.parametrize("override, match", [
    ("shop.epoch=3", "unknown config key 'shop.epoch'"),
    ("nope=1", "unknown config key 'nope'"),
    ("shop.epochs=many", "shop.epochs expects a int"),
    ("shop.learning_rate=fast", "shop.learning_rate expects a float"),
    ("method=magic", "method must be one of"),
    ("noequals", "key=value"),
])
def test_bad_overrides_are_errors(override, match):
    with pytest.raises(configs.ConfigError, match=match):
        configs.build("smoke", None, [override])


def test_yaml_unknown_key_names_the_file(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("model:\n  depth: 50\n")
    with pytest.raises(configs.ConfigError, match="bad.yaml.*model.depth"):
        configs.build("smoke", str(f))


def test_yaml_is_loaded_safely(tmp_path):
    f = tmp_path / "evil.yaml"
    f.write_text("seed: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(configs.ConfigError, match="not valid YAML"):
        configs.build("smoke", str(f))


def test_saved_config_round_trips(tmp_path):
    c = configs.build("smoke", None, ["seed=5", "model.preset=tiny"])
    path = tmp_path / "config.yaml"
    configs.save(c, str(path))
    again = configs.from_dict(configs.load_yaml(str(path)))
    assert again == c


def test_attribute_weights_override_and_checks():
    c = configs.build("synth_benchmark", None,
                      ["attribute_weights={pattern: 4, button: 2.5}"])
    assert c.attribute_weights == {"pattern": 4, "button": 2.5}
    assert configs.build("smoke").attribute_weights == {}
    with pytest.raises(configs.ConfigError, match="numbers >= 0"):
        configs.build("smoke", None, ["attribute_weights={pattern: -1}"])
    with pytest.raises(configs.ConfigError, match="attribute_weights expects"):
        configs.build("smoke", None, ["attribute_weights=3"])
