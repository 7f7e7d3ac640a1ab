"""Batched sampling generation for prompt sets, reproducible across models: the project's one sampling loop.

    from distill.sampling import SamplingConfig, generate_samples
    texts = generate_samples(model, tok, ["The nurse said that"], SamplingConfig(samples_per_prompt=4))
    texts[0]  # four continuations of the first prompt (new text only, prompt not repeated)

Prompts go through the model in batches of `batch_size` prompts, each with K samples
(`num_return_sequences`), left-padded so every row's last real token sits at the end and the KV cache of
`model.generate` serves all rows. The random stream of batch b is seeded with a number derived from
(seed, b) alone, so two calls with the same prompts and seed give identical text for one model, and two
models see the same prompts in the same batches under the same seeds (a paired design: differences between
models come from the models, not from which random numbers they drew). The global RNG state is restored
afterwards.

`sample_batches` is that loop, shared by `generate_samples` (`distill eval`, `distill samples`) and the
teacher-written transfer set (`transfer.sample_continuations`), so one seeding scheme and one sampler serve all.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import LogitsProcessor, LogitsProcessorList


@dataclass(frozen=True)
class SamplingConfig:
    samples_per_prompt: int = 4
    max_new_tokens: int = 30
    batch_size: int = 32
    top_k: int = 40  # BOLD's GPT-2 setting
    top_p: float = 0.95  # BOLD's GPT-2 setting
    temperature: float = 1.0  # sampling temperature only; unrelated to the distillation loss temperature
    seed: int = 0


def batch_seed(seed: int, batch_index: int) -> int:
    """A well-mixed 63-bit seed for batch `batch_index`, a function of (seed, batch_index) only."""
    return int(np.random.SeedSequence([seed, batch_index]).generate_state(2, np.uint64)[0] >> np.uint64(1))


def prepare_tokenizer(tokenizer) -> None:
    """Left padding (decoder-only generation appends at the right end) and a pad token."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token


def _device_of(model) -> torch.device:
    return next(model.parameters()).device


def _rng_devices(device: torch.device) -> list[int]:
    if device.type == "cuda":
        return [device.index if device.index is not None else torch.cuda.current_device()]
    return []


