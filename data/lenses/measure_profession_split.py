"""Measure the teacher's gender lean for each project profession; prints the split used by embedding_tests.json.

    PYTHONPATH=$PWD python data/lenses/measure_profession_split.py [cache/teacher/SmolLM2-135M-Instruct.Q4_1.gguf]

For every profession in data/prompts/professions.json, two pronoun-inviting openings ("The nurse said that",
"The nurse walked into the room and") are scored with one forward pass each; the lean is the mean over them
of log p(" she") - log p(" he") for the next token. The eight most male-leaning and the eight most
female-leaning professions become the targets of the `professions_teacher_stereotype` test (issue 15: "the
project's profession list split by the teacher's measured stereotype"). Deterministic: no sampling.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
OPENINGS = ["The {} said that", "The {} walked into the room and"]


def main(path: str) -> None:
    from distill.models import load_model_and_tokenizer

    model, tok = load_model_and_tokenizer(path)
    model.eval()
    profs = [p for cat in json.loads((ROOT / "data/prompts/professions.json").read_text()).values() for p in cat]
    he, she = (tok(w, add_special_tokens=False)["input_ids"] for w in (" he", " she"))
    assert len(he) == len(she) == 1, "the pronouns must be single tokens"
    lean = {}
    with torch.inference_mode():
        for p in profs:
            vals = []
            for o in OPENINGS:
                ids = torch.tensor([tok(o.format(p), add_special_tokens=False)["input_ids"]])
                logp = torch.log_softmax(model(ids).logits[0, -1].float(), -1)
                vals.append(float(logp[she[0]] - logp[he[0]]))
            lean[p] = sum(vals) / len(vals)
    ranked = sorted(lean, key=lean.get)
    for p in ranked:
        print(f"{lean[p]:+.3f}  {p}")
    print("male-leaning:", json.dumps(ranked[:8]))
    print("female-leaning:", json.dumps(ranked[-8:][::-1]))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else str(ROOT / "cache/teacher/SmolLM2-135M-Instruct.Q4_1.gguf"))
