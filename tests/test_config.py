import pytest

from dfcl.config import ConfigError, apply_overrides, flatten

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
