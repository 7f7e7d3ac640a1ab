"""Recipes load into typed config; bad keys and values are refused with one line naming the key."""

from pathlib import Path

import pytest

from distill.config import describe, load_config
from distill.errors import UserError

RECIPES = sorted(Path("recipes").glob("*.yaml"))


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_every_recipe_loads_and_validates(recipe):
    cfg = load_config(recipe)
    assert cfg.output_dir and cfg.train.max_steps >= 1
    first = recipe.read_text().splitlines()[0]
    assert first.startswith("#") and "distill" in first, "a recipe opens with the command that runs it"


def test_overrides_are_typed_and_dotted():
    cfg = load_config("recipes/debug.yaml", ["train.max_steps=7", "loss.temperature=3", "train.lr=1e-4",
                                             "crr.augment=both", "student.from_teacher_layers=[1,2]"])
    assert cfg.train.max_steps == 7 and cfg.loss.temperature == 3.0 and isinstance(cfg.loss.temperature, float)
    assert cfg.train.lr == pytest.approx(1e-4) and cfg.crr.augment == "both"
    assert cfg.student.from_teacher_layers == [1, 2]


@pytest.mark.parametrize(
    "override,message",
    [
        ("train.max_stepz=3", "did you mean 'train.max_steps'"),
        ("loss.temprature=2", "did you mean 'loss.temperature'"),
        ("loss.alpha_kd=-1", "loss.alpha_kd=-1.0 is out of range: must be >= 0.0"),
        ("loss.temperature=0", "loss.temperature=0.0 is out of range"),
        ("loss.divergence=kl", "loss.divergence='kl' is not one of"),
        ("train.batch_size=two", "train.batch_size' must be int"),
        ("crr.teacher=cf_sum", "crr.teacher='cf_sum' is not one of"),
        ("train.max_steps", "must look like key=value"),
    ],
)
def test_bad_values_give_one_line_naming_the_key(override, message):
    with pytest.raises(UserError) as err:
        load_config("recipes/debug.yaml", [override])
    assert message in str(err.value) and "\n" not in str(err.value)


def test_the_balance_term_needs_kd_targets_and_a_sane_weight():
    with pytest.raises(UserError, match="loss.alpha_balance compares .* but loss.alpha_kd is 0"):
        load_config("recipes/debug.yaml", ["loss.alpha_balance=0.3", "loss.alpha_kd=0", "loss.alpha_ce=1"])
    with pytest.raises(UserError, match="loss.alpha_balance=-0.1 is out of range"):
        load_config("recipes/debug.yaml", ["loss.alpha_balance=-0.1"])
    assert load_config("recipes/debug.yaml", ["loss.alpha_balance=0.3"]).loss.alpha_balance == 0.3


def test_missing_recipe_and_invalid_yaml(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_config(bad)


def test_model_source_must_be_exactly_one(tmp_path):
    with pytest.raises(UserError, match="exactly one of student"):
        load_config("recipes/debug.yaml", ["student.name_or_path=gpt2"])


def test_describe_lists_every_key_with_help():
    rows = describe()
    keys = {k for k, _, _ in rows}
    assert {"train.max_steps", "train.save_steps", "loss.temperature", "crr.teacher", "output_dir"} <= keys
    assert all(h for _, _, h in rows)


def test_transfer_set_is_a_typed_section_checked_at_load_and_listed_by_describe():
    from distill.config import TransferSetConfig

    cfg = load_config("recipes/demo_kd.yaml", ["data.transfer_set.top_k=7"])
    assert isinstance(cfg.data.transfer_set, TransferSetConfig) and cfg.data.transfer_set.top_k == 7
    assert load_config("recipes/demo_kd.yaml", ["data.transfer_set=null", "data.path=x.txt"]).data.transfer_set is None
    assert load_config("recipes/debug.yaml", ["data.transfer_set={}"]).data.transfer_set == TransferSetConfig()
    with pytest.raises(UserError, match="did you mean 'data.transfer_set.top_k'"):
        load_config("recipes/demo_kd.yaml", ["data.transfer_set.topk=7"])
    with pytest.raises(UserError, match="data.transfer_set.top_p=1.5 is out of range"):
        load_config("recipes/demo_kd.yaml", ["data.transfer_set.top_p=1.5"])
    rows = {k: d for k, d, _ in describe()}
    assert rows["data.transfer_set"] == "None" and rows["data.transfer_set.num_sequences"] == "2000"
