"""Prompt loading: the BOLD-format loader, its errors, the project's prompt file, balanced subsets."""

import collections
import importlib.util
import json
import re
from pathlib import Path

import pytest

from distill.errors import UserError
from distill.eval import prompts as P
from distill.eval.polarity import FEMALE_WORDS, MALE_WORDS

FIXTURE = Path(__file__).parent / "fixtures" / "bold_small.json"
REPO = Path(__file__).resolve().parent.parent

# BOLD's lists plus other words that would tip a prompt's gender on their own.
GENDERED = MALE_WORDS | FEMALE_WORDS | {
    "mr", "mrs", "ms", "miss", "sir", "madam", "lady", "ladies", "gentleman", "gentlemen", "guy", "guys",
    "father", "mother", "dad", "mom", "mum", "husband", "wife", "son", "daughter", "brother", "sister",
    "uncle", "aunt", "nephew", "niece", "king", "queen", "prince", "princess", "boyfriend", "girlfriend",
    "male", "female", "actress", "waitress", "hostess", "stewardess", "seamstress", "midwife", "housewife",
    "chairman", "fireman", "policeman", "salesman", "businessman", "businesswoman", "grandfather", "grandmother",
}


def test_bold_fixture_loads_and_strips():
    ps = P.load_prompts(str(FIXTURE))
    assert len(ps) == 9
    assert ps[0] == P.Prompt("A nurse is a caregiver who", "healthcare", "nurse")
    assert all(p.text == p.text.strip() for p in ps)  # BOLD's trailing spaces are gone
    assert {p.category for p in ps} == {"healthcare", "trades"}
    assert P.group_names(ps, "profession")[-1] == "carpenter"


@pytest.mark.parametrize(
    "content, message",
    [
        ("{", "not valid JSON"),
        ("  \n", "is empty"),
        ("{}", "empty"),
        ("[]", "top level is a list"),
        ('{"c": {}}', "has no professions"),
        ('{"c": {"nurse": []}}', "'c'/'nurse' has no prompts"),
        ('{"c": {"nurse": "The nurse"}}', "not a list"),
        ('{"c": {"nurse": ["ok", 3]}}', "prompt 1 of 'c'/'nurse'"),
        ('{"c": {"nurse": ["   "]}}', "not a non-empty string"),
        ('{"c": ["The nurse"]}', "category 'c' maps to a list"),
    ],
)
def test_malformed_files_are_user_errors(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(UserError, match=re.escape(message)):
        P.load_prompts(str(path))


def test_missing_file_and_bad_group_by(tmp_path):
    with pytest.raises(UserError, match="not found"):
        P.load_prompts(str(tmp_path / "nope.json"))
    with pytest.raises(UserError, match="--group-by"):
        P.select_prompts(P.load_prompts(str(FIXTURE)), 2, "gender", 0)


def test_hub_dataset_without_network(monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach the hub")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(UserError, match="could not load prompt dataset 'AmazonScience/bold'.*professions"):
        P.load_prompts("AmazonScience/bold")


def test_hub_dataset_rows_are_filtered_to_professions(monkeypatch):
    import datasets

    rows = {
        "domain": ["profession", "profession", "gender"],
        "category": ["nursing", "nursing", "American_actors"],
        "name": ["nurse", "midwife_x", "someone"],
        "prompts": [["A nurse is "], ["One who ", "Another "], ["An actor "]],
    }
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: datasets.Dataset.from_dict(rows))
    ps = P.load_prompts("AmazonScience/bold")
    assert [(p.text, p.profession) for p in ps] == [("A nurse is", "nurse"), ("One who", "midwife_x"), ("Another", "midwife_x")]


def test_project_prompts_cover_100_professions_without_gendered_words():
    data = json.loads(P.PROJECT_PROMPTS.read_text())
    professions = [p for profs in data.values() for p in profs]
    assert len(professions) >= 100 and len(set(professions)) == len(professions)
    assert len(data) >= 8
    ps = P.load_prompts("professions")
    assert len(ps) >= 6 * len(professions)
    for p in ps:
        words = set(re.findall(r"[a-z]+", p.text.lower()))
        assert not words & GENDERED, p.text
        assert not [w for w in words if w.endswith(("man", "men")) and w != "human"], p.text


def test_professions_file_is_regenerated_by_its_script():
    spec = importlib.util.spec_from_file_location("make_professions", REPO / "data" / "prompts" / "make_professions.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--check"]) == 0
    assert module.article("engineer") == "an" and module.article("university lecturer") == "a"


def test_max_prompts_is_balanced_seeded_and_ordered():
    ps = P.load_prompts("professions")
    n_cat = len({p.category for p in ps})
    sub = P.select_prompts(ps, 2 * n_cat, "category", seed=0)
    assert set(collections.Counter(p.category for p in sub).values()) == {2}
    n_prof = len({p.profession for p in ps})
    sub = P.select_prompts(ps, n_prof + 7, "profession", seed=1)
    sizes = collections.Counter(p.profession for p in sub)
    assert len(sizes) == n_prof and max(sizes.values()) - min(sizes.values()) <= 1
    assert P.select_prompts(ps, 30, "category", 5) == P.select_prompts(ps, 30, "category", 5)
    assert P.select_prompts(ps, 30, "category", 5) != P.select_prompts(ps, 30, "category", 6)
    idx = [ps.index(p) for p in P.select_prompts(ps, 30, "category", 5)]
    assert idx == sorted(idx)  # file order kept
    assert P.select_prompts(ps, None, "category", 0) == ps
    assert P.select_prompts(ps, 10**6, "category", 0) == ps
    few = P.select_prompts(ps, 3, "category", 0)  # fewer prompts than groups: 3 distinct groups
    assert len({p.category for p in few}) == 3


def test_balance_when_a_group_runs_out():
    ps = P.load_prompts(str(FIXTURE))  # healthcare 5 prompts, trades 4
    sub = P.select_prompts(ps, 8, "category", 0)
    assert collections.Counter(p.category for p in sub) == {"healthcare": 4, "trades": 4}


def test_max_prompts_gives_every_profession_the_same_number():
    """The headline is a mean over professions: --max-prompts splits the budget over professions (2 each at the
    demo's 272 prompts, where spreading over categories gave 1-5 and left 10 professions unscored)."""
    ps = P.load_prompts("professions")
    professions = {(p.category, p.profession) for p in ps}
    for group_by in ("category", "profession"):
        sizes = collections.Counter((p.category, p.profession) for p in P.select_prompts(ps, 272, group_by, seed=0))
        assert set(sizes) == professions and set(sizes.values()) == {2}
    sizes = collections.Counter((p.category, p.profession) for p in P.select_prompts(ps, 300, "category", seed=3))
    assert set(sizes) == professions and set(sizes.values()) == {2, 3}
    few = P.select_prompts(ps, 20, "category", 0)  # fewer prompts than professions: 20 professions, one each
    assert len({p.profession for p in few}) == 20
    assert max(collections.Counter(p.category for p in few).values()) == 2  # spread over the 14 categories


def test_a_profession_that_runs_out_gives_its_share_to_the_others(tmp_path):
    path = tmp_path / "uneven.json"
    path.write_text(json.dumps({"c": {"a": ["a 1"], "b": [f"b {i}" for i in range(6)], "d": [f"d {i}" for i in range(6)]}}))
    sizes = collections.Counter(p.profession for p in P.select_prompts(P.load_prompts(str(path)), 9, "category", 0))
    assert sizes == {"a": 1, "b": 4, "d": 4}

