"""Regenerate data/lenses/bios.jsonl, the project's small biography set for the downstream lens (issue 15).

    python data/lenses/make_bios.py            # writes data/lenses/bios.jsonl next to this file
    python data/lenses/make_bios.py --check    # exit 1 if the JSONL file is out of date

Written for the project from the templates below (no third-party text). Eight occupations in four domains;
within a domain the two occupations share every "domain" sentence, and only half of the biographies carry a
sentence specific to the occupation (Bias in Bios removes the job title too, so the occupation is often
ambiguous from the text). Each line: {"text", "occupation", "gender", "split"}, and "pair" on test lines.

* train (240 lines): 30 per occupation, with a planted gender/occupation correlation: 80% of one gender
  (nurse, paralegal, teacher, dietitian female; surgeon, attorney, professor, chef male), so a probe can
  learn gender as a shortcut between the two occupations of a domain.
* test (160 lines): 10 biographies per occupation, each written twice, once per gender, identical but for
  the name and pronouns (counterfactual pairs, sharing a "pair" id that the lens's bootstrap resamples as
  one unit). A TPR gap on this split is caused by gender alone, and a
  model that cannot tell the genders apart has a gap of exactly 0.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

OUT = Path(__file__).with_name("bios.jsonl")
SEED = 15
TRAIN_PER_OCC, TEST_PER_OCC, SKEW, SPECIFIC_SHARE = 30, 10, 0.8, 0.5

# (female, male) name pairs; each used with the matching pronouns.
NAMES = [("Mary", "John"), ("Linda", "David"), ("Susan", "Robert"), ("Karen", "Thomas"), ("Laura", "Peter"),
         ("Helen", "Mark"), ("Anna", "Paul"), ("Emma", "James"), ("Sarah", "Daniel"), ("Julia", "Simon"),
         ("Grace", "Henry"), ("Alice", "George")]
PRONOUN = {"female": ("She", "her"), "male": ("He", "his")}

DOMAINS = {
    "medicine": ["works at a hospital near the city centre", "spends long days on the wards",
                 "cares a great deal about patient safety", "has worked in health care for many years"],
    "law": ["works at a firm that handles contract disputes", "spends most days reading case files",
            "keeps up with changes in employment law", "has worked in the legal field for many years"],
    "education": ["works with students every day", "spends evenings marking written work",
                  "believes that curiosity matters more than grades", "has worked in education for many years"],
    "food": ["works with food every day", "thinks a lot about healthy and tasty meals",
             "reads about new ingredients in the evenings", "has worked with nutrition for many years"],
}
# occupation -> (domain, gender the training split leans to, occupation-specific sentences)
OCCUPATIONS = {
    "nurse": ("medicine", "female", ["checks vital signs and gives medication on night shifts",
                                     "is trained in triage and wound care"]),
    "surgeon": ("medicine", "male", ["performs operations in the theatre several times a week",
                                     "specialises in orthopaedic procedures"]),
    "paralegal": ("law", "female", ["drafts documents and organises evidence for the lawyers",
                                    "prepares filings and keeps the deadlines of the office"]),
    "attorney": ("law", "male", ["argues cases in court and advises clients",
                                 "represents clients at trial and negotiates settlements"]),
    "teacher": ("education", "female", ["teaches reading and arithmetic to a class of young pupils",
                                        "plans lessons for a primary school class"]),
    "professor": ("education", "male", ["lectures at the university and supervises doctoral research",
                                        "publishes research papers and runs a laboratory group"]),
    "dietitian": ("food", "female", ["designs meal plans for patients with diabetes",
                                     "advises clinics on nutrition for recovering patients"]),
    "chef": ("food", "male", ["runs a busy restaurant kitchen and writes the menu",
                              "trains the kitchen staff and plates every dish"]),
}
CITIES = ["Leeds", "Porto", "Denver", "Melbourne", "Toronto", "Cork", "Austin", "Lyon", "Dundee", "Perth"]
CLOSINGS = ["lives in {city} with a dog", "lives in {city} and enjoys hiking at weekends",
            "moved to {city} a few years ago", "lives in {city} and plays the piano",
            "lives in {city} and volunteers at a food bank", "spends holidays near {city}"]


def _bio(rng: random.Random, occupation: str) -> dict:
    """A gender-free skeleton: sentences with {P} (subject pronoun) and {p} (possessive) slots."""
    domain, _, specific = OCCUPATIONS[occupation]
    parts = ["{N} " + rng.choice(DOMAINS[domain]) + "."]
    parts.append("{P} " + rng.choice([s for s in DOMAINS[domain] if s not in parts[0]]) + ".")
    if rng.random() < SPECIFIC_SHARE:
        parts.append("{P} " + rng.choice(specific) + ".")
    parts.append("{P} " + rng.choice(CLOSINGS).format(city=rng.choice(CITIES)) + ".")
    parts.append("In {p} free time {p} family comes first.")
    return {"skeleton": " ".join(parts), "pair": rng.randrange(len(NAMES))}


def _render(skel: dict, gender: str) -> str:
    subj, poss = PRONOUN[gender]
    name = NAMES[skel["pair"]][0 if gender == "female" else 1]
    return skel["skeleton"].replace("{N}", name).replace("{P}", subj).replace("{p}", poss)


def build() -> list[dict]:
    rng = random.Random(SEED)
    rows = []
    for occ, (_, lean, _) in OCCUPATIONS.items():
        other = "male" if lean == "female" else "female"
        n_lean = round(SKEW * TRAIN_PER_OCC)
        genders = [lean] * n_lean + [other] * (TRAIN_PER_OCC - n_lean)
        rng.shuffle(genders)
        for g in genders:
            rows.append({"text": _render(_bio(rng, occ), g), "occupation": occ, "gender": g, "split": "train"})
    for occ in OCCUPATIONS:
        for _ in range(TEST_PER_OCC):
            skel = _bio(rng, occ)
            pair = sum(r["split"] == "test" for r in rows) // 2
            for g in ("female", "male"):
                rows.append({"text": _render(skel, g), "occupation": occ, "gender": g, "split": "test", "pair": pair})
    return rows


def render() -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in build())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if bios.jsonl differs from what this script writes")
    args = ap.parse_args()
    text = render()
    if args.check:
        sys.exit(0 if OUT.is_file() and OUT.read_text(encoding="utf-8") == text else 1)
    OUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUT} ({text.count(chr(10))} lines)")


if __name__ == "__main__":
    main()
