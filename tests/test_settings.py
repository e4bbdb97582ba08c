"""Settings machinery: unknown keys, type coercion, YAML recipes and --set overrides."""

from dataclasses import dataclass, field

import pytest

from alignment.settings import SettingsError, from_dict, load_yaml, parse_overrides, validate_range


@dataclass
class Demo:
    rate: float = field(default=0.1, metadata={"help": "a rate"})
    steps: int = field(default=3, metadata={"help": "steps"})
    flag: bool = field(default=False, metadata={"help": "flag"})
    name: str | None = field(default=None, metadata={"help": "name"})

    def __post_init__(self):
        validate_range("rate", self.rate, 0, 1)


def test_unknown_key_names_the_known_ones():
    with pytest.raises(SettingsError) as info:
        from_dict(Demo, {"rat": 0.2})
    assert "rat" in str(info.value) and "rate" in str(info.value)


def test_values_are_coerced_to_field_types():
    demo = from_dict(Demo, {"rate": "5e-1", "steps": "7", "flag": "yes", "name": None})
    assert demo.rate == 0.5 and demo.steps == 7 and demo.flag is True and demo.name is None


def test_validation_message_says_the_bound():
    with pytest.raises(SettingsError, match="rate is 2.0; it must be <= 1"):
        from_dict(Demo, {"rate": 2})


def test_yaml_recipe_with_overrides(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("rate: 0.25\nsteps: 2\n")
    demo = load_yaml(Demo, recipe, ["steps=9", "flag=true"])
    assert (demo.rate, demo.steps, demo.flag) == (0.25, 9, True)


def test_bad_override_and_bad_yaml(tmp_path):
    with pytest.raises(SettingsError, match="key=value"):
        parse_overrides(["steps"])
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("- just\n- a list\n")
    with pytest.raises(SettingsError, match="mapping"):
        load_yaml(Demo, recipe)
