"""The training targets themselves: how much of their mass is on male against female words, position by position.

    python -m distill.bench.audit_targets --recipe recipes/demo_crr.yaml --threads 1 --out targets.json
    python -m distill.bench.audit_targets --recipe recipes/debug_crr.yaml --modes none,pair_mean --max-blocks 16
    python -m distill.bench.audit_targets --from-json targets.json          # the tables again, no model run
    python -m distill.bench.audit_targets --recipe recipes/demo_crr.yaml --modes none,pair_mean --augment none \
        --student kd=out/demo_runs/kd/final --student crr=out/demo_runs/crr/final   # do students fit them?

Tests: `python -m pytest tests/test_audit.py -q`.

For every position of the training blocks (the transfer set packed as training packs it, with the
augmentation `--augment` names, in the order `BlockSampler` serves them to a run of the recipe's seed) the
targets of each teacher mode are made by `distill.train.step.batch_targets`, the function the training step
calls, at the recipe's loss temperature. From each target distribution P and each word list (the probe's
male/female ids, `distill.eval.probe.gender_token_ids`; those of them with a leading space; and the swap
table's two sides) it takes P_m and P_f, the mass on the male and on the female ids, and reports per
position kind:

    mean log(P_m / P_f)              over the positions (each position counts once; masses floored at 1e-30)
    log(sum P_m / sum P_f)           pooled: the positions weighted by the gendered mass they hold

Position kinds (position t predicts token t+1; the last position of a block has no label and is skipped):
    gendered word before / none      a lexicon word (`Lexicon.replacements`) ends in the same document of
                                     the block at or before token t
    last gendered word male / female the side of the last such word: grammar makes the targets follow it,
                                     so a lean over all positions can be the text's mix of he- and
                                     she-documents rather than the targets'
    next token starts a word / continues one
                                     from the text: the next token continues a word when the context ends
                                     in a word character and the next token starts with one ("hu|man")
    after a word character / after a space or punctuation
                                     the word-start rule of the targets (`distill.crr.vocab.SwapPlan`):
                                     after a word character, pair_mean and the cf_* modes leave the mass of
                                     spellings without a leading space ("man", "her") where it is, since they
                                     would continue the word there; elsewhere every table id is balanced
    next word capitalised / not      the text's next token, stripped of its leading space, starts upper-case

All blocks by default: with `augment: both` a document and its swapped copy sit in different blocks, and a
subset holding one without the other leans with the subset's mix of he- and she-documents (on the demo,
96 of 227 blocks gave cf_mean +0.12 on the probe words, pooled; all of them give -0.01).

Students (`--student NAME=DIR`, repeatable): a trained model's own next-token distribution on the same
positions, at the same temperature, counted as one more column (`student NAME`). Beside the targets it was
trained on, this says whether a student's lean on the probe is one it learned at the training positions (it
did not fit the even targets) or one it shows only on contexts it never trained on (it fitted them).

Cost: every mode of a batch reuses one teacher forward and one counterfactual forward (`_SameOutputs`
remembers them; the outputs are deterministic, so the targets are those of separate calls).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch

from distill.atomic import write_json_atomic
from distill.bench.audit_tables import KINDS, markdown

MODES = ("none", "pair_mean", "cf_mean", "cf_max")
AUGMENTS = ("none", "both")
_WORD_CHAR = re.compile(r"\w")  # the lexicon's word boundary, as in distill.crr.vocab
TINY = 1e-30  # the probe's floor (distill.eval.probe.TINY): a mass that underflows keeps a finite log


class _SameOutputs(torch.nn.Module):
    """The teacher, with the outputs of the current batch's calls remembered by their arguments."""

    def __init__(self, teacher: torch.nn.Module):
        super().__init__()
        self.teacher = teacher
        self.memo: dict = {}
        self.eval()

    @staticmethod
    def _key(kwargs: dict):
        def one(v):
            if isinstance(v, torch.Tensor):
                return (tuple(v.shape), str(v.dtype), v.cpu().numpy().tobytes())
            return v
        return tuple((k, one(v)) for k, v in sorted(kwargs.items()))

    def forward(self, **kwargs):
        key = self._key(kwargs)
        if key not in self.memo:
            self.memo[key] = self.teacher(**kwargs)
        return self.memo[key]


@dataclasses.dataclass
class Collected:
    """Per-position masses: masses[augment][mode][list] = (P_m, P_f) float64 arrays; kinds[augment][kind] a bool
    array over the same positions."""

    masses: dict
    kinds: dict
    blocks: dict  # augment -> the training-block indices audited, in order
    ids: dict  # list -> (male ids, female ids)


