"""Is the gender-swap table one-to-one in mass? The lexicon checked against a teacher's tokenizer.

    python -m distill.bench.audit_swap --recipe recipes/demo_crr.yaml          # the demo teacher's tokenizer
    python -m distill.bench.audit_swap --recipe recipes/debug_crr.yaml --out out/audit/swap.json

Tests: `python -m pytest tests/test_audit.py -q`.

pair_mean and the cf_* teacher modes move probability mass only between the ids of the swap table
(`distill.crr.token_table`): spellings of a lexicon word that are ONE token on both sides. Mass on any other
spelling stays where the teacher put it, so every place where the table is not one-to-one is a place where
"equal mass for he and she" does not hold. This command lists them, with counts and examples:

    one_to_many      lexicon words with several counterparts (her -> him/his); their mass is split by context
    not_involutive   table ids whose default counterpart does not map back to them (" his" -> " her" -> " him")
    {words,names}_{male,female}_side_only, _neither
                     spelling pairs (lower, Capitalised, ALL CAPS; with or without a leading space) that are
                     one token on one side only, or on neither (the spelling table counts every case)
    {words,names}_outside_table
                     ids that spell a lexicon word as one token but are in no table pair: never moved
    uneven_groups    groups of the pair graph whose sides hold different numbers of ids ({his, him} | {her})
    probe_outside    ids the likelihood probe counts (`distill.eval.probe.gender_token_ids`) that the table
                     does not hold: a lean on those is never balanced by the targets
    probe_unlisted   probe words with no lexicon entry

No model is loaded: the tokenizer and the lexicon only. One markdown report on stdout (and --out as JSON).
"""

from __future__ import annotations

import argparse
import sys

from distill.atomic import write_json_atomic

LEADS = ("", " ")  # the table holds each spelling with and without a leading space
STATUSES = ("both one token", "male side only", "female side only", "neither")


def case_of(surface: str) -> str:
    if surface.isupper() and sum(c.isalpha() for c in surface) > 1:
        return "ALL CAPS"
    return "Capitalised" if surface[:1].isupper() else "lower"


def word_lists(tokenizer, table, vocab_rows: int) -> dict[str, tuple[list[int], list[int]]]:
    """The male and female ids of each word list the audits compare: the probe's (BOLD's words, single tokens,
    as `distill eval` scores them) and the swap table's two sides (every pair's first id male, second female;
    an id on both sides, which the lexicon's checks should prevent, counts for neither)."""
    from distill.eval.probe import gender_token_ids

    pm, pf = gender_token_ids(tokenizer, vocab_rows)
    pairs = table.pairs.reshape(-1, 2).tolist() if table.pairs.numel() else []
    tm = {m for m, _ in pairs if m < vocab_rows}
    tf = {f for _, f in pairs if f < vocab_rows}
    return {"probe": (pm, pf), "table": (sorted(tm - tf), sorted(tf - tm))}


def _entry(lexicon, surface: str):
    low = surface.lower()
    return lexicon.entries.get(low) or lexicon.entries.get(low + ".")


def spelled_pairs(tokenizer, lexicon, codec=None) -> list[dict]:
    """Every (male, female) spelling pair the text swap produces, with and without a leading space: the
    number of tokens on each side and whether the table can hold it (one token on both sides)."""
    from distill.crr.token_table import Codec

    codec = codec or Codec(tokenizer)
    seen, out = set(), []
    for surface, cp, _rank, is_male in lexicon.surface_pairs():
        male, female = (surface, cp) if is_male else (cp, surface)
        for lead in LEADS:
            key = (lead + male, lead + female)
            if key in seen:
                continue
            seen.add(key)
            ids_m, ids_f = codec.encode(key[0]), codec.encode(key[1])
            n_m = len(ids_m) if ids_m is not None else 99
            n_f = len(ids_f) if ids_f is not None else 99
            status = STATUSES[0 if n_m == n_f == 1 else 1 if n_m == 1 else 2 if n_f == 1 else 3]
            entry = _entry(lexicon, surface)
            out.append({"male": key[0], "female": key[1], "lead": "space" if lead else "no space",
                        "case": case_of(male), "is_name": bool(entry and entry.is_name),
                        "male_tokens": n_m, "female_tokens": n_f, "status": status,
                        "ids": [ids_m[0] if n_m == 1 else None, ids_f[0] if n_f == 1 else None]})
    return out


