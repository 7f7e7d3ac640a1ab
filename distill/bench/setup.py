"""The pieces every benchmark section shares: shapes, threads, batches, configurations, the model setup and
one optimizer step (`Trainer.step`: `train.step.kd_step`, the step `train.loop.fit` runs, timed per phase
through its `phases` hook). What is measured, and how, is documented in `distill.bench.run`."""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from distill.hardware import usable_cores

ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT / "data" / "tiny_corpus.txt"
TOP_K = 64  # loss.teacher_top_k of the kd_topk_cached configuration
STEP_CONFIGS = ("ce", "kd", "kd_topk_cached", "crr", "crr_block", "kd_compiled")  # the last with --compile


def settings_for(tiny: bool) -> dict:
    """Model shapes and sizes of every measurement; written to the JSON as they are."""
    if tiny:
        return {
            "tiny": True,
            "teacher": {"model_type": "gpt2", "n_layer": 4, "n_embd": 32, "n_head": 2, "vocab_size": 1024,
                        "n_positions": 64},
            "student_layers": [0, 3], "seq_len": 32, "batch_size": 5, "gendered_share": 0.4, "augment_p": 0.5,
            "tokenizer_vocab": 512, "chunk_size": 0, "repeats": 1, "matmul_n": 128,
            "gen": {"model": "student", "n_prompts": 4, "batch_size": 4, "max_new_tokens": 4, "repeats": 1},
            "cda_bytes": 20_000, "token_swap_batches": 2, "memory_fresh_process_per_config": False,
        }
    return {
        "tiny": False,
        "teacher": {"model_type": "gpt2", "n_layer": 12, "n_embd": 768, "n_head": 12, "vocab_size": 50257,
                    "n_positions": 1024},
        "student_layers": [0, 2, 4, 7, 9, 11], "seq_len": 128, "batch_size": 8, "gendered_share": 0.4,
        "augment_p": 0.5, "tokenizer_vocab": 4096, "chunk_size": 0, "repeats": 6, "matmul_n": 2048,
        "gen": {"model": "student", "n_prompts": 64, "batch_size": 64, "max_new_tokens": 16, "repeats": 2},
        "cda_bytes": 2_000_000, "token_swap_batches": 16, "memory_fresh_process_per_config": True,
    }


def choose_threads() -> tuple[int, str]:
    cores = len(usable_cores())
    if os.environ.get("DISTILL_BENCH_THREADS"):
        return int(os.environ["DISTILL_BENCH_THREADS"]), "DISTILL_BENCH_THREADS"
    load = os.getloadavg()[0]
    if cores > 1 and load >= cores - 0.5:
        return 1, f"1-minute load average {load:.2f} >= {cores} cores - 0.5: 1 thread (see module docstring)"
    return cores, f"load average {load:.2f} below the {cores} cores: all cores"


def corpus_lines() -> list[str]:
    return [line for line in CORPUS.read_text(encoding="utf-8").splitlines() if line.strip()]


def build_tokenizer(settings: dict, workdir: Path):
    """A byte-level BPE trained on the corpus, saved under workdir/tokenizer (the config names a directory)."""
    from distill.models import train_byte_bpe_tokenizer

    tok = train_byte_bpe_tokenizer(corpus_lines(), settings["tokenizer_vocab"])
    path = workdir / "tokenizer"
    tok.save_pretrained(path)
    return tok, path