def position_kinds(rows: torch.Tensor, tokenizer, table, lexicon, plan) -> dict[str, np.ndarray]:
    """The kinds of the module docstring for positions 0..T-2 of every row of `rows` (B, T), flattened."""
    from distill.crr.token_table import Codec

    codec = Codec(tokenizer, table.pieces, table.encode_memo)
    eos_id = tokenizer.eos_token_id
    B, T = rows.shape
    after = np.zeros((B, T - 1), dtype=bool)
    male = np.zeros((B, T - 1), dtype=bool)
    for b, row in enumerate(rows.tolist()):
        pieces = codec.spell(row)
        ends = np.cumsum([len(s) for s in pieces])
        found = sorted((r.end, _is_male(lexicon, r.old)) for r in lexicon.replacements("".join(pieces)))
        seen_doc_start, w = 0, 0
        for t in range(T - 1):
            if eos_id is not None and row[t] == eos_id:
                seen_doc_start = ends[t]  # a new document starts after the EOS
            while w < len(found) and found[w][0] <= ends[t]:
                w += 1
            after[b, t] = w > 0 and found[w - 1][0] > seen_doc_start
            male[b, t] = after[b, t] and found[w - 1][1]
    ends_word = plan.ends_word[rows[:, :-1]].numpy()
    nxt = rows[:, 1:].tolist()
    cap = np.array([[table.pieces[i].lstrip()[:1].isupper() for i in r] for r in nxt], dtype=bool)
    goes_on = np.array([[bool(_WORD_CHAR.match(table.pieces[i][:1])) for i in r] for r in nxt], dtype=bool)
    return {"gendered word before": after.reshape(-1), "last gendered word male": male.reshape(-1),
            "after a word character": ends_word.reshape(-1),
            "next token continues a word": (ends_word & goes_on).reshape(-1),
            "next word capitalised": cap.reshape(-1)}


def _is_male(lexicon, word: str) -> bool:
    entry = lexicon.entries.get(word.lower()) or lexicon.entries.get(word.lower() + ".")  # "Mr" of "Mr."
    return entry.male


