"""The Bias in Bios record and the keys its readers share: the JSONL loader (`distill.eval.lenses.downstream`)
and the hub loader (`distill.eval.lenses.bios_hub`).

    from distill.eval.lenses.bios_record import Bios, gender_name
    bios = Bios(texts, occupations, [gender_name(g, "line 3") for g in genders], None, "my.jsonl")
"""

from __future__ import annotations

from dataclasses import dataclass

from distill.errors import UserError

TEXT_KEYS = ("text", "hard_text", "bio")
OCC_KEYS = ("occupation", "profession", "title")
GENDER_MAP = {"f": "female", "female": "female", "woman": "female", "w": "female",
              "m": "male", "male": "male", "man": "male"}


@dataclass(frozen=True)
class Bios:
    texts: list[str]
    occupations: list[str]
    genders: list[str]  # "female" or "male"
    splits: list[str] | None  # "train"/"test" per record when the data says so, else None
    source: str
    pairs: list | None = None  # optional "pair" id: biographies that differ only in gender share one


def gender_name(value, where: str) -> str:
    g = GENDER_MAP.get(str(value).strip().lower())
    if g is None:
        raise UserError(f"{where}: gender {value!r} is not one of female/male (or f/m); the lens compares two genders")
    return g