def build_batches(tokenizer, lexicon, settings: dict, n_batches: int, seed: int = 0) -> tuple[list[dict], dict]:
    """`n_batches` batches of (batch_size, seq_len) ids. A share `gendered_share` of all rows (spread evenly over
    the batches) holds one line with gendered words after 0-2 lines without any (fewer where it would not fit);
    the other rows hold only lines without. Each row starts after an EOS, like a block that begins at a
    document. Gendered lines are swapped with probability augment_p (text-level CDA, crr.augment=replace)."""
    rng = random.Random(seed)
    B, T = settings["batch_size"], settings["seq_len"]
    eos = tokenizer.eos_token_id
    lines = corpus_lines()
    gendered = [x for x in lines if lexicon.has_gendered_word(x)]
    plain = [x for x in lines if not lexicon.has_gendered_word(x)]
    enc = {x: tokenizer(x, add_special_tokens=False)["input_ids"] for x in lines}
    n_rows = B * n_batches
    n_gendered = round(settings["gendered_share"] * n_rows)
    flags = []
    for b in range(n_batches):  # spread evenly: batch b holds its share of the gendered rows, at random rows
        k = n_gendered * (b + 1) // n_batches - n_gendered * b // n_batches
        row_flags = [i < k for i in range(B)]
        rng.shuffle(row_flags)
        flags += row_flags
    rows, swapped = [], []
    for is_g in flags:
        ids = [eos]
        did_swap = False
        if is_g:
            line = rng.choice(gendered)
            if rng.random() < settings["augment_p"]:
                line, did_swap = lexicon.swap_text(line), True
            g_ids = tokenizer(line, add_special_tokens=False)["input_ids"] + [eos]
            for _ in range(rng.randint(0, 2)):  # lines before it, as long as the gendered line still fits
                before = enc[rng.choice(plain)] + [eos]
                if len(ids) + len(before) + len(g_ids) <= T:
                    ids += before
            ids += g_ids
        while len(ids) < T:
            ids += enc[rng.choice(plain)] + [eos]
        rows.append(ids[:T])
        swapped.append(did_swap)
    batches = []
    for b in range(n_batches):
        sl = slice(b * B, (b + 1) * B)
        batches.append({"input_ids": torch.tensor(rows[sl], dtype=torch.long),
                        "swapped": torch.tensor(swapped[sl], dtype=torch.bool),
                        "blocks": list(range(b * B, (b + 1) * B))})  # keys of the top-k target cache
    return batches, {"rows": n_rows, "rows_with_gendered_line": sum(flags), "rows_text_swapped": sum(swapped)}


def make_configs(settings: dict, tokenizer_dir: Path, workdir: Path, mixed_precision: str = "no",
                 teacher_dtype: str = "float32") -> dict:
    """The three step configurations, through `config.config_from_dict` (validated like a recipe)."""
    from distill.config import config_from_dict

    base = {
        "output_dir": str(workdir / "run"), "seed": 0,
        "teacher": {"config": dict(settings["teacher"]), "tokenizer": str(tokenizer_dir),
                    "dtype": teacher_dtype},
        "student": {"from_teacher_layers": list(settings["student_layers"])},
        "data": {"path": str(CORPUS), "block_size": settings["seq_len"]},
        "train": {"batch_size": settings["batch_size"], "lr": 5e-4, "weight_decay": 0.01, "max_grad_norm": 1.0,
                  "mixed_precision": mixed_precision},
        "loss": {"alpha_kd": 1.0, "alpha_ce": 0.5, "temperature": 2.0, "divergence": "forward_kl",
                 "chunk_size": settings["chunk_size"]},
        "crr": {"augment": "none", "teacher": "none"},
    }
    ce = {**base, "loss": {**base["loss"], "alpha_kd": 0.0, "alpha_ce": 1.0}}
    crr = {**base, "crr": {"augment": "replace", "p": settings["augment_p"], "teacher": "cf_mean"}}
    crr_block = {**crr, "crr": {**crr["crr"], "cf_scope": "block"}}
    cached = {**base, "loss": {**base["loss"], "teacher_top_k": TOP_K}}
    cfgs = {"ce": ce, "kd": base, "kd_topk_cached": cached, "crr": crr, "crr_block": crr_block}
    if settings.get("compile"):
        cfgs["kd_compiled"] = {**base, "train": {**base["train"], "compile": True}}
    return {name: config_from_dict(c) for name, c in cfgs.items()}


def build_setup(cfg, tokenizer, device: torch.device, with_teacher: bool = True):
    """A `train.setup.Setup` as `train.setup.build` makes it (teacher frozen in eval mode, fp32 student in train mode), with
    the lexicon and swap table for the counterfactual step; data blocks are the benchmark's own batches."""
    from distill import models
    from distill.crr.lexicon import load_lexicon
    from distill.crr.token_table import build_token_swap_table
    from distill.train.setup import Setup

    teacher = models.build_random_model(cfg.teacher.config, tokenizer, seed=cfg.seed)
    teacher.to(dtype=models.DTYPES[cfg.teacher.dtype]).eval().requires_grad_(False)
    student = models.student_from_teacher_layers(teacher, list(cfg.student.from_teacher_layers))
    student.float().train()
    vocab_rows = models.shared_vocab_size(teacher, student, len(tokenizer))
    teacher.to(device)
    student.to(device)
    lexicon = load_lexicon()
    table = build_token_swap_table(tokenizer, lexicon)
    if not with_teacher:
        teacher = None
    from distill.train.target_cache import TopKTargetCache

    return Setup(teacher, student, tokenizer, None, None, vocab_rows, lexicon, table, None,
                 TopKTargetCache(TOP_K, vocab_rows))


