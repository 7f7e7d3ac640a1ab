"""Throughput of the text swap (`Lexicon.swap_text`), the work of counterfactual data augmentation.

    python -c "from distill.bench.swap import benchmark_swap; print(benchmark_swap())"

`distill bench` reports it as cda_mb_per_s (`distill.bench.generation.measure_swaps`).
"""

from __future__ import annotations

import random
import time

from distill.crr.lexicon import Lexicon, load_lexicon

# 5 of the 12 contain gendered words.
_BENCH_SENTENCES = (
    "He told his sister that the new manager would start on Monday.",
    "The committee met for three hours and agreed on nothing but the date of the next meeting.",
    "Mary thanked her father for the loan and promised to pay him back by spring.",
    "Rain fell over the valley for most of the week, and the river rose above the old stone bridge.",
    "Mr. Patel said the waiter had already brought the bill to the table.",
    "A good recipe for bread needs only flour, water, salt, yeast and patience.",
    "The princess and her brothers rode out at dawn to meet the king's envoy.",
    "Prices of coffee went up again this quarter because of a poor harvest in several regions.",
    "She said the book on the shelf was his, not hers.",
    "The train left the station late, so most passengers missed their connection in the city.",
    "The engineers measured the load on each beam twice before they signed the report.",
    "The old lighthouse keeper kept a log of every ship that passed during the storm.",
)


def swap_bench_text(n_bytes: int, seed: int = 0) -> str:
    """About n_bytes of the sentences above, shuffled into lines of 1-6 sentences drawn with
    `seed`."""
    rng = random.Random(seed)
    parts, size = [], 0
    while size < n_bytes:
        line = " ".join(rng.choice(_BENCH_SENTENCES) for _ in range(rng.randint(1, 6))) + "\n"
        parts.append(line)
        size += len(line)
    return "".join(parts)


def benchmark_swap(n_bytes: int = 5_000_000, lexicon: Lexicon | None = None, text: str | None = None,
                   repeats: int = 3, seed: int = 0) -> dict:
    """Throughput of `Lexicon.swap_text` on `text` (default: `swap_bench_text(n_bytes, seed)`), best of
    `repeats`; `changed_lines` counts the lines the swap changed."""
    lexicon = lexicon or load_lexicon()
    if text is None:
        text = swap_bench_text(n_bytes, seed)
    nbytes = len(text.encode("utf-8"))
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = lexicon.swap_text(text)
        best = min(best, time.perf_counter() - t0)
    changed = sum(a != b for a, b in zip(text.splitlines(), out.splitlines(), strict=True))
    return {"bytes": nbytes, "seconds": best, "mb_per_s": nbytes / 1e6 / best, "lines": text.count("\n"),
            "changed_lines": changed}