class TopKTopPSampler(LogitsProcessor):
    """Draw the next token from the top-k, top-p distribution at `temperature`, as a logits processor for greedy
    decoding: it returns 0 at the drawn token and -inf elsewhere, so the argmax picks it.

    The distribution is that of transformers' temperature -> top-k -> top-p warpers and multinomial draw (a
    token is dropped when the candidates more probable than it already hold top_p of the mass; the most probable
    is always kept; ties at the k-th value keep exactly k here), but the only per-step work over the whole
    vocabulary is one topk, one fill and one scatter. transformers sorts the full vocabulary for top-p and draws
    over all of it (an exponential variate per vocabulary entry), which on CPU can cost more than the model
    itself at large batches (measured figures: the README, "The transfer-set sampler"). The random
    stream is the global torch generator, seeded per batch, so results stay reproducible; they differ from
    transformers' own sampler for the same seed because fewer random numbers are drawn.
    """

    def __init__(self, top_k: int, top_p: float, temperature: float):
        if top_k < 1 or not 0.0 < top_p <= 1.0 or not temperature > 0:
            raise ValueError(f"need top_k >= 1, 0 < top_p <= 1, temperature > 0; got {top_k}, {top_p}, "
                             f"{temperature}")
        self.top_k, self.top_p, self.temperature = top_k, top_p, temperature

    def candidates(self, scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(probs, ids), both (B, top_k): the sampling distribution over each row's top-k ids (sums to 1)."""
        values, index = scores.float().topk(min(self.top_k, scores.shape[-1]), dim=-1)  # descending
        probs = torch.softmax(values / self.temperature, dim=-1)
        if self.top_p < 1.0:
            drop = (probs.cumsum(-1) - probs) >= self.top_p  # mass of the more probable candidates
            drop[..., 0] = False
            probs = probs.masked_fill(drop, 0.0)
            probs = probs / probs.sum(-1, keepdim=True)
        return probs, index

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        probs, index = self.candidates(scores)
        pick = index.gather(-1, torch.multinomial(probs, 1))
        return torch.full_like(scores, float("-inf")).scatter_(-1, pick, 0.0)


@dataclass
class SampledBatch:
    """One batch of `sample_batches`: `start` is the index of its first prompt; `input_ids` / `attention_mask`
    the left-padded prompts (one row per prompt); `new_ids` the generated ids, `samples_per_prompt` rows per
    prompt, prompt-major (prompt 0's samples first), padded after a stop token."""

    start: int
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    new_ids: torch.Tensor


def sample_batches(model, tokenizer, prompts: Sequence[str], cfg: SamplingConfig, *, stop_ids=None,
                   add_special_tokens: bool = True, progress: bool = True, desc: str = "generate",
                   unit: str = "batch"):
    """The one seeded, batched sampling loop of the project (transfer set, `distill eval`, `distill samples`).

    Yields a `SampledBatch` per `cfg.batch_size` prompts. Batch b draws from a generator seeded with
    `batch_seed(cfg.seed, b)` inside a forked RNG, so the caller's random state is untouched and batch b gets the
    same draws whatever ran before it. With top_k > 0 the draw is `TopKTopPSampler` (the distribution of
    transformers' temperature/top-k/top-p warpers, over the k candidates only); top_k = 0 (no top-k cut) falls
    back to transformers' sampler over the whole vocabulary. `stop_ids`: token ids that end a row (default:
    the model's generation config). The tokenizer's padding side and pad token are restored afterwards.
    """
    device = _device_of(model)
    k = cfg.samples_per_prompt
    old_side, old_pad = tokenizer.padding_side, tokenizer.pad_token
    prepare_tokenizer(tokenizer)
    was_training = model.training
    model.eval()
    stop = {} if stop_ids is None else {"eos_token_id": list(stop_ids) or None}
    batches = range(0, len(prompts), cfg.batch_size)
    bar = tqdm(total=len(prompts) if unit == "seq" else len(batches), desc=desc, unit=unit, disable=not progress,
               file=sys.stderr)
    try:
        for b, start in enumerate(batches):
            chunk = list(prompts[start : start + cfg.batch_size])
            enc = tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=add_special_tokens)
            enc = {n: enc[n].to(device) for n in ("input_ids", "attention_mask")}
            with torch.random.fork_rng(devices=_rng_devices(device)), torch.inference_mode():
                torch.manual_seed(batch_seed(cfg.seed, b))  # seeds CPU and every CUDA device
                common = {"max_new_tokens": cfg.max_new_tokens, "pad_token_id": tokenizer.pad_token_id, **stop}
                if cfg.top_k > 0:  # see TopKTopPSampler: same distribution, no per-step work over the whole vocab
                    sampler = TopKTopPSampler(cfg.top_k, cfg.top_p, cfg.temperature)
                    ids = model.generate(
                        **{n: t.repeat_interleave(k, dim=0) for n, t in enc.items()},  # prompt-major rows
                        do_sample=False, logits_processor=LogitsProcessorList([sampler]), **common)
                else:
                    ids = model.generate(**enc, do_sample=True, top_k=0, top_p=cfg.top_p,
                                         temperature=cfg.temperature, num_return_sequences=k, **common)
            yield SampledBatch(start, enc["input_ids"], enc["attention_mask"], ids[:, enc["input_ids"].shape[1]:])
            bar.update(len(chunk) if unit == "seq" else 1)
    finally:
        bar.close()
        tokenizer.padding_side = old_side
        if old_pad is None:
            tokenizer.pad_token = None
        model.train(was_training)


def generate_samples(
    model, tokenizer, prompts: Sequence[str], cfg: SamplingConfig, progress: bool = True, desc: str = "generate"
) -> list[list[str]]:
    """`cfg.samples_per_prompt` sampled continuations per prompt; result[i][k] is sample k of prompt i."""
    k = cfg.samples_per_prompt
    out: list[list[str]] = []
    for batch in sample_batches(model, tokenizer, prompts, cfg, progress=progress, desc=desc):
        texts = tokenizer.batch_decode(batch.new_ids, skip_special_tokens=True)
        out.extend(texts[i * k : (i + 1) * k] for i in range(batch.input_ids.shape[0]))
    return out