def collect(cfg, *, modes=MODES, augments=AUGMENTS, max_blocks: int | None = 48, batch_size: int = 8,
            show_progress: bool = True, students: dict | None = None) -> Collected:
    """Build the recipe's teacher and data as training does, then the targets of every mode on the first
    `max_blocks` training blocks (all when None) of each augmentation in `augments`; and, for each
    students[name] (a loaded model), its own distribution there as mode `student NAME`."""
    from accelerate import Accelerator

    from distill.bench.audit_swap import word_lists
    from distill.crr.vocab import swap_plan
    from distill.train.data import BlockSampler
    from distill.train.setup import _data, build
    from distill.train.step import batch_targets

    base = dataclasses.replace(cfg, crr=dataclasses.replace(cfg.crr, augment=augments[0], teacher="pair_mean"),
                               loss=dataclasses.replace(cfg.loss, teacher_top_k=0))
    accelerator = Accelerator(cpu=True, mixed_precision="no")
    setup = build(base, accelerator)
    setup.student = None  # not needed: frees its memory
    table, lexicon, V = setup.swap_table, setup.lexicon, setup.vocab_rows
    table.prepare(setup.tokenizer, lexicon)
    plan = swap_plan(table, V, "cpu")
    lists = word_lists(setup.tokenizer, table, V)
    # The probe's ids that begin a word wherever they stand; pair_mean balances all of those in the table.
    lists = {"probe": lists["probe"],
             "probe, leading space": tuple([i for i in side if table.pieces[i][:1].isspace()]
                                           for side in lists["probe"]),
             "table": lists["table"]}
    index = {name: (torch.tensor(m), torch.tensor(f)) for name, (m, f) in lists.items()}
    students = students or {}
    memo = _SameOutputs(setup.teacher)
    audit_setup = dataclasses.replace(setup, teacher=memo)
    masses, kinds, blocks = {}, {}, {}
    for aug in augments:
        if aug == augments[0]:
            train_blocks = setup.train_blocks
        else:
            cfg_a = dataclasses.replace(base, crr=dataclasses.replace(base.crr, augment=aug))
            train_blocks = _data(cfg_a, accelerator, setup.teacher, setup.tokenizer, lexicon)[0]
        n = len(train_blocks) if max_blocks is None else min(max_blocks, len(train_blocks))
        sampler = BlockSampler(len(train_blocks), 1, 1, 1, 0, cfg.seed)  # the order a run of this seed sees
        order = [sampler.next_step()[0][0] for _ in range(n)]
        columns = [*modes, *(f"student {name}" for name in students)]
        per_mode = {m: {name: ([], []) for name in lists} for m in columns}
        kind_parts: dict[str, list] = {}
        t0 = time.perf_counter()
        for start in range(0, n, batch_size):
            ids = train_blocks[order[start : start + batch_size]]["input_ids"]
            for k, v in position_kinds(ids, setup.tokenizer, table, lexicon, plan).items():
                kind_parts.setdefault(k, []).append(v)
            memo.memo.clear()
            for mode in modes:
                cfg_m = dataclasses.replace(base, crr=dataclasses.replace(base.crr, augment=aug, teacher=mode))
                probs = batch_targets(cfg_m, audit_setup, ids)[0].probs[:, :-1].reshape(-1, V)
                _add_masses(per_mode[mode], probs, index)
            for name, student in students.items():
                probs = student_probs(student, ids, V, cfg.loss.temperature)
                _add_masses(per_mode[f"student {name}"], probs, index)
            if show_progress:
                done = min(start + batch_size, n)
                print(f"  augment={aug}: {done}/{n} blocks, {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        memo.memo.clear()
        masses[aug] = {m: {name: (np.concatenate(a), np.concatenate(b)) for name, (a, b) in d.items()}
                       for m, d in per_mode.items()}
        kinds[aug] = {k: np.concatenate(v) for k, v in kind_parts.items()}
        blocks[aug] = order
    return Collected(masses, kinds, blocks, lists)


def student_probs(student: torch.nn.Module, ids: torch.Tensor, vocab_rows: int, temperature: float) -> torch.Tensor:
    """A student's next-token distribution at positions 0..T-2 of each row, at the loss temperature, as the
    targets are made: softmax over the first `vocab_rows` logits in fp32. Shape (B * (T-1), vocab_rows)."""
    with torch.inference_mode():
        logits = student(input_ids=ids.to(next(student.parameters()).device)).logits[:, :-1, :vocab_rows]
    return torch.softmax(logits.float().cpu() / temperature, -1).reshape(-1, vocab_rows)


def _add_masses(per_list: dict, probs: torch.Tensor, index: dict) -> None:
    for name, (m_ix, f_ix) in index.items():
        per_list[name][0].append(probs[:, m_ix].sum(-1).double().numpy())
        per_list[name][1].append(probs[:, f_ix].sum(-1).double().numpy())


def kind_masks(kinds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every row of KINDS as a bool mask over the positions."""
    g, c, m = kinds["gendered word before"], kinds["next word capitalised"], kinds["last gendered word male"]
    cont, after_w = kinds["next token continues a word"], kinds["after a word character"]
    return dict(zip(KINDS, (np.ones_like(g), g, ~g, m, g & ~m, ~cont, cont, ~after_w, after_w, c, ~c),
                    strict=True))


def figures(pm: np.ndarray, pf: np.ndarray) -> dict:
    """n, mean masses, mean log ratio and pooled log ratio of the positions given."""
    if len(pm) == 0:
        return {"n": 0, "mean_pm": None, "mean_pf": None, "mean_logratio": None, "pooled_logratio": None}
    lr = np.log(np.maximum(pm, TINY)) - np.log(np.maximum(pf, TINY))
    sm, sf = float(pm.sum()), float(pf.sum())
    pooled = math.log(max(sm, TINY)) - math.log(max(sf, TINY))
    return {"n": int(len(pm)), "mean_pm": float(pm.mean()), "mean_pf": float(pf.mean()),
            "mean_logratio": float(lr.mean()), "pooled_logratio": pooled}


def summarise(col: Collected) -> dict:
    """figures per augment, mode, word list and position kind."""
    out = {}
    for aug, by_mode in col.masses.items():
        masks = kind_masks(col.kinds[aug])
        out[aug] = {mode: {name: {kind: figures(pm[mask], pf[mask]) for kind, mask in masks.items()}
                           for name, (pm, pf) in lists.items()}
                    for mode, lists in by_mode.items()}
    return out


def _names(spec: str, allowed: tuple, what: str) -> list[str]:
    from distill.errors import UserError
    from distill.train.targets import MODES as ALL_MODES

    allowed = ALL_MODES if what == "--modes" else allowed
    items = [x.strip() for x in spec.split(",") if x.strip()]
    bad = [x for x in items if x not in allowed]
    if bad or not items:
        raise UserError(f"{what} {spec!r}: choose from {', '.join(allowed)}, comma-separated")
    return list(dict.fromkeys(items))


def _student_dirs(specs: list[str]) -> dict[str, str]:
    """NAME=DIR pairs, each DIR a directory with a config.json; checked before any model loads."""
    from distill.errors import UserError

    dirs: dict[str, str] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise UserError(f"--student {spec!r}: write NAME=DIR, e.g. crr=out/demo_runs/crr/final")
        if name in dirs:
            raise UserError(f"--student {name} is given twice: give each student its own name")
        if not (Path(path) / "config.json").is_file():
            raise UserError(f"--student {name}={path}: no config.json there; give a `distill train` run's final/ "
                            "directory (or any Hugging Face model directory)")
        dirs[name.strip()] = path
    return dirs


def _load_student(path: str, cfg) -> torch.nn.Module:
    """fp32, eval mode, with the recipe's tokenizer: a student of another tokenizer cannot be scored here."""
    from distill.errors import UserError
    from distill.models import load_model, load_tokenizer

    teacher_tok = load_tokenizer(cfg.teacher.name_or_path)
    student_tok = load_tokenizer(path)
    if student_tok.get_vocab() != teacher_tok.get_vocab():
        raise UserError(f"--student {path}: its tokenizer is not the recipe's teacher's; audit it with the "
                        "recipe it was trained from")
    return load_model(path, "float32").eval()


def _print_json(path: str) -> int:
    from distill.errors import UserError

    try:
        res = json.loads(Path(path).read_text(encoding="utf-8"))
        text = markdown(res["figures"], res["id_counts"], {a: len(b) for a, b in res["blocks"].items()})
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"--from-json {path}: not an --out file of this command ({type(exc).__name__}: {exc})") \
            from None
    print(text)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m distill.bench.audit_targets", description=__doc__.split("\n\n")[0])
    p.add_argument("--recipe", help="the recipe whose teacher, data and temperature are audited")
    p.add_argument("--from-json", help="print the tables of an earlier --out file instead (no model runs)")
    p.add_argument("--modes", default=",".join(MODES), help=f"teacher modes (default {','.join(MODES)})")
    p.add_argument("--augment", default=",".join(AUGMENTS),
                   help="training inputs: the corpus packed with each of these crr.augment values (default none,both)")
    p.add_argument("--max-blocks", type=int, default=0,
                   help="blocks per augmentation, the first a run of the recipe's seed trains on (default 0: all)")
    p.add_argument("--batch-size", type=int, default=8, help="blocks per teacher call (default 8)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    p.add_argument("--student", action="append", default=[], metavar="NAME=DIR",
                   help="also score a trained student (a `distill train` final/ dir) on the same positions; repeatable")
    p.add_argument("--out", help="also write the figures as JSON here")
    p.add_argument("overrides", nargs="*", help="recipe overrides key=value")
    args = p.parse_args(argv)
    from distill.config import load_config
    from distill.errors import UserError

    try:
        if args.from_json:
            return _print_json(args.from_json)
        if not args.recipe:
            raise UserError("give --recipe (a recipe to audit) or --from-json (an earlier --out file)")
        modes = _names(args.modes, MODES, "--modes")
        augments = _names(args.augment, ("none", "replace", "both"), "--augment")
        if args.max_blocks < 0 or args.batch_size < 1:
            raise UserError("--max-blocks must be >= 0 (0: all) and --batch-size >= 1")
        student_dirs = _student_dirs(args.student)
        cfg = load_config(args.recipe, args.overrides)
    except UserError as exc:
        print(f"audit_targets: error: {exc}", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    try:
        students = {name: _load_student(path, cfg) for name, path in student_dirs.items()}
    except UserError as exc:
        print(f"audit_targets: error: {exc}", file=sys.stderr)
        return 2
    col = collect(cfg, modes=modes, augments=augments, max_blocks=args.max_blocks or None,
                  batch_size=args.batch_size, students=students)
    summary = summarise(col)
    id_counts = {name: [len(m), len(f)] for name, (m, f) in col.ids.items()}
    print(markdown(summary, id_counts, {a: len(b) for a, b in col.blocks.items()}))
    print(f"\n({args.recipe}, seed {cfg.seed}, temperature {cfg.loss.temperature}; "
          f"{time.perf_counter() - t0:.0f} s)")
    if args.out:
        write_json_atomic(args.out, {"recipe": args.recipe, "overrides": args.overrides, "blocks": col.blocks,
                                     "id_counts": id_counts, "figures": summary})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
