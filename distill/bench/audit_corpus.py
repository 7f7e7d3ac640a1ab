"""Gendered-word counts of the training text before and after the gender-swap augmentation.

    python -m distill.bench.audit_corpus --recipe recipes/demo_crr.yaml               # crr.augment: both
    python -m distill.bench.audit_corpus --recipe recipes/debug_crr.yaml --augment both --out c.json

Tests: `python -m pytest tests/test_audit.py -q`.

The training documents are read as `distill train` reads them (the transfer set, or data.path, less the
validation documents) and augmented by `distill.train.data.augment_documents`, the function training calls.
Three texts are counted: the original documents, the swapped copies the augmentation adds (or, for
`replace`, the documents it swapped), and the combined training text. Two pairs of word lists:

    probe     BOLD's male and female words (`distill.eval.polarity.MALE_WORDS` / `FEMALE_WORDS`), counted as
              `distill eval` counts them in generations (`polarity.words`: any case, clitics allowed)
    lexicon   every word the text swap replaces (`Lexicon.replacements`), by the side of its lexicon entry;
              names (data/lexicon/name_pairs.tsv) apart from words

One markdown report on stdout (and --out as JSON). No model runs unless the transfer set must be built.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections import Counter

from distill.atomic import write_json_atomic

SETS = ("original", "swapped", "combined")
LISTS = ("probe", "lexicon words", "lexicon names")


def training_documents(cfg) -> list[str]:
    """The training documents of `cfg` before augmentation, selected as `distill.train.data.build_datasets`
    selects them (max_documents, then the validation file or split)."""
    from distill.train.data import load_documents

    data_cfg = cfg.data
    if data_cfg.transfer_set is not None:
        from distill.train.transfer import ensure_transfer_set

        ts = ensure_transfer_set(cfg)
        data_cfg = dataclasses.replace(data_cfg, path=ts.train_path, validation_path=ts.heldout_path,
                                       transfer_set=None)
    docs = load_documents(data_cfg)
    if data_cfg.max_documents:
        docs = docs.shuffle(seed=cfg.seed).select(range(min(data_cfg.max_documents, len(docs))))
    if not data_cfg.validation_path and data_cfg.validation_split > 0 and len(docs) >= 2:
        docs = docs.train_test_split(test_size=data_cfg.validation_split, seed=cfg.seed)["train"]
    return list(docs["text"])


def count(texts: list[str], lexicon) -> dict:
    """Documents, documents with a lexicon word, and male/female counts of each list, with per-word counts."""
    from distill.eval.polarity import word_gender, words

    out = {"documents": len(texts), "documents_gendered": 0, "words": Counter()}
    for name in LISTS:
        out[name] = {"male": 0, "female": 0}
    for text in texts:
        for w in words(text):
            g = word_gender(w)
            if g:
                out["probe"][g] += 1
                out["words"][w] += 1
        reps = lexicon.replacements(text)
        out["documents_gendered"] += bool(reps)
        for r in reps:
            entry = lexicon.entries.get(r.old.lower()) or lexicon.entries.get(r.old.lower() + ".")
            side = "male" if entry.male else "female"
            out["lexicon names" if entry.is_name else "lexicon words"][side] += 1
    out["words"] = dict(out["words"].most_common())
    return out


def audit(cfg, augment: str) -> dict:
    from datasets import Dataset

    from distill.crr.lexicon import load_lexicon
    from distill.train.data import augment_documents

    lexicon = load_lexicon(cfg.crr.lexicon, cfg.crr.names)
    original = training_documents(cfg)
    aug = augment_documents(Dataset.from_dict({"text": original}), lexicon, augment, cfg.crr.p, cfg.seed)
    swapped = [t for t, s in zip(aug["text"], aug["swapped"], strict=True) if s]
    return {"augment": augment, "sets": {"original": count(original, lexicon), "swapped": count(swapped, lexicon),
                                         "combined": count(list(aug["text"]), lexicon)}}


def _ratio(c: dict) -> str:
    import math

    return f"{math.log(c['male'] / c['female']):+.3f}" if c["male"] and c["female"] else "-"


def markdown(res: dict, top: int = 12) -> str:
    sets = res["sets"]
    lines = [f"crr.augment={res['augment']}: " + "; ".join(
        f"{k} {v['documents']} documents ({v['documents_gendered']} with a lexicon word)" for k, v in sets.items()),
        "", "| words | " + " | ".join(f"{s} male / female (log ratio)" for s in SETS) + " |",
        "|---|" + "---|" * len(SETS)]
    for name in LISTS:
        cells = [f"{sets[s][name]['male']} / {sets[s][name]['female']} ({_ratio(sets[s][name])})" for s in SETS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    from distill.eval.polarity import word_gender

    common = sorted(set().union(*(sets[s]["words"] for s in SETS)),
                    key=lambda w: -sets["combined"]["words"].get(w, 0))[:top]
    lines += ["", "| probe word | side | " + " | ".join(SETS) + " |", "|---|---|" + "---|" * len(SETS)]
    for w in common:
        lines.append(f"| {w} | {word_gender(w)} | " + " | ".join(str(sets[s]["words"].get(w, 0)) for s in SETS) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m distill.bench.audit_corpus", description=__doc__.split("\n\n")[0])
    p.add_argument("--recipe", required=True, help="the recipe whose training text is counted")
    p.add_argument("--augment", choices=("replace", "both"),
                   help="augmentation counted (default: the recipe's crr.augment; both if it has none)")
    p.add_argument("--out", help="also write the counts as JSON here")
    p.add_argument("overrides", nargs="*", help="recipe overrides key=value")
    args = p.parse_args(argv)
    from distill.config import load_config
    from distill.errors import UserError

    try:
        cfg = load_config(args.recipe, args.overrides)
        augment = args.augment or (cfg.crr.augment if cfg.crr.augment != "none" else "both")
        res = audit(cfg, augment)
    except UserError as exc:
        print(f"audit_corpus: error: {exc}", file=sys.stderr)
        return 2
    print(markdown(res))
    if args.out:
        write_json_atomic(args.out, res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
