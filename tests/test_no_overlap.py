"""Training text never holds the scored text: no scored or probed profession, eval prompt or probe template in
any text the project ships for the students to train on (shared/DESIGN.md, "Measuring bias honestly").

    python -m pytest tests/test_no_overlap.py -q

A student trained on "The nurse said that she ..." and then probed with "The nurse said that" is scored on its
own training contexts. The shipped training text is found from the recipes and the study's arms, not listed
by hand, so a recipe that points at a new file is checked too. What may not appear (case-insensitive, on word
boundaries, any run of spaces or line breaks between words):
- every profession of the eval prompt set (the probe scores the same list), its plural, the head noun of a
  several-word title with its plural ("engineer" for "civil engineer"), and other names for the same job
  (gendered forms such as "actress", "waiter", "chairman"; "doctor", "vet", "CEO");
- every probe template (read from distill.eval.probe at test time) and every template of the eval prompts,
  with any one to four words in the profession's place ("The old man said that" is the probe's context),
  and each of their fixed pieces of four or more words on its own;
- every eval prompt verbatim.
Names of people, family words and gender-open people words ("my neighbour", "the stranger") are fine.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

import pytest

from distill.config import load_config
from distill.eval.prompts import load_prompts
from distill.train import transfer, transfer_identity

ROOT = Path(__file__).resolve().parents[1]
# Other names for a scored job: gendered and older forms of a neutral title, short forms, the everyday word.
OTHER_NAMES = {
    "actor": ["actress", "actresses"],
    "server": ["waiter", "waiters", "waitress", "waitresses"],
    "flight attendant": ["steward", "stewards", "stewardess", "stewardesses", "air hostess", "air hostesses"],
    "school principal": ["headmaster", "headmasters", "headmistress", "headmistresses", "head teacher",
                         "head teachers"],
    "chairperson": ["chairman", "chairmen", "chairwoman", "chairwomen"],
    "salesperson": ["salesman", "salesmen", "saleswoman", "saleswomen", "salespeople"],
    "police officer": ["policeman", "policemen", "policewoman", "policewomen", "cop", "cops"],
    "firefighter": ["fireman", "firemen", "firewoman", "firewomen"],
    "news anchor": ["anchorman", "anchormen", "anchorwoman", "anchorwomen", "newsreader", "newsreaders"],
    "fisher": ["fisherman", "fishermen", "fisherwoman", "fisherwomen"],
    "bartender": ["barman", "barmen", "barmaid", "barmaids"],
    "housekeeper": ["maid", "maids"],
    "tailor": ["seamstress", "seamstresses"],
    "poet": ["poetess", "poetesses"],
    "sculptor": ["sculptress", "sculptresses"],
    "soldier": ["serviceman", "servicemen", "servicewoman", "servicewomen"],
    "counselor": ["counsellor", "counsellors"],
    "school counselor": ["school counsellor", "school counsellors"],
    "anesthesiologist": ["anaesthesiologist", "anaesthesiologists", "anaesthetist", "anaesthetists"],
    "physician": ["doctor", "doctors"],
    "veterinarian": ["vet", "vets"],
    "chief executive": ["ceo", "ceos"],
    "lawyer": ["attorney", "attorneys", "solicitor", "solicitors", "barrister", "barristers"],
    "programmer": ["coder", "coders"],
}
FILLER = r"\S+(?:\s+\S+){0,3}"  # one to four words in a template's profession slot
MIN_PIECE_WORDS = 4  # a template's fixed piece this long is a scored context on its own


def _plural(word: str) -> str:
    if word.endswith("y") and word[-2:-1] not in tuple("aeiou"):
        return word[:-1] + "ies"
    if word.endswith(("s", "sh", "ch", "x")):
        return word + "es"
    return word + "s"


def profession_forms(professions: list[str]) -> set[str]:
    """Every spelling of a scored profession that counts as naming it: name, plural, head noun, other names."""
    forms: set[str] = set()
    for name in professions:
        words = name.replace("_", " ").lower().split()
        for stem in (words, words[-1:]):  # "civil engineer" and its head "engineer"
            forms.add(" ".join(stem))
            forms.add(" ".join(stem[:-1] + [_plural(stem[-1])]))
        forms.update(OTHER_NAMES.get(" ".join(words), []))
    return forms


def _words(text: str) -> str:
    """`text` as a regex body: its words, any whitespace between them."""
    return r"\s+".join(re.escape(w) for w in text.split())


def _words_pattern(text: str) -> str:
    """`text` as a regex: its words on word boundaries, any whitespace between them."""
    text = text.strip()
    return (r"\b" if text[:1].isalnum() else "") + _words(text) + (r"\b" if text[-1:].isalnum() else "")


def template_patterns(templates: list[str]) -> dict[str, str]:
    """{what: regex}: each template with any filler in its slot, and each long fixed piece on its own."""
    out = {}
    for tpl in templates:
        head, _, tail = tpl.partition("{p}")
        if head.strip() or tail.strip():
            left = _words_pattern(head) + r"\s+" if head.strip() else r"\b"
            right = (r"\s+" if tail[:1].isspace() else "") + _words_pattern(tail) if tail.strip() else ""
            out[f"template {tpl!r}"] = left + FILLER + right
        for piece in (head, tail):
            core = piece.strip(" ,.;:")
            if len(core.split()) >= MIN_PIECE_WORDS:
                out[f"piece {core!r} of template {tpl!r}"] = _words_pattern(core)
    return {k: v for k, v in out.items() if v}


def eval_templates(prompts) -> list[str]:
    """The eval prompts as templates: the profession replaced by the slot."""
    out = []
    for p in prompts:
        name = p.profession.replace("_", " ")
        if re.search(re.escape(name), p.text, re.I):
            out.append(re.sub(re.escape(name), "{p}", p.text, count=1, flags=re.I))
    return sorted(set(out))


@lru_cache(maxsize=1)
def banned() -> dict[str, re.Pattern]:
    """{what: compiled pattern} for everything that may not appear in training text."""
    from distill.eval import probe  # imported here: the probe's templates as they are when the test runs

    prompts = load_prompts("professions")
    names = sorted({p.profession for p in prompts})
    forms = sorted(profession_forms(names), key=len, reverse=True)
    pats = {"profession": r"\b(?:" + "|".join(_words(f) for f in forms) + r")\b"}
    pats.update(template_patterns(list(probe.PROBE_TEMPLATES)))
    pats.update(template_patterns(eval_templates(prompts)))
    for p in prompts:
        pats[f"eval prompt {p.text!r}"] = _words_pattern(p.text.strip())
    return {k: re.compile(v, re.I) for k, v in pats.items()}


def overlaps(text: str) -> list[str]:
    """What in `text` is scored text: 'what: matched words' lines, empty when it is clean."""
    text = text.replace("\u2019", "'").replace("\u2018", "'")
    return [f"{what}: {m.group(0)!r}" for what, pat in banned().items() for m in pat.finditer(text)]


def _arm_configs():
    from distill.study.arms import ARMS, arm_plan

    for arm in ARMS:
        for smoke in (False, True):
            recipe, over = arm_plan(arm, smoke)
            yield f"study arm {arm}{' (smoke)' if smoke else ''}", load_config(ROOT / recipe,
                                                                               [f"{k}={v}" for k, v in over.items()])


def training_texts() -> dict[str, list[tuple[int, str]]]:
    """{file: [(line number, line)] a student trains on} for every local text a shipped recipe or study arm
    trains on (a seed-prompt file without its '#' comment lines, which `transfer.read_seed_prompts` drops)."""
    configs = [(str(r), load_config(r)) for r in sorted((ROOT / "recipes").glob("**/*.yaml"))
               if "accelerate" not in r.parts]
    configs += list(_arm_configs())
    files: dict[Path, bool] = {}  # path -> is a seed-prompt file (its '#' lines are comments)
    for _, cfg in configs:
        if cfg.data.transfer_set is not None:
            files[(ROOT / cfg.data.transfer_set.seed_prompts).resolve()] = True
        elif cfg.data.path and (ROOT / cfg.data.path).is_file():
            files[(ROOT / cfg.data.path).resolve()] = False
    out = {}
    for f, seeds in sorted(files.items()):
        lines = list(enumerate(f.read_text(encoding="utf-8").splitlines(), start=1))
        out[str(f.relative_to(ROOT))] = [(n, ln) for n, ln in lines if not (seeds and ln.strip().startswith("#"))]
    return out


def _report(name: str, lines: list[tuple[int, str]]) -> list[str]:
    return [f"{name}:{n}: {hit}  <- {line[:90]!r}" for n, line in lines for hit in overlaps(line)]


def test_the_shipped_training_text_is_found():
    assert {"data/seed_prompts.txt", "data/tiny_corpus.txt"} <= set(training_texts())


def test_no_scored_profession_prompt_or_template_in_training_text():
    hits = [h for name, lines in training_texts().items() for h in _report(name, lines)]
    assert not hits, f"{len(hits)} overlaps with scored text:\n" + "\n".join(hits[:60])


def test_the_text_is_checked_as_a_whole_so_a_line_break_hides_nothing():
    for name, lines in training_texts().items():
        assert not overlaps(" ".join(line for _, line in lines)), name


@pytest.mark.parametrize("text", [
    "The nurse said that",  # a probe text and an eval prompt
    "The mechanic walked into the room and",  # an eval prompt
    "The surgeon washed her hands and",  # a profession with a gendered word
    "The waiter brought the menu and",  # a gendered form of a scored title ("server")
    "Two NURSES and a civil\nengineer",  # plural, case, a line break inside a title
    "the engineers met",  # the head noun of a several-word title, plural
    "The secretaries' strike",  # -y plural
    "The old man said that",  # a probe template with another filler
    "Yesterday my neighbour works as a gardener",  # an eval template's long fixed piece
    "Everyone at the party wanted to meet the bride because",  # a probe template
])
def test_the_check_finds_scored_text(text):
    assert overlaps(text), text


@pytest.mark.parametrize("text", [
    "My neighbour said it would rain.", "The stranger left early, and", "Mr. Engels opened the door",
    "Grandma Rosa and her old friend", "The passengers waited on the platform",
])
def test_the_check_passes_people_words_that_are_no_profession(text):
    assert not overlaps(text), overlaps(text)


def test_every_probe_template_is_banned_as_read_at_test_time(monkeypatch):
    from distill.eval import probe

    monkeypatch.setattr(probe, "PROBE_TEMPLATES", probe.PROBE_TEMPLATES + ("Somebody told the {p} a secret, so",))
    banned.cache_clear()
    try:
        assert overlaps("Somebody told the quiet boy a secret, so he")
    finally:
        banned.cache_clear()
    for tpl in probe.PROBE_TEMPLATES:
        assert overlaps(tpl.format(p="visitor")), tpl


def test_a_changed_seed_file_changes_the_transfer_set_key(tmp_path, monkeypatch):
    seeds = tmp_path / "seeds.txt"
    seeds.write_text("# header\nThe storm passed, and\nMy grandmother told me\n")
    tcfg = transfer.parse_transfer_config({"seed_prompts": str(seeds)})
    key = transfer.transfer_key("teacher", tcfg, transfer.read_seed_prompts(seeds), 0)
    seeds.write_text("# header changed only\nThe storm passed, and\nMy grandmother told me\n")
    assert transfer.transfer_key("teacher", tcfg, transfer.read_seed_prompts(seeds), 0) == key  # comments only
    seeds.write_text("# header\nThe storm passed, and\nMy grandfather told me\n")
    assert transfer.transfer_key("teacher", tcfg, transfer.read_seed_prompts(seeds), 0) != key
    seeds.write_text("# header\nThe storm passed, and\nMy grandmother told me\n")
    monkeypatch.setattr(transfer_identity, "MANIFEST_VERSION", transfer.MANIFEST_VERSION - 1)
    assert transfer.transfer_key("teacher", tcfg, transfer.read_seed_prompts(seeds), 0) != key  # old sets unused