def audit(tokenizer, lexicon, vocab_rows: int | None = None, examples: int = 6) -> dict:
    """The classes of the module docstring: counts, examples and the spelling table."""
    from distill.crr.token_table import Codec, build_token_swap_table
    from distill.crr.vocab import build_swap_plan
    from distill.eval.polarity import FEMALE_WORDS, MALE_WORDS

    V = vocab_rows or len(tokenizer)
    table = build_token_swap_table(tokenizer, lexicon)
    codec = Codec(tokenizer, table.pieces)
    pieces = table.pieces

    def show(ids) -> str:
        return "/".join(repr(pieces[i]) for i in ids)

    classes: dict[str, dict] = {}

    def put(name: str, items: list[str], what: str) -> None:
        classes[name] = {"count": len(items), "what": what, "examples": items[:examples], "all": items}
        if items and all(x.endswith(("(male)", "(female)")) for x in items):
            classes[name]["male"] = sum(x.endswith("(male)") for x in items)
            classes[name]["female"] = len(items) - classes[name]["male"]

    put("one_to_many", [f"{e.form} -> {', '.join(e.counterparts)}" for e in lexicon.entries.values()
                        if len(e.counterparts) > 1], "lexicon words with several counterparts")
    put("one_to_many_tokens", [f"{show([u])} -> {show(ts)}" for u, ts in sorted(table.back_groups.items())],
        "table ids whose mass maps back to several ids (split by the teacher's own ratio)")
    cp = table.counterpart
    ids = table.is_gendered.nonzero().flatten().tolist()
    put("not_involutive", [f"{show([a])} -> {show([int(cp[a])])} -> {show([int(cp[cp[a]])])}" for a in ids
                           if int(cp[cp[a]]) != a], "table ids whose counterpart's counterpart is another id")

    pairs = spelled_pairs(tokenizer, lexicon, codec)
    for kind in ("words", "names"):
        for status in STATUSES[1:]:
            rows = [p for p in pairs if p["status"] == status and p["is_name"] == (kind == "names")]
            put(f"{kind}_{status.replace(' ', '_')}",
                [f"{p['male']!r} ({p['male_tokens']}) / {p['female']!r} ({p['female_tokens']})" for p in rows],
                f"spelling pairs of {kind}, one token on the {status}" if status != "neither" else
                f"spelling pairs of {kind}, several tokens on both sides (aligned swaps only; no target "
                "balances them)")

    single = {}  # id -> (is_name, spelling, side) of every one-token spelling of a lexicon word
    for p in pairs:
        for side, text, i in (("male", p["male"], p["ids"][0]), ("female", p["female"], p["ids"][1])):
            if i is not None and i < V:
                single.setdefault(i, (p["is_name"], text, side))
    in_table = set(ids)
    for kind in ("words", "names"):
        put(f"{kind}_outside_table", [f"{text!r} ({side})" for i, (is_name, text, side) in
                                      sorted(single.items(), key=lambda x: x[1])
                                      if i not in in_table and is_name == (kind == "names")],
            f"one-token spellings of {kind} in no table pair (their mass is never moved)")

    plan = build_swap_plan(table, V)
    slots: dict[int, list[int]] = {}
    for c, s in zip(plan.pair_cols.tolist(), plan.pair_slot.tolist(), strict=True):
        slots.setdefault(s, []).append(c)
    uneven = []
    for k in range(0, int(plan.slot_size.numel()), 2):
        m, f = slots.get(k, []), slots.get(k + 1, [])
        if len(m) != len(f):
            uneven.append(f"{{{show(m)}}} | {{{show(f)}}}")
    put("uneven_groups", uneven, "pair groups whose male and female sides hold different numbers of ids")

    words = word_lists(tokenizer, table, V)
    pm, pf = words["probe"]
    put("probe_outside", [f"{show([i])} ({'male' if i in pm else 'female'})" for i in pm + pf if i not in in_table],
        "ids the likelihood probe counts that the table does not hold")
    put("probe_unlisted", sorted(w for w in MALE_WORDS | FEMALE_WORDS if _entry(lexicon, w) is None
                                 and w.split("'")[0] not in lexicon.entries),
        "probe words with no lexicon entry")

    spell_rows = {}
    for p in pairs:
        key = ("names" if p["is_name"] else "words", p["case"], p["lead"])
        spell_rows.setdefault(key, dict.fromkeys(STATUSES, 0))[p["status"]] += 1
    return {"vocab_rows": V, "table_ids": len(ids), "table_pairs": int(table.pairs.shape[0]),
            "lexicon": f"{lexicon.n_word_pairs} word pairs, {lexicon.n_name_pairs} name pairs", "classes": classes,
            "spellings": [{"kind": k[0], "case": k[1], "lead": k[2], **v} for k, v in sorted(spell_rows.items())],
            "probe_ids": {"male": len(pm), "female": len(pf)},
            "table_side_ids": {"male": len(words["table"][0]), "female": len(words["table"][1])}}


