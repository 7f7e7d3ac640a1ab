"""Overrides and recipe files read without YAML 1.1 surprises (issue 12): `no`, `off`, `yes`, `on` stay words
in string fields, and bool fields accept them by name."""

import dataclasses
import typing

import pytest

from distill.config import Config, TransferSetConfig, load_config, load_yaml
from distill.errors import UserError

YAML11_WORDS = ["no", "No", "NO", "off", "Off", "yes", "YES", "on", "On"]


def fields_of(cls, prefix=""):
    """(dotted key, field, type) for every leaf field of a config dataclass."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            yield from fields_of(hints[f.name], f"{prefix}{f.name}.")
        else:
            yield prefix + f.name, f, hints[f.name]


CHOICE_FIELDS = [(key, choice) for key, f, _ in fields_of(Config) if f.metadata.get("choices")
                 for choice in f.metadata["choices"]]


def get(cfg, key):
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def test_the_table_covers_every_string_choice_field():
    keys = {k for k, _ in CHOICE_FIELDS}
    assert {"train.mixed_precision", "teacher.dtype", "student.dtype", "loss.divergence", "crr.augment",
            "crr.teacher", "crr.cf_scope"} <= keys
    assert ("train.mixed_precision", "no") in CHOICE_FIELDS  # the README's advice that used to fail


@pytest.mark.parametrize("key, choice", CHOICE_FIELDS)
def test_every_choice_of_every_string_field_survives_an_override(key, choice):
    cfg = load_config("recipes/debug.yaml", [f"{key}={choice}"])
    assert get(cfg, key) == choice and isinstance(get(cfg, key), str)


@pytest.mark.parametrize("word", YAML11_WORDS)
def test_yaml11_bool_words_stay_strings_in_string_fields(word, tmp_path):
    cfg = load_config("recipes/debug.yaml", [f"description={word}", f"data.split={word}"])
    assert cfg.description == word and cfg.data.split == word
    # a choice field refuses a word that is not a choice, naming the choices (not "must be str, got False")
    if word == "no":
        assert load_config("recipes/debug.yaml", [f"train.mixed_precision={word}"]).train.mixed_precision == "no"
    else:
        with pytest.raises(UserError, match=rf"train.mixed_precision='{word}' is not one of: auto, no, bf16, fp16"):
            load_config("recipes/debug.yaml", [f"train.mixed_precision={word}"])
    # the recipe file itself reads the same way
    recipe = tmp_path / "r.yaml"
    recipe.write_text(open("recipes/debug.yaml").read().replace('mixed_precision: "no"', "mixed_precision: no"))
    assert load_config(recipe).train.mixed_precision == "no"


BOOL_KEYS = [key for key, _, hint in fields_of(Config) if hint is bool]
BOOL_WORDS = [("true", True), ("True", True), ("yes", True), ("on", True), ("YES", True),
              ("false", False), ("FALSE", False), ("no", False), ("off", False), ("Off", False)]


@pytest.mark.parametrize("key", BOOL_KEYS)
@pytest.mark.parametrize("word, value", BOOL_WORDS)
def test_bool_fields_accept_true_false_yes_no_on_off(key, word, value):
    assert get(load_config("recipes/debug.yaml", [f"{key}={word}"]), key) is value


@pytest.mark.parametrize("key", BOOL_KEYS)
def test_a_bool_field_refuses_other_words_with_the_accepted_ones(key):
    with pytest.raises(UserError, match=rf"'{key}' must be bool \(true/false, yes/no, on/off\), got 'maybe'"):
        load_config("recipes/debug.yaml", [f"{key}=maybe"])


def test_numbers_lists_and_null_still_parse_as_in_a_recipe_file():
    cfg = load_config("recipes/debug.yaml", ["train.lr=3e-4", "train.max_steps=7", "crr.lexicon=null",
                                             "student.from_teacher_layers=[0, 2]", "report_to=[]"])
    assert (cfg.train.lr, cfg.train.max_steps, cfg.crr.lexicon) == (3e-4, 7, None)
    assert cfg.student.from_teacher_layers == [0, 2] and cfg.report_to == []
    assert load_yaml("a: 1.0e-3\nb: ~\nc: [yes, no]\nd: true") == {"a": 1e-3, "b": None, "c": ["yes", "no"],
                                                                  "d": True}


def test_transfer_set_overrides_read_the_same_way():
    cfg = load_config("recipes/demo_kd.yaml", ["data.transfer_set.cache_dir=off",
                                               "data.transfer_set.num_sequences=40"])
    t = cfg.data.transfer_set
    assert isinstance(t, TransferSetConfig) and t.cache_dir == "off" and t.num_sequences == 40
