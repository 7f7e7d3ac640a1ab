"""Top-k teacher targets, cached per training block so that later epochs skip the teacher (`loss.teacher_top_k`).

    from distill.train.target_cache import TopKTargetCache
    cache = TopKTargetCache(k=64, vocab_rows=rows)
    todo = cache.missing(block_ids)                    # positions in block_ids not cached yet
    cache.put([block_ids[i] for i in todo], teacher_probs_of_those_rows, changed_share)
    probs, changed_share, kept_mass = cache.get(block_ids, device)

What it changes in the loss: the target at each position becomes p on the teacher's k most likely tokens,
with the remaining mass r = 1 - sum(top k) spread evenly over the other V - k tokens:

    p_k[v] = p[v] for v in top-k(p),   p_k[v] = r / (V - k) otherwise

so it is still a distribution, and its total-variation distance from p is at most r (the run logs the mean
kept mass as `teacher_topk_mass`). Spreading r evenly, rather than renormalising the k kept values, keeps the
student from being pushed to put all its mass on k tokens. A pair_mean target keeps p(he) = p(she) only where
both are kept or both are not.

The targets are always the top-k ones, on the first epoch too, so a run's result does not depend on what
happens to be cached. The cache lives in each process's CPU memory (block index -> k ids and k values, 8 bytes
per kept entry) and is rebuilt after a resume: recomputing the targets of a block on a different batch gives the
same values up to float rounding, so a resumed run matches an uninterrupted one to rounding, not bit for bit.
"""

from __future__ import annotations

import torch

BYTES_PER_ENTRY = 8  # int32 id + fp32 probability


def dense_targets(values: torch.Tensor, ids: torch.Tensor, vocab_rows: int) -> torch.Tensor:
    """(..., V) fp32 distribution: `values` at `ids`, the rest of the mass spread evenly over the other ids."""
    k = values.shape[-1]
    values = values.float()
    rest = (1.0 - values.sum(-1, keepdim=True)).clamp_min(0.0) / max(vocab_rows - k, 1)
    out = rest.expand(*values.shape[:-1], vocab_rows).contiguous()
    return out.scatter_(-1, ids.long(), values)


def cache_bytes(n_blocks: int, block_size: int, k: int) -> int:
    """Upper bound of one process's cache: every block seen by that process."""
    return n_blocks * block_size * k * BYTES_PER_ENTRY


class TopKTargetCache:
    """Block index -> the teacher's top-k targets for that block (ids int32, values fp32, on the CPU)."""

    def __init__(self, k: int, vocab_rows: int):
        if not 0 < k <= vocab_rows:
            raise ValueError(f"k must be in 1..{vocab_rows}, got {k}")
        self.k, self.vocab_rows = k, vocab_rows
        self.store: dict[int, tuple[torch.Tensor, torch.Tensor, float]] = {}
        self.hits = self.misses = 0

    @property
    def hit_share(self) -> float:
        """Share of the rows served from the cache so far."""
        return self.hits / max(1, self.hits + self.misses)

    def missing(self, blocks: list[int]) -> list[int]:
        """Positions i of `blocks` whose targets are not cached yet (counted as misses; the rest as hits)."""
        missing = [i for i, b in enumerate(blocks) if b not in self.store]
        self.misses += len(missing)
        self.hits += len(blocks) - len(missing)
        return missing

    def put(self, blocks: list[int], probs: torch.Tensor, changed_share: float) -> None:
        """Cache the top-k of `probs` (len(blocks), T, V), the full targets of `blocks`."""
        values, ids = torch.topk(probs, self.k, dim=-1, sorted=False)
        values, ids = values.to("cpu"), ids.to("cpu", torch.int32)
        for j, b in enumerate(blocks):
            self.store[b] = (ids[j].clone(), values[j].clone(), changed_share)

    def get(self, blocks: list[int], device: torch.device) -> tuple[torch.Tensor, float, float]:
        """Dense (B, T, V) top-k targets of cached `blocks` on `device`, with the changed share and the mean kept
        mass (the first averaged over the rows as they were when computed)."""
        entries = [self.store[b] for b in blocks]
        ids = torch.stack([e[0] for e in entries]).to(device)
        values = torch.stack([e[1] for e in entries]).to(device)
        changed = sum(e[2] for e in entries) / len(entries)
        kept = values.sum(-1).mean().item()
        return dense_targets(values, ids, self.vocab_rows), changed, kept