def markdown(res: dict) -> str:
    out = [f"Swap table: {res['table_ids']} ids in {res['table_pairs']} pairs over {res['vocab_rows']} vocabulary "
           f"rows; lexicon of {res['lexicon']}. Table sides: {res['table_side_ids']['male']} male ids, "
           f"{res['table_side_ids']['female']} female; probe: {res['probe_ids']['male']} male ids, "
           f"{res['probe_ids']['female']} female.", "",
           "| class | count | what | examples |", "|---|---|---|---|"]
    for name, c in res["classes"].items():
        ex = "; ".join(c["examples"]).replace("|", "\\|")
        sides = f" ({c['male']} male, {c['female']} female)" if "male" in c else ""
        out.append(f"| {name} | {c['count']}{sides} | {c['what']} | {ex} |")
    out += ["", "| kind | case | leading space | " + " | ".join(STATUSES) + " |", "|---|---|---|" + "---|" * 4]
    for r in res["spellings"]:
        out.append(f"| {r['kind']} | {r['case']} | {r['lead']} | " + " | ".join(str(r[s]) for s in STATUSES) + " |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m distill.bench.audit_swap", description=__doc__.split("\n\n")[0])
    p.add_argument("--recipe", required=True, help="recipe naming the teacher (its tokenizer) and crr.lexicon")
    p.add_argument("--examples", type=int, default=6, help="examples shown per class (default 6; JSON has all)")
    p.add_argument("--out", help="also write the result as JSON here")
    p.add_argument("overrides", nargs="*", help="recipe overrides key=value")
    args = p.parse_args(argv)
    from distill.errors import UserError

    try:
        from distill import models
        from distill.config import load_config
        from distill.crr.lexicon import load_lexicon

        cfg = load_config(args.recipe, args.overrides)
        t = cfg.teacher
        tokenizer = models.load_tokenizer(t.tokenizer or t.name_or_path, t.trust_remote_code)
        lexicon = load_lexicon(cfg.crr.lexicon, cfg.crr.names)
    except UserError as exc:
        print(f"audit_swap: error: {exc}", file=sys.stderr)
        return 2
    res = audit(tokenizer, lexicon, examples=args.examples)
    print(markdown(res))
    if args.out:
        write_json_atomic(args.out, res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
