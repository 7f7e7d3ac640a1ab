"""Utility of a model on held-out text: perplexity and top-1 agreement with the teacher.

    from distill.eval.utility import UtilityScorer, load_text
    scorer = UtilityScorer(load_text("data/heldout.txt"), teacher_tokenizer)
    scorer.score(teacher, teacher_tokenizer, device, is_teacher=True)   # the teacher first
    scorer.score(student, student_tokenizer, device)                    # {"perplexity": ..., ...}

Held-out documents are tokenised without special tokens and packed with EOS between them, cut at
MAX_EVAL_TOKENS, and cut into non-overlapping windows of the model's context (at most WINDOW tokens).
Perplexity is token-weighted over all windows. Top-1 agreement is the share of positions whose argmax token
equals the teacher's on the same windows; the teacher's argmax ids are kept (small int tensors), so a
student's agreement is computed without holding two models. A student with another tokenizer (or context
window) gets a null agreement and a note.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from distill.errors import UserError
from distill.eval.runtime import plain_forward

MAX_EVAL_TOKENS = 16384  # held-out tokens scored per model: enough for a stable perplexity
WINDOW = 256  # perplexity window length (capped by each model's context)
NO_SHARED_TOKENIZER = ("teacher agreement is null: this model does not share the teacher's tokenizer (or context "
                       "window), so positions cannot be compared")


# ------------------------------------------------------------------------------------------ held-out text


def load_text(spec: str) -> list[str]:
    """Held-out documents: a .txt file (one document), a .jsonl file ({"text": ...} per line), or a hub
    dataset 'NAME[:CONFIG]' (its test split, else validation, else train; column 'text')."""
    path = Path(spec).expanduser()
    if path.is_file():
        from distill.inputs import check_text_file

        check_text_file(path, "--text")  # a binary file would otherwise be decoded with replacements and scored
        raw = path.read_text(encoding="utf-8")
        if path.suffix == ".jsonl":
            docs = []
            for n, line in enumerate(raw.splitlines(), 1):
                if line.strip():
                    try:
                        docs.append(str(json.loads(line)["text"]))
                    except (json.JSONDecodeError, KeyError, TypeError) as exc:
                        raise UserError(f"--text {spec}: line {n} is not a JSON object with a 'text' field") from exc
        else:
            docs = [raw]
    elif path.suffix in (".txt", ".jsonl", ".json") or spec.startswith((".", "/", "~")) or path.parent.is_dir() and os.sep in spec:
        raise UserError(f"--text file {spec!r} not found")
    else:
        docs = _load_text_dataset(spec)
    docs = [d for d in docs if d.strip()]
    if not docs:
        raise UserError(f"--text {spec!r} holds no text")
    return docs


def _load_text_dataset(spec: str) -> list[str]:
    name, _, config = spec.partition(":")
    try:
        import datasets

        splits = datasets.load_dataset(name, config or None)
        split = next(s for s in ("test", "validation", "train") if s in splits)
        ds = splits[split]
    except Exception as exc:  # network, unknown name, no usable split: one user-facing line
        first = (str(exc).strip() or type(exc).__name__).splitlines()[0][:200]
        raise UserError(f"could not load --text dataset {spec!r} ({first}); give a .txt or .jsonl file instead") from exc
    if "text" not in ds.column_names:
        raise UserError(f"--text dataset {spec!r} has no 'text' column ({ds.column_names})")
    docs, chars = [], 0
    for text in ds["text"]:
        docs.append(text)
        chars += len(text)
        if chars > 8 * MAX_EVAL_TOKENS:  # plenty for MAX_EVAL_TOKENS tokens; don't tokenise a whole corpus
            break
    return docs


def token_stream(tokenizer, docs: list[str]) -> list[int]:
    """Documents tokenised without special tokens and packed with EOS between them, cut at MAX_EVAL_TOKENS."""
    ids: list[int] = []
    for doc in docs:
        if ids and tokenizer.eos_token_id is not None:
            ids.append(tokenizer.eos_token_id)
        ids.extend(tokenizer(doc, add_special_tokens=False)["input_ids"])
        if len(ids) >= MAX_EVAL_TOKENS:
            break
    return ids[:MAX_EVAL_TOKENS]


def context_length(model) -> int:
    cfg = model.config
    n = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None) or WINDOW
    return min(WINDOW, int(n))


# ------------------------------------------------------------------------------------------------ scores


class UtilityScorer:
    """Perplexity and teacher agreement run by run, the teacher's run first (it keeps its windows and argmax)."""

    def __init__(self, docs: list[str], teacher_tokenizer):
        self.docs, self.teacher_tokenizer = docs, teacher_tokenizer
        self.teacher_windows, self.teacher_argmax = None, None

    def score(self, model, tokenizer, device, is_teacher: bool = False, forward=plain_forward) -> dict:
        """{"perplexity", "perplexity_tokens", "teacher_agreement", "notes"} of one loaded model; `forward`
        runs it (`distill.eval.shared_prefix`)."""
        from distill.models import check_same_tokenizer

        windows = make_windows(token_stream(tokenizer, self.docs), context_length(model))
        nll, n_tok, argmax = score_windows(model, windows, len(tokenizer), batch_size=8, device=device,
                                           forward=forward)
        out = {"perplexity": perplexity(nll, n_tok), "perplexity_tokens": n_tok, "teacher_agreement": None,
               "notes": []}
        if is_teacher:
            self.teacher_windows, self.teacher_argmax, out["teacher_agreement"] = windows, argmax, 1.0
            return out
        try:
            check_same_tokenizer(self.teacher_tokenizer, tokenizer)
            same = windows == self.teacher_windows
        except UserError:
            same = False
        if same:
            out["teacher_agreement"] = top1_agreement(self.teacher_argmax, argmax)
        else:
            out["notes"].append(NO_SHARED_TOKENIZER)
        return out


