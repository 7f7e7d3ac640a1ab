"""The distillation loop on accelerate: setup -> fit -> evaluate -> save.

    distill train --recipe recipes/debug.yaml
    accelerate launch --num_processes 2 --cpu -m distill train --recipe recipes/debug.yaml

Everything the algorithm does per step is in `fit`: fetch the step's micro-batches, count the step's real
tokens across processes, then per micro-batch: student forward -> teacher targets under inference mode
(plain, pair-equalised or counterfactual-combined) -> losses -> backward; then clip -> optimizer step ->
schedule -> log -> checkpoint. No Trainer subclass and no callbacks.
"""

from __future__ import annotations

import functools
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from distill import checkpoint as ckpt
from distill import engine as eng
from distill.config import Config, check_block_size, describe, load_config
from distill.errors import TrainingDiverged, UserError
from distill.losses import cosine_loss, distill_loss, shift_labels


@dataclass
class Setup:
    """Everything `fit` needs, built once by `build`."""

    teacher: torch.nn.Module
    student: torch.nn.Module
    tokenizer: object
    train_blocks: object
    val_blocks: object
    vocab_rows: int
    lexicon: object = None
    swap_table: object = None
    data_stats: object = None
    target_cache: object = None  # a TopKTargetCache when loss.teacher_top_k > 0
    engine: str = "ddp"  # ddp, fsdp or deepspeed: see distill/engine.py


def build(cfg: Config, accelerator: Accelerator) -> Setup:
    """Load teacher, student, tokenizer and data; refuse incompatible pieces before any training."""
    from distill import models
    from distill.data import build_datasets

    t = cfg.teacher
    tokenizer = models.load_tokenizer(t.tokenizer or t.name_or_path, t.trust_remote_code)
    if t.config is not None:
        teacher = models.build_random_model(t.config, tokenizer, seed=cfg.seed)
    else:
        teacher = models.load_model(t.name_or_path, "float32", t.trust_remote_code)
    teacher.eval().requires_grad_(False)
    check_block_size(cfg.data.block_size, teacher.config, "teacher")

    s = cfg.student
    if s.from_teacher_layers is not None:
        student = models.student_from_teacher_layers(teacher, list(s.from_teacher_layers))
    elif s.config is not None:
        student = models.build_random_model(s.config, tokenizer, seed=cfg.seed + 1)
    else:
        models.check_same_tokenizer(tokenizer, models.load_tokenizer(s.tokenizer or s.name_or_path,
                                                                     s.trust_remote_code))
        student = models.load_model(s.name_or_path, "float32", s.trust_remote_code)
    check_block_size(cfg.data.block_size, student.config, "student")
    student.float().train()  # fp32 master weights; mixed precision is autocast, not a bf16 copy
    if s.train_layers is not None:
        models.freeze_except_layers(student, list(s.train_layers))
    # Only now, with the student copied from full-precision weights, may the teacher drop to its dtype.
    from distill.precision import resolve_dtype

    teacher.to(dtype=models.DTYPES[resolve_dtype(t.dtype, accelerator.device)[0]])
    vocab_rows = models.shared_vocab_size(teacher, student, len(tokenizer))
    if cfg.loss.alpha_cos > 0 and teacher.config.hidden_size != student.config.hidden_size:
        raise UserError(
            f"loss.alpha_cos needs equal hidden widths (teacher {teacher.config.hidden_size}, "
            f"student {student.config.hidden_size}); set loss.alpha_cos=0"
        )
    engine = eng.engine_of(accelerator)
    eng.check_auto_wrap(accelerator, teacher, student)  # FSDP asked for: both models have blocks to shard
    if engine == "ddp":  # a sharded teacher stays on the CPU until it is sharded (end of build)
        teacher.to(accelerator.device)

    lexicon = swap_table = None
    if cfg.crr.augment != "none" or cfg.crr.teacher != "none":
        from distill.crr.lexicon import load_lexicon
        from distill.crr.token_table import build_token_swap_table

        lexicon = load_lexicon(cfg.crr.lexicon, cfg.crr.names)
        if cfg.crr.teacher != "none":
            swap_table = build_token_swap_table(tokenizer, lexicon)

    data_cfg = cfg.data
    if data_cfg.transfer_set is not None:
        from distill.transfer import ensure_transfer_set

        # The main process samples (or reuses) the transfer set; the others wait and then read the cache.
        with accelerator.main_process_first():
            ts = ensure_transfer_set(cfg, teacher if t.config is None else None, tokenizer,
                                     device=accelerator.device, show_progress=accelerator.is_main_process)
        data_cfg = type(data_cfg)(**{**vars(data_cfg), "path": ts.train_path, "validation_path": ts.heldout_path,
                                     "transfer_set": None})
    with accelerator.main_process_first():  # datasets' cache: tokenise once, reuse in the other processes
        train_blocks, val_blocks, stats = build_datasets(data_cfg, cfg.crr, tokenizer, cfg.seed, lexicon)
    global_batch = cfg.train.batch_size * cfg.train.grad_accum * accelerator.num_processes
    if len(train_blocks) < global_batch:
        raise UserError(
            f"the training data has {len(train_blocks)} blocks, fewer than one global batch of {global_batch} "
            "(batch_size x grad_accum x processes); give more text or lower train.batch_size"
        )
    target_cache = _target_cache(cfg, len(train_blocks), vocab_rows)
    # After the transfer set: sampling it runs the teacher on the main process alone, which a sharded teacher
    # cannot do.
    teacher = eng.prepare_teacher(accelerator, teacher, engine, cfg.train.batch_size)
    return Setup(teacher, student, tokenizer, train_blocks, val_blocks, vocab_rows, lexicon, swap_table, stats,
                 target_cache, engine)


