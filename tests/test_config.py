import pytest

from dfcl.config import RENAMED, ConfigError, apply_overrides, flatten, load_params

BASE = {"train": {"epochs": 5, "lr": 0.001, "device": "auto"}, "data": {"real_names": ["real"]}}


def test_overrides_are_parsed_as_yaml_values():
    p = apply_overrides(BASE, ["train.epochs=1", "train.lr=1e-2", "data.real_names=[a, b]", "train.device=cpu"])
    assert p["train"] == {"epochs": 1, "lr": 0.01, "device": "cpu"}
    assert p["data"]["real_names"] == ["a", "b"]
    assert BASE["train"]["epochs"] == 5, "overrides must not mutate the defaults"


@pytest.mark.parametrize("bad, message", [
    ("train.epoch=1", "unknown parameter 'train.epoch'"),
    ("nope.x=1", "unknown parameter section 'nope'"),
    ("train.epochs", "not key=value"),
])
def test_bad_overrides_say_what_is_wrong(bad, message):
    with pytest.raises(ConfigError, match=message):
        apply_overrides(BASE, [bad])


def test_flatten_joins_keys_with_dots():
    assert flatten(BASE)["train.lr"] == 0.001


@pytest.mark.parametrize("bad, message", [
    ("train.epochs=abc", "train.epochs='abc' is str, but train.epochs takes int"),
    ("train.epochs=1.5", "takes int"),
    ("train.class_balance=1", "takes bool"),
    ("data.real_names=real", "takes list"),
])
def test_an_override_of_the_wrong_type_is_one_line(bad, message):
    with pytest.raises(ConfigError, match=message):
        load_params(None, [bad])


def test_an_int_where_a_float_is_expected_is_a_float_and_nullable_keys_take_a_value():
    p = load_params(None, ["train.lr=1", "model.weights=/w.pth"])
    assert p.train.lr == 1.0 and isinstance(p.train.lr, float) and p.model.weights == "/w.pth"


@pytest.mark.parametrize("old, new", sorted(RENAMED.items()))
def test_an_old_flat_strategy_key_names_its_new_place(old, new):
    with pytest.raises(ConfigError, match=f"{old} is now {new}"):
        load_params(None, [f"{old}=1"])
    load_params(None, [f"{new}={_value_at(load_params(None), new)}"])  # the new key exists


def test_every_strategy_has_its_settings_section_and_nothing_else():
    from dfcl.learning.strategies import STRATEGIES

    assert set(load_params(None).strategy.names()) == set(STRATEGIES)


def _value_at(params, key: str):
    for part in key.split("."):
        params = getattr(params, part)
    return params


def test_a_typo_in_the_workspace_params_file_is_refused_with_the_near_name(tmp_path):
    (tmp_path / "params.yaml").write_text("gate:\n  max_forgeting: 0.5\n")
    with pytest.raises(ConfigError, match=r"params.yaml: unknown parameter 'gate.max_forgeting' "
                                          r"\(did you mean 'gate.max_forgetting'\?\)"):
        load_params(tmp_path / "params.yaml")
    (tmp_path / "params.yaml").write_text("gtae:\n  metric: auc\n")
    with pytest.raises(ConfigError, match=r"unknown parameter 'gtae' \(did you mean 'gate'\?\)"):
        load_params(tmp_path / "params.yaml")
    with pytest.raises(ConfigError, match=r"did you mean 'gate.max_forgetting'"):
        load_params(None, ["gate.max_forgeting=0.5"])


@pytest.mark.parametrize("text, message", [
    ("train:\n  epochs: three\n", "train.epochs='three' is str, but train.epochs takes int"),
    ("train:\n  epochs:\n", "train.epochs cannot be empty"),
    ("train: 3\n", "train is a section"),
    ("api:\n  max_concurrent: 0\n", "api.max_concurrent=0 is out of range: it must be at least 1"),
])
def test_the_workspace_params_file_gets_the_checks_of_an_override(tmp_path, text, message):
    (tmp_path / "params.yaml").write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_params(tmp_path / "params.yaml")


@pytest.mark.parametrize("override, message", [
    ("train.epochs=", "train.epochs cannot be empty \\(null\\): it takes int"),
    ("gate.metric=", "gate.metric cannot be empty"),
    ("api.max_concurrent=0", "api.max_concurrent=0 is out of range: it must be at least 1"),
    ("gate.confidence=1.5", "between 0 and 1"),
    ("augment.flip_p=2", "augment.flip_p=2.0 is out of range: it must be from 0 to 1"),
    ("gate.metric=AUC", "gate.metric='AUC': choose one of auc, balanced_accuracy"),
    ("gate=1", "gate is a section"),
])
def test_an_empty_override_is_not_null_and_values_keep_their_range(override, message):
    with pytest.raises(ConfigError, match=message):
        load_params(None, [override])
    assert load_params(None, ["model.weights=", "api.max_concurrent=1"]).model.weights is None, \
        "a key whose default is null may be emptied"


def test_checking_params_loads_neither_torch_nor_avalanche():
    """The light checks (every value, choice and strategy name) run before the stack is imported."""
    import subprocess
    import sys

    code = ("import sys; from dfcl.config import load_params; load_params(None, ['strategy.name=dfil']); "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'avalanche', 'prefect', 'mlflow'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"


def test_an_unknown_strategy_name_is_refused_with_the_known_ones():
    with pytest.raises(ConfigError, match="unknown strategy.name 'magic'; choose one of naive, .*dfil"):
        load_params(None, ["strategy.name=magic"])


def test_params_are_typed_sections_and_a_set_value_is_checked_too():
    from pydantic import ValidationError

    p = load_params(None)
    assert isinstance(p.gate.confidence, float) and p.strategy.settings("replay") == {"mem_size": p.strategy.replay.mem_size}
    with pytest.raises(ValidationError):
        p.train.epochs = "three"
    assert p.replaced(faces={"margin": 1.1}).faces.margin == 1.1 and p.faces.margin != 1.1
    with pytest.raises(ConfigError, match="faces.margin=0.0 is out of range: it must be above 0"):
        p.replaced(faces={"margin": 0.0})