def fill_target_cache(setup, cfg, batches: list[dict]) -> float:
    """Put every batch's top-k targets in the cache, as a first epoch would; returns the mean kept mass."""
    from distill.train.step import batch_targets

    device = next(setup.teacher.parameters()).device
    cache = setup.target_cache
    kept = []
    for b in batches:
        ids = b["input_ids"].to(device)
        todo = cache.missing(b["blocks"])
        if todo:
            targets, _ = batch_targets(cfg, setup, ids[todo])
            cache.put([b["blocks"][i] for i in todo], targets.probs, targets.changed_share)
        kept.append(cache.get(b["blocks"], device)[2])
    return statistics.mean(kept)


def count_flops(setup, settings: dict) -> dict:
    """Parameter counts and analytic FLOPs per KD step (what is counted: see `distill.bench`)."""
    from distill.models import count_parameters

    n_t = count_parameters(setup.teacher)
    n_s = count_parameters(setup.student)
    tokens = settings["batch_size"] * settings["seq_len"]
    return {
        "n_teacher": n_t, "n_student": n_s, "tokens_per_step": tokens,
        "embeddings_counted": "yes: the tied token embedding once (it is the LM head matmul), position "
                              "embedding too",
        "kd_step_flops": (2 * n_t + 6 * n_s) * tokens, "ce_step_flops": 6 * n_s * tokens,
        "not_counted": "attention scores (4*T*d per token per layer forward, ~3% at T=128), loss, optimizer",
        "kd_over_ce_theoretical": (2 * n_t + 6 * n_s) / (6 * n_s),
    }


class PhaseTimer:
    """The `phases` hook of `kd_step`: seconds spent in each named phase, the device synchronised at both ends."""

    def __init__(self, device: torch.device):
        self.device = device
        self.spent: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str):
        sync_device(self.device)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            sync_device(self.device)
            self.spent[name] = self.spent.get(name, 0.0) + time.perf_counter() - t0


class Trainer:
    """One student and one AdamW shared by every configuration (only the loss and targets differ, and the
    optimizer's cost does not depend on them), set up as `train.loop.fit` does, wrapped by accelerate."""

    def __init__(self, cfg, setup, accelerator):
        from distill.train.setup import make_optimizer, make_scheduler

        opt = make_optimizer(cfg, setup.student)
        self.student, self.optimizer = accelerator.prepare(setup.student, opt)
        self.scheduler = make_scheduler(cfg, self.optimizer)
        self.setup, self.accelerator = setup, accelerator
        self.device = accelerator.device
        self.compiled = None  # torch.compile(student), made on the first step of a train.compile config

    def init_optimizer_state(self) -> None:
        """Allocate AdamW's state with one zero-gradient step, so a measured step starts with it resident."""
        for p in self.student.parameters():
            p.grad = torch.zeros_like(p)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def step(self, cfg, batch: dict, loss_fn=None) -> dict:
        """One `kd_step` on `batch`; returns the seconds of each phase it ran plus "step" (the whole step) and
        "fwd_bwd" (the step less clip and optimizer)."""
        from distill.train.step import kd_step

        student = self.student
        if cfg.train.compile:  # the same module and weights, run through torch.compile as train.loop.fit does
            if self.compiled is None:
                self.compiled = torch.compile(self.student)
            student = self.compiled
        timer = PhaseTimer(self.device)
        with timer("step"):
            kd_step(cfg, self.setup, student, self.optimizer, self.scheduler, self.accelerator, [batch],
                    loss_fn=loss_fn, phases=timer)
        spent = timer.spent
        spent["fwd_bwd"] = spent["step"] - spent["clip"] - spent["optimizer"]
        return spent


def sync_device(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_flops(n: int, device: torch.device, dtype=torch.float32, reps: int = 3) -> float:
    """FLOP/s of an n x n x n matmul, best of `reps` after one untimed run."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    best = math.inf
    for _ in range(reps):
        sync_device(device)
        t0 = time.perf_counter()
        a @ b
        sync_device(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def run_child(spec: dict, workdir: Path, tag: str, env_extra: dict | None = None, timeout: int = 900) -> dict:
    """Run `bench.child_main` on `spec` in a fresh Python process; returns the JSON result it writes."""
    spec = {**spec, "result_path": str(workdir / f"{tag}.result.json")}
    path = workdir / f"{tag}.spec.json"
    path.write_text(json.dumps(spec))
    env = {**os.environ, **(env_extra or {})}
    proc = subprocess.run([sys.executable, "-c", "import sys; from distill.bench.run import child_main; "
                           "child_main(sys.argv[1])", str(path)],
                          capture_output=True, text=True, env=env, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark child {tag} failed: {proc.stderr[-2000:]}")
    return json.loads(Path(spec["result_path"]).read_text())