def _target_cache(cfg: Config, n_blocks: int, vocab_rows: int):
    """The top-k target cache of `loss.teacher_top_k`, refused when it could not fit in memory."""
    from distill.teacher_cache import TopKTargetCache, cache_bytes

    k = cfg.loss.teacher_top_k
    if not k:
        return None
    if k >= vocab_rows:
        raise UserError(f"loss.teacher_top_k={k} keeps the whole vocabulary of {vocab_rows}; lower it (e.g. 64) "
                        "or set 0 for full targets")
    need = cache_bytes(n_blocks, cfg.data.block_size, k)
    free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else None
    if free is not None and need > free / 2:
        raise UserError(f"loss.teacher_top_k={k} would cache up to {need / 2**30:.1f} GiB for {n_blocks} blocks, "
                        f"more than half of the {free / 2**30:.1f} GiB free; lower loss.teacher_top_k, or set 0")
    return TopKTargetCache(k, vocab_rows)


def lr_lambda(cfg: Config):
    """Linear warmup to the peak, then cosine decay to lr * min_lr_ratio at max_steps."""
    warm, total, floor = cfg.train.warmup_steps, cfg.train.max_steps, cfg.train.min_lr_ratio

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        progress = min(1.0, (step - warm) / max(1, total - warm))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def teacher_output(cfg: Config, setup: Setup, input_ids: torch.Tensor):
    """The teacher's targets for packed rows `input_ids`: the counterfactual batch (cf_* modes), then
    `teacher.teacher_targets` in the recipe's mode."""
    from distill.teacher import teacher_targets

    cf = None
    if cfg.crr.teacher.startswith("cf"):
        from distill.crr.token_swap import counterfactual_batch

        document_end = setup.tokenizer.eos_token_id if cfg.crr.cf_scope == "document" else None
        cf = counterfactual_batch(input_ids.cpu(), setup.tokenizer, setup.swap_table, setup.lexicon, document_end)
        cf = _to_device(cf, input_ids.device)
    return teacher_targets(setup.teacher, input_ids, mode=cfg.crr.teacher, temperature=cfg.loss.temperature,
                           vocab_rows=setup.vocab_rows, table=setup.swap_table, cf=cf,
                           want_hidden=cfg.loss.alpha_cos > 0), cf