def make_windows(token_ids: Sequence[int], block: int) -> list[list[int]]:
    """Cut a packed token stream into non-overlapping windows of `block` tokens (the last may be shorter).

    A trailing window of one token predicts nothing and is dropped.
    """
    if block < 2:
        raise ValueError("window length must be >= 2")
    ids = list(token_ids)
    windows = [ids[i : i + block] for i in range(0, len(ids), block)]
    return [w for w in windows if len(w) >= 2]


def score_windows(model, windows: Sequence[Sequence[int]], vocab_rows: int, batch_size: int = 8, device=None,
                  forward=plain_forward):
    """Sum of next-token NLL, number of predicted tokens and per-window argmax ids over `windows`.

    Logits are upcast to fp32 before the loss (a bf16 model otherwise loses precision in log-softmax) and
    sliced to `vocab_rows` (the tokenizer's size), so padded embedding rows never win an argmax. Windows
    are right-padded within a batch; causal attention keeps real positions blind to the pads after them,
    and padded positions are excluded from the loss.
    Returns (nll_sum: float, n_tokens: int, argmax: list of int32 CPU tensors, one per window, length-1 each).
    `forward(module, **inputs)` runs the model (`distill.eval.shared_prefix` may start it past shared blocks).
    """
    import torch
    import torch.nn.functional as F

    from distill.models import right_padded

    device = device or next(model.parameters()).device
    nll, n_tok, argmax = 0.0, 0, []
    with torch.inference_mode():
        for start in range(0, len(windows), batch_size):
            batch = windows[start : start + batch_size]
            ids, mask = right_padded([list(w) for w in batch], 0)  # pads are masked out of the loss
            ids, mask = ids.to(device), mask.to(device)
            logits = forward(model, input_ids=ids, attention_mask=mask).logits[:, :-1, :vocab_rows].float()
            targets = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
            nll += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                         ignore_index=-100, reduction="sum"))
            n_tok += int((targets != -100).sum())
            top = logits.argmax(-1).to("cpu", torch.int32)
            argmax.extend(top[r, : len(w) - 1] for r, w in enumerate(batch))
    return nll, n_tok, argmax


def perplexity(nll_sum: float, n_tokens: int) -> float:
    """exp(total NLL / total predicted tokens): token-weighted over all windows."""
    if n_tokens <= 0:
        raise ValueError("perplexity needs at least one predicted token")
    return math.exp(nll_sum / n_tokens)


def top1_agreement(teacher_argmax: Iterable, student_argmax: Iterable) -> float:
    """Share of positions where the student's argmax equals the teacher's (same windows, same tokenizer)."""
    same = total = 0
    for t, s in zip(teacher_argmax, student_argmax, strict=True):
        if len(t) != len(s):
            raise ValueError("teacher and student argmax windows differ in length")
        same += int((np.asarray(t) == np.asarray(s)).sum())
        total += len(t)
    if total == 0:
        raise ValueError("top-1 agreement needs at least one position")
    return same / total
