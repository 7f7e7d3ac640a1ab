"""Every recipe key given no value: one line naming the key, before anything loads or is written.

`key=` on the command line, and `key:` / `key: null` in a file, give None; `key: ""` gives an empty string.
None used to pass the range checks (they skip None) and an empty path meant the current directory, so
`output_dir=` or `data.transfer_set.cache_dir=""` was accepted and the run failed later with a traceback, or
wrote into the working directory. The rule is one, in the config loader, so it is tested over every key:
an empty string is refused for every key but the free-text `description`; null is refused for every key whose
type has no "none" (the optional keys, whose default is null, keep it).
"""

import dataclasses
import types
import typing

import pytest
from bad_input_helpers import assert_one_error_line, run_cli, snapshot

from distill import config as config_module
from distill.config import Config, describe, load_config
from distill.errors import UserError


def _leaf_keys() -> list[tuple[str, bool]]:
    """(dotted key, whether null is a value it takes) for every key that holds a value, not a section."""
    out = []

    def walk(cls, prefix):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            section = config_module._section_type(hints[f.name])
            if section is not None:
                walk(section, prefix + f.name + ".")
                continue
            hint = hints[f.name]
            optional = isinstance(hint, types.UnionType) and type(None) in typing.get_args(hint)
            out.append((prefix + f.name, optional))

    walk(Config, "")
    return out


LEAVES = _leaf_keys()
EMPTY_STRING = [k for k, _ in LEAVES if k != "description"]
NULL_REFUSED = [k for k, optional in LEAVES if not optional]
NULL_TAKEN = [k for k, optional in LEAVES if optional]


def test_the_key_list_covers_every_recipe_key():
    described = {k for k, _, _ in describe()}
    sections = {k for k in described if any(o.startswith(k + ".") for o in described)}
    assert {k for k, _ in LEAVES} == described - sections
    assert len(EMPTY_STRING) > 60 and len(NULL_REFUSED) > 40 and "output_dir" in NULL_REFUSED


@pytest.fixture
def no_models(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("a refused recipe reached the models")

    monkeypatch.setattr("distill.models.load_tokenizer", refuse)
    monkeypatch.setattr("distill.train.command.build", refuse)


@pytest.mark.parametrize("key", EMPTY_STRING)
def test_an_empty_string_is_refused_for_every_key(key, tmp_path, no_models, capsys):
    before = snapshot(tmp_path)
    assert run_cli("train", "--recipe", "recipes/debug.yaml", f"output_dir={tmp_path / 'run'}", f"{key}=''") == 2
    assert_one_error_line(capsys, "train", f"recipe key '{key}' is an empty string", "leave the key out")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("key", NULL_REFUSED)
def test_null_is_refused_for_every_key_that_needs_a_value(key, tmp_path, no_models, capsys):
    before = snapshot(tmp_path)
    out = [] if key == "output_dir" else [f"output_dir={tmp_path / 'run'}"]
    assert run_cli("train", "--recipe", "recipes/debug.yaml", *out, f"{key}=") == 2
    assert_one_error_line(capsys, "train", f"recipe key '{key}' is null (no value)", "leave the key out")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("key", NULL_TAKEN)
def test_null_stays_the_default_of_the_optional_keys(key):
    """The optional keys default to null; giving it is the same as leaving the key out (or one line from the
    cross-key checks, e.g. a model then has no source), never the empty-value refusal."""
    try:
        load_config("recipes/debug.yaml", [f"{key}="])
    except UserError as exc:
        assert "is null (no value)" not in str(exc)


@pytest.mark.parametrize("key, value", [
    ("output_dir", "bare"), ("output_dir", None), ("output_dir", ""), ("data.transfer_set.cache_dir", ""),
    ("train.max_steps", "bare"), ("loss.alpha_kd", None),
])
def test_a_recipe_file_with_an_empty_value_is_refused_by_train_and_corpus(key, value, tmp_path, no_models, capsys):
    """The same rule for a recipe file: `key:` (bare), `key: null` and `key: ''` in the YAML text."""
    import yaml

    raw = yaml.safe_load(open("recipes/debug.yaml"))
    node, *parents, leaf = [raw, *key.split(".")]
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = "BARE" if value == "bare" else value
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(raw).replace(f"{leaf}: BARE", f"{leaf}:"))
    before = snapshot(tmp_path)
    for command in ("train", "corpus"):
        assert run_cli(command, "--recipe", recipe) == 2
        assert_one_error_line(capsys, command, f"recipe key '{key}' is")
    assert snapshot(tmp_path) == before