def teacher_probs(cfg: Config, setup: Setup, input_ids: torch.Tensor) -> tuple[torch.Tensor, float]:
    """(target probabilities, changed share) of `teacher_output`: what the top-k target cache computes."""
    out, _ = teacher_output(cfg, setup, input_ids)
    return out.probs, out.changed_share


def micro_batch_losses(cfg: Config, setup: Setup, student, input_ids: torch.Tensor, scale: float,
                       blocks: list[int] | None = None) -> dict:
    """Forward both models on one micro-batch; returns the loss to backpropagate and the raw term sums.

    `scale` turns this process's sums into its share of the global mean (see `accumulate_gradients`).
    `blocks`: the training-block index of each row, the key of the top-k target cache (when there is one).
    """
    labels = shift_labels(input_ids)
    want_hidden = cfg.loss.alpha_cos > 0
    cf = target = None
    probs, changed, kept = None, 0.0, 1.0
    if setup.target_cache is not None and blocks is not None:
        probs, changed, kept = setup.target_cache.targets(blocks, input_ids,
                                                          functools.partial(teacher_probs, cfg, setup))
    elif cfg.loss.alpha_kd > 0 or want_hidden:
        target, cf = teacher_output(cfg, setup, input_ids)
        probs, changed = target.probs, target.changed_share
    eng.drain(setup.teacher)  # a sharded teacher: the processes finish their teacher work together
    out = student(input_ids=input_ids, output_hidden_states=want_hidden, use_cache=False)
    logits = out.logits[..., : setup.vocab_rows]
    total, kd_sum, ce_sum = distill_loss(
        logits, probs if cfg.loss.alpha_kd > 0 else None, labels,
        w_kd=cfg.loss.alpha_kd * scale, w_ce=cfg.loss.alpha_ce * scale, temperature=cfg.loss.temperature,
        kind=cfg.loss.divergence, beta=cfg.loss.jsd_beta, chunk_size=cfg.loss.chunk_size,
        reuse_teacher_buffer=True,  # the targets are not read again: their memory holds the gradient
    )
    cos_sum = torch.zeros((), device=input_ids.device)
    if want_hidden:
        cos_sum = cosine_loss(out.hidden_states[-1], target.hidden, labels)
        total = total + cfg.loss.alpha_cos * scale * cos_sum
    return {
        "total": total, "kd": kd_sum.detach(), "ce": ce_sum.detach(), "cos": cos_sum.detach(),
        "changed_share": changed, "topk_mass": kept,
        "cf_exact": cf.n_exact if cf is not None else 0, "cf_aligned": cf.n_aligned if cf is not None else 0,
    }


def _to_device(cf, device):
    for name, value in vars(cf).items():
        if isinstance(value, torch.Tensor):
            setattr(cf, name, value.to(device))
    return cf


