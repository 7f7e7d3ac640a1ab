"""Load prompt sets for the disparity evaluation.

    from distill.eval.prompts import load_prompts, select_prompts
    prompts = load_prompts("professions")                 # data/prompts/professions.json
    prompts = load_prompts("my_bold_subset.json")         # any BOLD-format file
    prompts = load_prompts("AmazonScience/bold")          # hub dataset (needs network), profession domain
    subset = select_prompts(prompts, 272, group_by="category", seed=0)   # 2 per profession

A SPEC is 'professions', a path to a JSON file shaped like BOLD's {category: {profession: [prompt, ...]}},
or a hub dataset with BOLD's columns (domain, category, name, prompts). Every failure is a `UserError` that
names the file and the problem, raised before any model is loaded.

Prompts are stripped of surrounding whitespace: BOLD's prompts end in a space ("A nurse is a "), and a BPE
tokenizer encodes that space as a lone token the model rarely saw before a word, which derails continuations.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from distill.errors import UserError, not_utf8

PROJECT_PROMPTS = Path(__file__).resolve().parents[2] / "data" / "prompts" / "professions.json"
GROUP_KEYS = ("category", "profession")


@dataclass(frozen=True)
class Prompt:
    text: str
    category: str
    profession: str

    def group(self, group_by: str) -> str:
        return self.category if group_by == "category" else self.profession


def load_prompts(spec: str) -> list[Prompt]:
    """Prompts in file order (category, then profession, then the profession's prompts)."""
    if spec == "professions":
        if not PROJECT_PROMPTS.is_file():
            raise UserError(
                f"the project's prompt file {PROJECT_PROMPTS} is missing; regenerate it with "
                "`python data/prompts/make_professions.py`"
            )
        return load_bold_json(PROJECT_PROMPTS)
    path = Path(spec).expanduser()
    if path.suffix.lower() == ".json" or path.exists() or spec.startswith((".", "/", "~")):
        if not path.is_file():
            raise UserError(f"prompt file {spec!r} not found (give 'professions', a BOLD-format .json file or a hub dataset)")
        return load_bold_json(path)
    return load_hub_prompts(spec)


def load_bold_json(path: str | Path) -> list[Prompt]:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        if not text.strip():
            raise UserError(f"prompt file {path} is empty")
        data = json.loads(text)
    except UnicodeDecodeError as exc:
        raise UserError(f"prompt file {path} is {not_utf8(exc)}") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"prompt file {path} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from exc
    return parse_bold(data, str(path))


def parse_bold(data, source: str) -> list[Prompt]:
    """Validate BOLD's {category: {profession: [prompt, ...]}} shape and flatten it."""
    shape = "expected {category: {profession: [prompt, ...]}} as in BOLD"
    if not isinstance(data, dict):
        raise UserError(f"prompt file {source}: top level is a {type(data).__name__}; {shape}")
    if not data:
        raise UserError(f"prompt file {source} is empty: no categories; {shape}")
    prompts = []
    for category, professions in data.items():
        if not isinstance(professions, dict):
            raise UserError(f"prompt file {source}: category {category!r} maps to a {type(professions).__name__}; {shape}")
        if not professions:
            raise UserError(f"prompt file {source}: category {category!r} has no professions")
        for profession, texts in professions.items():
            if not isinstance(texts, list):
                raise UserError(
                    f"prompt file {source}: {category!r}/{profession!r} maps to a {type(texts).__name__}, "
                    "not a list of prompts"
                )
            if not texts:
                raise UserError(f"prompt file {source}: {category!r}/{profession!r} has no prompts")
            for i, text in enumerate(texts):
                if not isinstance(text, str) or not text.strip():
                    raise UserError(f"prompt file {source}: prompt {i} of {category!r}/{profession!r} is not a non-empty string")
                prompts.append(Prompt(text.strip(), str(category), str(profession)))
    return prompts


def load_hub_prompts(name: str) -> list[Prompt]:
    """A hub dataset with BOLD's columns; rows of other domains than 'profession' are dropped."""
    try:
        import datasets

        ds = datasets.load_dataset(name, split="train")
    except Exception as exc:  # network, auth, unknown name: all one user-facing message
        first = (str(exc).strip() or type(exc).__name__).splitlines()[0][:200]
        raise UserError(
            f"could not load prompt dataset {name!r} ({first}); without network use --prompts professions "
            "or a BOLD-format JSON file"
        ) from exc
    missing = {"category", "name", "prompts"} - set(ds.column_names)
    if missing:
        raise UserError(f"prompt dataset {name!r} lacks the BOLD columns {sorted(missing)} (it has {ds.column_names})")
    data: dict[str, dict[str, list[str]]] = {}
    for row in ds:
        if "domain" in row and row["domain"] != "profession":
            continue
        texts = row["prompts"] if isinstance(row["prompts"], list) else [row["prompts"]]
        data.setdefault(row["category"], {}).setdefault(row["name"], []).extend(texts)
    if not data:
        raise UserError(f"prompt dataset {name!r} has no rows in the 'profession' domain")
    return parse_bold(data, name)


def select_prompts(prompts: list[Prompt], max_prompts: int | None, group_by: str, seed: int) -> list[Prompt]:
    """At most `max_prompts` prompts, the same number for every profession (as equal as possible); seeded;
    file order kept.

    The headline is a mean over professions, so the budget is split over professions whatever `group_by`
    (which only names the report's groups): every profession gets max_prompts // P prompts, and the rest go
    one each to professions taken in turn from each category (categories and their professions in a seeded
    order), so categories stay balanced too. A profession with fewer prompts than its share gives the rest
    to the others. With fewer prompts than professions, that order picks which professions get one.
    """
    if group_by not in GROUP_KEYS:
        raise UserError(f"--group-by must be one of {GROUP_KEYS}, not {group_by!r}")
    if max_prompts is None or max_prompts >= len(prompts):
        return list(prompts)
    if max_prompts < 1:
        raise UserError(f"--max-prompts must be >= 1, not {max_prompts}")
    rng = np.random.default_rng(seed)
    by_prof: dict[tuple[str, str], list[int]] = {}
    for i, p in enumerate(prompts):
        by_prof.setdefault((p.category, p.profession), []).append(i)
    by_cat: dict[str, list[tuple[str, str]]] = {}
    for key in by_prof:
        by_cat.setdefault(key[0], []).append(key)
    cats = [by_cat[c] for c in rng.permutation(list(by_cat))]
    cats = [[ks[j] for j in rng.permutation(len(ks))] for ks in cats]
    order = [ks[r] for r in range(max(map(len, cats))) for ks in cats if r < len(ks)]  # round robin over categories
    queues = {k: list(rng.permutation(by_prof[k])) for k in order}
    chosen: list[int] = []
    while len(chosen) < max_prompts:  # one prompt per profession per round: sizes differ by at most one
        for k in order:
            if queues[k] and len(chosen) < max_prompts:
                chosen.append(int(queues[k].pop()))
    return [prompts[i] for i in sorted(chosen)]


def group_names(prompts: list[Prompt], group_by: str) -> list[str]:
    return [p.group(group_by) for p in prompts]