@torch.no_grad()
def evaluate(cfg: Config, setup: Setup, student, accelerator: Accelerator) -> dict:
    """Validation: student CE (and perplexity) and plain KD against the teacher, token-weighted."""
    from distill.teacher import teacher_targets

    if setup.val_blocks is None:
        return {}
    student.eval()
    sums = torch.zeros(3, dtype=torch.float64, device=accelerator.device)  # ce, kd, tokens
    bs = cfg.train.batch_size
    n = min(len(setup.val_blocks), cfg.train.eval_batches * bs * accelerator.num_processes)
    # Every process runs the same number of rounds (sharded models need all of them in every forward); a process
    # past the end scores one block with weight 0.
    rounds = -(-n // (bs * accelerator.num_processes))
    for r in range(rounds):
        start = (r * accelerator.num_processes + accelerator.process_index) * bs
        weight = 1.0 if start < n else 0.0
        ids = setup.val_blocks[start : min(start + bs, n)]["input_ids"] if weight else setup.val_blocks[0:1]["input_ids"]
        ids = ids.to(accelerator.device)
        labels = shift_labels(ids)
        with accelerator.autocast():
            target = teacher_targets(setup.teacher, ids, mode="none", temperature=cfg.loss.temperature,
                                     vocab_rows=setup.vocab_rows)
            logits = student(input_ids=ids, use_cache=False).logits[..., : setup.vocab_rows]
        _, kd, ce = distill_loss(logits, target.probs, labels, w_kd=0.0, w_ce=0.0,
                                 temperature=cfg.loss.temperature, kind=cfg.loss.divergence,
                                 beta=cfg.loss.jsd_beta, chunk_size=cfg.loss.chunk_size)
        sums += weight * torch.stack([ce.double(), kd.double(), (labels != -100).sum().double()])
    eng.drain(setup.teacher)
    student.train()
    ce, kd, tokens = accelerator.reduce(sums, "sum").tolist()
    if tokens == 0:
        return {}
    return {"val_ce": ce / tokens, "val_ppl": math.exp(min(ce / tokens, 50.0)), "val_kd": kd / tokens}


def accumulate_gradients(cfg: Config, setup: Setup, student, accelerator: Accelerator, batches: list[dict],
                         step: int, run_dir: Path) -> tuple[int, torch.Tensor, dict]:
    """Forward and backward over one optimizer step's micro-batches; gradients accumulate in `.grad`.

    Every term is divided by n_global, the count of real (label != -100) tokens in ALL micro-batches of the
    step on ALL processes, counted before the first forward. So batch 4 x accum 1 and batch 1 x accum 4 give
    the same gradient, and so do 2 processes x batch 2 and 1 process x batch 4 (TRL issue 4719).
    """
    local_tokens = sum((shift_labels(b["input_ids"]) != -100).sum().item() for b in batches)
    n_global = int(accelerator.reduce(torch.tensor(local_tokens, device=accelerator.device), "sum").item())
    # DDP averages gradients over processes; scaling each process's share by the process count makes that
    # average the global token mean.
    scale = eng.loss_scale(accelerator, setup.engine, len(batches), n_global)
    sums = torch.zeros(4, dtype=torch.float64, device=accelerator.device)  # kd, ce, cos, swapped rows
    extras = {"changed_share": 0.0, "topk_mass": 0.0, "cf_exact": 0, "cf_aligned": 0}
    for m, batch in enumerate(batches):
        ids = batch["input_ids"].to(accelerator.device)
        with eng.accumulating(accelerator, student, setup.engine, last=m == len(batches) - 1):
            with accelerator.autocast():
                out = micro_batch_losses(cfg, setup, student, ids, scale, batch.get("blocks"))
            if not torch.isfinite(out["total"]):
                raise TrainingDiverged(_diverged_message(out["total"].item(), step, run_dir))
            accelerator.backward(out["total"])
        sums += torch.stack([out["kd"].double(), out["ce"].double(), out["cos"].double(),
                             batch["swapped"].sum().double().to(sums.device)])
        extras["changed_share"] += out["changed_share"] / len(batches)
        extras["topk_mass"] += out["topk_mass"] / len(batches)
        extras["cf_exact"] += out["cf_exact"]
        extras["cf_aligned"] += out["cf_aligned"]
    return n_global, sums, extras


def make_optimizer(cfg: Config, student: torch.nn.Module) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; biases and norms get no weight decay.

    fused=True: one kernel over all parameters instead of a dozen passes per tensor; clip + AdamW went from
    0.30 s to 0.10 s per step in `distill bench` on CPU, and the update matches the default one (tested).
    """
    params = [p for p in student.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.train.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.train.lr, betas=(0.9, 0.98), eps=1e-8, fused=True,
    )


def fit(cfg: Config, setup: Setup, accelerator: Accelerator, run_dir: Path, resume: bool) -> dict:
    from distill.data import BlockSampler

    student, optimizer = eng.prepare_student(accelerator, cfg, setup.student, setup.engine,
                                             functools.partial(make_optimizer, cfg))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
    if cfg.train.compile:  # after prepare, so a DDP wrapper is compiled with it; unwrap_model removes both
        student = torch.compile(student)
    sampler = BlockSampler(len(setup.train_blocks), cfg.train.batch_size, cfg.train.grad_accum,
                           accelerator.num_processes, accelerator.process_index, cfg.seed)
    state = {"step": 0, "tokens_seen": 0}
    if resume:  # True (the newest intact checkpoint) or the checkpoint folder to resume
        state = ckpt.load_latest(run_dir, accelerator, student, optimizer, scheduler, sampler,
                                 path=resume if isinstance(resume, Path) else None, engine=setup.engine)
        accelerator.print(f"resuming from step {state['step']} ({run_dir / 'checkpoints'})")

    log_file = run_dir / "metrics.jsonl"
    if accelerator.is_main_process and not resume:
        log_file.write_text("")
    bar = tqdm(total=cfg.train.max_steps, initial=state["step"], desc="distill", unit="step",
               disable=not accelerator.is_local_main_process, dynamic_ncols=True)
    window = {"t0": time.perf_counter(), "tokens": 0}
    last = {}
    while state["step"] < cfg.train.max_steps:
        batches = [{**setup.train_blocks[idx], "blocks": idx} for idx in sampler.next_step()]
        n_global, sums, extras = accumulate_gradients(cfg, setup, student, accelerator, batches, state["step"] + 1,
                                                      run_dir)
        grad_norm = eng.clip_grad_norm(accelerator, student, setup.engine, cfg.train.max_grad_norm)
        if not math.isfinite(grad_norm):
            raise TrainingDiverged(_diverged_message(grad_norm, state["step"] + 1, run_dir, what="gradient norm"))
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        state["step"] += 1
        state["tokens_seen"] += n_global
        window["tokens"] += n_global
        bar.update(1)

        step = state["step"]
        if step % cfg.train.log_steps == 0 or step == cfg.train.max_steps:
            kd, ce, cos, swapped = (accelerator.reduce(sums, "sum") / torch.tensor(
                [n_global, n_global, n_global, sampler.global_batch], device=sums.device)).tolist()
            elapsed = time.perf_counter() - window["t0"]
            last = {
                "step": step,
                "loss": cfg.loss.alpha_kd * kd + cfg.loss.alpha_ce * ce + cfg.loss.alpha_cos * cos,
                "kd": kd, "ce": ce, "cos": cos,
                "lr": scheduler.get_last_lr()[0], "grad_norm": grad_norm,
                "tokens_per_s": window["tokens"] / max(elapsed, 1e-9), "tokens_seen": state["tokens_seen"],
                "epoch": sampler.epoch,
                "swapped_share": swapped,
                "teacher_changed_share": extras["changed_share"],
                **({"teacher_topk_mass": extras["topk_mass"], "teacher_cache_hit_share": setup.target_cache.hit_share}
                   if setup.target_cache is not None else {}),
                "cf_exact": extras["cf_exact"], "cf_aligned": extras["cf_aligned"],
            }
            window = {"t0": time.perf_counter(), "tokens": 0}
            bar.set_postfix(loss=f"{last['loss']:.3f}", kd=f"{kd:.3f}", ce=f"{ce:.3f}")
        evaluated = {}
        if cfg.train.eval_steps and step % cfg.train.eval_steps == 0 or step == cfg.train.max_steps:
            evaluated = evaluate(cfg, setup, student, accelerator)
        if accelerator.is_main_process and (last.get("step") == step or evaluated):
            record = {**(last if last.get("step") == step else {"step": step}), **evaluated}
            with log_file.open("a") as f:
                f.write(json.dumps(record) + "\n")
            accelerator.log(record, step=step)
            if evaluated:
                bar.write(f"step {step}: " + ", ".join(f"{k} {v:.4g}" for k, v in evaluated.items()))
        last.update(evaluated)
        if cfg.train.save_steps and step % cfg.train.save_steps == 0 and step < cfg.train.max_steps:
            ckpt.save(run_dir, step, accelerator, student, optimizer, scheduler, sampler, state,
                      keep=cfg.train.keep_checkpoints, engine=setup.engine)
    bar.close()
    if isinstance(setup.teacher, eng.LockstepTeacher):  # what keeping a sharded teacher in step cost
        from distill.models import count_parameters

        print(f"process {accelerator.process_index}: {setup.teacher.forwards} teacher forwards, "
              f"{setup.teacher.joined} one-token forwards joined for other processes; holds "
              f"{eng.local_numel(setup.teacher)} of the teacher's {count_parameters(setup.teacher)} parameters",
              flush=True)
    return {"state": state, "last": last, "student": student}


def _diverged_message(value: float, step: int, run_dir: Path, what: str = "loss") -> str:
    latest = ckpt.latest_checkpoint(run_dir)
    keep = f"the last good checkpoint is {latest}" if latest else "no checkpoint was written yet"
    return (f"{what} became {value} at step {step}; training stopped and nothing was saved for that step; "
            f"{keep}. Lower train.lr or raise train.warmup_steps, then --resume")


def _cpu_only_multiprocess() -> bool:
    """Several processes on a machine without CUDA: run them as MULTI_CPU (gloo) workers.

    accelerate's `--cpu` launcher starts a single process unless MPI is installed; `accelerate launch
    --multi_gpu --num_processes N` starts N torchrun workers, which accelerate treats as CPU workers only
    when told to, so we tell it here.
    """
    return not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1


def _mixed_precision(choice: str) -> str:
    """train.mixed_precision, `auto` resolved by `distill.precision` for the device accelerate will pick."""
    from distill.precision import resolve_mixed_precision

    return resolve_mixed_precision(choice, "cpu" if _cpu_only_multiprocess() else None)[0]


def precision_line(cfg: Config, accelerator, teacher) -> str:
    """The plan's precision line: what runs in which precision, and why (the capability that decided)."""
    from distill.precision import choose

    mp = accelerator.mixed_precision
    student = "fp32" if mp == "no" else f"{mp} autocast"
    teacher_dtype = str(next(teacher.parameters()).dtype).removeprefix("torch.")
    auto = "auto" in (cfg.train.mixed_precision, cfg.teacher.dtype)
    why = choose(accelerator.device).reason if auto else "both set explicitly"
    return (f"precision: student {student} (train.mixed_precision={cfg.train.mixed_precision}), teacher "
            f"{teacher_dtype} (teacher.dtype={cfg.teacher.dtype}); {why}")


def main(args) -> int:
    if args.help_recipe:
        for key, default, help_text in describe():
            print(f"{key:28s} {default:12s} {help_text}")
        return 0
    from distill.inputs import check_train_inputs

    # Everything that can be checked without a model, before anything is written (issue 16).
    cfg = load_config(args.recipe, args.overrides)
    eng.check_environment()  # before accelerate builds a DeepSpeed plugin (an ImportError when it is missing)
    run_dir = Path(cfg.output_dir)
    resume_from = getattr(args, "resume_from", None)
    resume = args.resume or bool(resume_from)
    inputs = check_train_inputs(cfg)
    for role in ("teacher", "student"):  # a random model's positions are known before it is built
        if getattr(cfg, role).config is not None:
            check_block_size(cfg.data.block_size, getattr(cfg, role).config, f"{role}.config")
    ckpt.check_output_dir(run_dir, resume=resume, overwrite=args.overwrite, protected_paths=inputs)
    if resume:
        changed = ckpt.check_resume_recipe(run_dir, cfg)
        if changed:
            print(f"note: resuming with a changed recipe ({', '.join(changed)})")
    accelerator = Accelerator(mixed_precision=_mixed_precision(cfg.train.mixed_precision),
                              log_with=cfg.report_to or None, project_dir=str(run_dir), cpu=_cpu_only_multiprocess())
    lock = ckpt.rundir.RunLock(run_dir).acquire() if accelerator.is_main_process else None
    aside, started = None, False
    try:
        if lock is not None and lock.stale_pid:
            print(f"note: {lock.path} was left by process {lock.stale_pid}, which is gone; taking it over")
        start = (ckpt.choose_checkpoint(run_dir, resume_from, accelerator.process_index, accelerator.num_processes,
                                        eng.engine_of(accelerator)) if resume else False)
        set_seed(cfg.seed)
        setup = build(cfg, accelerator)
        if accelerator.is_main_process:
            aside = ckpt.start_run(run_dir, cfg, resume=resume, overwrite=args.overwrite)
            started = True
            _print_plan(cfg, setup, accelerator)
        accelerator.wait_for_everyone()
        if cfg.report_to:
            # trackers take flat scalar hyperparameters: dotted keys, anything else as text
            hparams = {k: v if isinstance(v, (int, float, str, bool)) else str(v)
                       for k, v in ckpt.flat_keys(ckpt.config_dict(cfg)).items()}
            accelerator.init_trackers(run_dir.name, config=hparams)
        result = fit(cfg, setup, accelerator, run_dir, resume=start)
        accelerator.wait_for_everyone()
        student = accelerator.unwrap_model(result["student"])
        if setup.engine in eng.SHARDED:  # gathered by every process, written by the main one as a plain model
            state = eng.full_state_dict(accelerator, result["student"], setup.engine)
            student = eng.plain_model(student, state) if accelerator.is_main_process else None
        if accelerator.is_main_process:
            final = ckpt.save_final(run_dir, cfg, student, setup.tokenizer, result["last"], setup)
            accelerator.print(f"done: {result['state']['step']} steps; student written to {final}")
        accelerator.end_training()
    except BaseException:
        if started:  # before this run's first checkpoint, a replaced run comes back (see ckpt.start_run)
            ckpt.abandon_run(run_dir, aside if aside is not None and aside.exists() else None)
        raise
    finally:
        if lock is not None:
            lock.release()
    return 0


def _print_plan(cfg: Config, setup: Setup, accelerator) -> None:
    from distill.models import count_parameters

    st = setup.data_stats
    trainable = sum(p.numel() for p in setup.student.parameters() if p.requires_grad)
    print(
        f"teacher {count_parameters(setup.teacher) / 1e6:.1f}M params ({setup.teacher.config.num_hidden_layers} "
        f"layers) -> student {count_parameters(setup.student) / 1e6:.1f}M ({setup.student.config.num_hidden_layers}"
        f" layers, {trainable / 1e6:.1f}M trainable); vocab {setup.vocab_rows}\n"
        f"data: {st.train_documents} documents ({st.swapped_documents} gender-swapped) -> {st.train_blocks} blocks "
        f"of {st.block_size} tokens; {st.validation_blocks} validation blocks\n"
        f"loss: {cfg.loss.alpha_kd} x T^2 {cfg.loss.divergence} (T={cfg.loss.temperature}) + {cfg.loss.alpha_ce} "
        f"x CE + {cfg.loss.alpha_cos} x cos"
        + (f"; teacher top-{cfg.loss.teacher_top_k} targets, cached per block" if cfg.loss.teacher_top_k else "")
        + f"; crr: augment={cfg.crr.augment}, teacher={cfg.crr.teacher}\n"
        f"{cfg.train.max_steps} steps x {cfg.train.batch_size} x {cfg.train.grad_accum} accum x "
        f"{accelerator.num_processes} processes on {accelerator.device} ({accelerator.mixed_precision})\n"
        + precision_line(cfg, accelerator, setup.teacher)
    )

