"""The training engine (DDP, FSDP2 or DeepSpeed ZeRO-3) for both models: the student to train, the teacher sharded
the same way but in evaluation mode (no optimizer, no gradients).

    python -m distill.train.engine check recipes/accelerate/fsdp.yaml     # one line: ok, or what to install or set
    accelerate launch --config_file recipes/accelerate/fsdp.yaml -m distill train --recipe recipes/debug.yaml

The engine is the one the accelerate launcher asked for through its environment (ACCELERATE_USE_FSDP,
ACCELERATE_USE_DEEPSPEED). Why FSDP2 is applied here with torch's `fully_shard` rather than by
`accelerator.prepare`: accelerate prepares one model per FSDP2 `prepare` call and only together with an
optimizer (the teacher has none), and on a machine without CUDA it turns an FSDP config into plain MULTI_CPU
data parallelism without a word (accelerate 1.15, `AcceleratorState`). Sharding both models here gives one code
path that runs, and is tested, on CPU processes over gloo as well as on GPUs.

Sharded models need every process to take part in every forward (each layer's weights are all-gathered), but
the teacher's work per micro-batch depends on the data: the counterfactual pass runs only for rows that had
something to swap, and the top-k target cache calls the teacher only for blocks it has not seen. `LockstepTeacher`
keeps the processes in step: before each real teacher forward the processes vote (one all-reduce of a flag),
and `drain` makes a process that has finished its own teacher work join the others' remaining forwards with a
one-token forward until every process is done. The forward count per process then no longer matters.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
from pathlib import Path

import torch

from distill.errors import UserError

ENGINES = ("ddp", "fsdp", "deepspeed")
SHARDED = ("fsdp", "deepspeed")


def requested_engine(environ=None) -> str:
    """The engine the accelerate launcher asked for: 'deepspeed', 'fsdp' or 'ddp' (also one process, no launcher)."""
    env = os.environ if environ is None else environ
    if env.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        return "deepspeed"
    if env.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        return "fsdp"
    return "ddp"


def _deepspeed_installed() -> bool:
    return importlib.util.find_spec("deepspeed") is not None


def check_request(engine: str, fsdp_version: str | int | None = None, auto_wrap: str | None = None) -> None:
    """Refuse, before any model is loaded, an engine that cannot run here: one line saying what to install or set."""
    if engine == "deepspeed" and not _deepspeed_installed():
        raise UserError("the accelerate config asks for DeepSpeed, which is not installed: `pip install deepspeed` "
                        "(on a CUDA machine), or launch with recipes/accelerate/fsdp.yaml or ddp.yaml")
    if engine == "fsdp":
        if str(fsdp_version or "1") != "2":
            raise UserError(f"distill shards with FSDP2 only, the accelerate config asks for FSDP{fsdp_version or 1}:"
                            " set fsdp_version: 2 in its fsdp_config (as in recipes/accelerate/fsdp.yaml)")
        if auto_wrap not in (None, "TRANSFORMER_BASED_WRAP", "SIZE_BASED_WRAP"):
            raise UserError(f"fsdp_auto_wrap_policy {auto_wrap} would gather a whole model at once: set "
                            "fsdp_auto_wrap_policy: TRANSFORMER_BASED_WRAP in the accelerate config")


def check_environment(environ=None) -> str:
    """`check_request` on what the launcher put in the environment; returns the engine."""
    env = os.environ if environ is None else environ
    engine = requested_engine(env)
    check_request(engine, env.get("FSDP_VERSION"), env.get("FSDP_AUTO_WRAP_POLICY"))
    return engine


def check_config_file(path: str | Path) -> str:
    """`check_request` on an accelerate config YAML, for use before `accelerate launch` (whose own launcher
    stops with an ImportError traceback when DeepSpeed is missing, before distill could say anything)."""
    from distill.accelerate_config import read_accelerate_config

    data = read_accelerate_config(path)  # a mapping accelerate's own loader accepts, or one line
    kind = str(data.get("distributed_type", "NO")).upper()
    engine = "deepspeed" if kind == "DEEPSPEED" else "fsdp" if kind == "FSDP" else "ddp"
    fsdp = data.get("fsdp_config") or {}
    check_request(engine, fsdp.get("fsdp_version"), fsdp.get("fsdp_auto_wrap_policy"))
    return engine


# ---------------------------------------------------------------------------------------------- FSDP2 wrapping


def _fsdp_plugin(accelerator):
    """accelerate's FSDP plugin: the launcher's settings (read from the environment when accelerate, on CPU, did
    not build one)."""
    from accelerate.utils import FullyShardedDataParallelPlugin

    plugin = getattr(accelerator.state, "fsdp_plugin", None)
    return plugin if plugin is not None else FullyShardedDataParallelPlugin()


def block_classes(model: torch.nn.Module, names: list[str] | None, role: str) -> set[type]:
    """The module classes of `model` that FSDP shards one by one: `names` (the accelerate config's
    fsdp_transformer_layer_cls_to_wrap) or else the model's `_no_split_modules`. One line when none is found."""
    wanted = list(names or getattr(model, "_no_split_modules", None) or [])
    found = {type(m) for m in model.modules() if type(m).__name__ in wanted}
    if not found:
        lists = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList) and len(m)]
        blocks = sorted({type(x).__name__ for x in max(lists, key=len)}) if lists else []
        hint = f"set fsdp_transformer_layer_cls_to_wrap: {','.join(blocks)}" if blocks else \
            "set fsdp_auto_wrap_policy: SIZE_BASED_WRAP with fsdp_min_num_params"
        have = f"names {wanted}, none of which it has" if wanted else "names no block class (_no_split_modules)"
        raise UserError(f"FSDP cannot auto-wrap the {role} ({type(model).__name__}): it {have}; {hint} "
                        "in the accelerate config")
    return found


def check_auto_wrap(accelerator, teacher: torch.nn.Module, student: torch.nn.Module) -> None:
    """When the launcher asks for FSDP with transformer-based wrapping, both models must have a block class to
    shard one by one (checked with one process too, so a recipe is refused before it reaches a cluster)."""
    if requested_engine() != "fsdp":
        return
    plugin = _fsdp_plugin(accelerator)
    from torch.distributed.fsdp.wrap import size_based_auto_wrap_policy

    if getattr(plugin.auto_wrap_policy, "func", plugin.auto_wrap_policy) is size_based_auto_wrap_policy:
        return
    for role, model in (("teacher", teacher), ("student", student)):
        block_classes(model, plugin.transformer_cls_names_to_wrap, role)


def _wrap_policy(plugin, model: torch.nn.Module, role: str):
    from torch.distributed.fsdp.wrap import size_based_auto_wrap_policy

    fn = getattr(plugin.auto_wrap_policy, "func", plugin.auto_wrap_policy)
    if fn is size_based_auto_wrap_policy:
        return lambda m: sum(p.numel() for p in m.parameters()) > plugin.min_num_params
    classes = tuple(block_classes(model, plugin.transformer_cls_names_to_wrap, role))
    return lambda m: isinstance(m, classes)


def fsdp2_shard(model: torch.nn.Module, plugin, role: str, trainable: bool) -> torch.nn.Module:
    """Shard `model` in place with FSDP2: each block its own unit, then the root (embeddings, final norm, head).

    The teacher (trainable=False) keeps its own dtype and no mixed-precision policy (it already runs in the
    recipe's teacher.dtype); the student gets the plugin's policy (bf16 compute over fp32 master weights).
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = _wrap_policy(plugin, model, role)
    kwargs = {"reshard_after_forward": plugin.reshard_after_forward is not False}
    if plugin.cpu_offload is not None and not isinstance(plugin.cpu_offload, bool):
        kwargs["offload_policy"] = plugin.cpu_offload
    if trainable and plugin.mixed_precision_policy is not None:
        kwargs["mp_policy"] = plugin.mixed_precision_policy
    else:
        kwargs["mp_policy"] = MixedPrecisionPolicy()
    # bottom-up, so a block is its own unit before its parent; the root is always one (below)
    for module in reversed(list(model.modules())[1:]):
        if policy(module):
            fully_shard(module, **kwargs)
    fully_shard(model, **kwargs)
    return model


# ---------------------------------------------------------------------------------------------- the teacher


def _vote(flag: bool, device) -> bool:
    """True when any process passes True (one all-reduce of one number)."""
    import torch.distributed as dist

    t = torch.tensor([1 if flag else 0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


class LockstepTeacher(torch.nn.Module):
    """A sharded teacher whose forwards every process joins: see the module docstring.

    Looks like the wrapped model to `teacher_targets` (`config`, `training`, keyword forward).
    """

    def __init__(self, inner: torch.nn.Module, device):
        super().__init__()
        self.inner = inner
        self.device_for_votes = torch.device(device)
        self.forwards = self.joined = 0  # real forwards, and one-token forwards run for other processes

    @property
    def config(self):
        return getattr(self.inner, "module", self.inner).config  # a DeepSpeed engine holds the model as .module

    def forward(self, **kwargs):
        _vote(True, self.device_for_votes)
        self.forwards += 1
        # no_grad rather than the caller's inference mode: FSDP2 keeps the gathered weights between forwards
        # and checks their version counters, which inference tensors do not have (seen with 1 process).
        with torch.inference_mode(False), torch.no_grad():
            return self.inner(**kwargs)

    def drain(self) -> None:
        """Join the other processes' remaining teacher forwards; returns when every process is done."""
        while _vote(False, self.device_for_votes):
            with torch.inference_mode(False), torch.no_grad():
                self.inner(input_ids=torch.zeros(1, 1, dtype=torch.long, device=self.device_for_votes),
                           use_cache=False)
            self.joined += 1


def local_numel(model: torch.nn.Module) -> int:
    """Parameters held by this process: its shards of a sharded model, everything of a replicated one."""
    return sum(p.to_local().numel() if hasattr(p, "to_local") else p.numel() for p in model.parameters())


def drain(teacher) -> None:
    """After a stretch of teacher work: wait for (and help) the other processes; nothing when not sharded."""
    if isinstance(teacher, LockstepTeacher):
        teacher.drain()


def prepare_teacher(accelerator, teacher: torch.nn.Module, engine: str, batch_size: int) -> torch.nn.Module:
    """The teacher for `engine`, in evaluation mode with no gradients and no optimizer.

    ddp: the whole teacher on this process's device (each process holds a copy, as before).
    fsdp: FSDP2-sharded like the student, wrapped in `LockstepTeacher`.
    deepspeed: a ZeRO-3 inference engine (no optimizer), wrapped in `LockstepTeacher`; with ZeRO stage < 3 the
    teacher is replicated as under ddp (ZeRO-1/2 shard optimizer state, which a teacher does not have).
    """
    teacher.eval().requires_grad_(False)
    if engine == "ddp" or accelerator.num_processes == 1 and not _distributed():
        return teacher.to(accelerator.device)
    if engine == "fsdp":
        inner = fsdp2_shard(teacher, _fsdp_plugin(accelerator), "teacher", trainable=False)
    else:
        plugin = accelerator.state.deepspeed_plugin
        if plugin.zero_stage != 3:
            return teacher.to(accelerator.device)
        import deepspeed

        # A minimal inference config: ZeRO-3 partitioning and the teacher's own dtype, no optimizer, no "auto"
        # values (those are filled by accelerate only for the model it prepares).
        dtype = next(teacher.parameters()).dtype
        config = {
            "train_micro_batch_size_per_gpu": batch_size,
            "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
            "bf16": {"enabled": dtype == torch.bfloat16},
            "fp16": {"enabled": dtype == torch.float16},
        }
        inner, *_ = deepspeed.initialize(model=teacher, config=config)
        inner.eval()
    return LockstepTeacher(inner, accelerator.device).eval()


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


# ---------------------------------------------------------------------------------------------- the student


def engine_of(accelerator) -> str:
    """The engine this run trains with: the requested one, or ddp when there is a single process without a
    process group (nothing to shard across)."""
    engine = requested_engine()
    return engine if engine == "ddp" or _distributed() else "ddp"


def deepspeed_settings(accelerator, cfg) -> None:
    """Fill the DeepSpeed config values accelerate cannot infer without a dataloader, from the recipe."""
    ds = accelerator.state.deepspeed_plugin.deepspeed_config
    ds["train_micro_batch_size_per_gpu"] = cfg.train.batch_size
    ds["gradient_accumulation_steps"] = cfg.train.grad_accum
    ds["gradient_clipping"] = cfg.train.max_grad_norm
    ds.setdefault("zero_optimization", {})["stage3_gather_16bit_weights_on_model_save"] = True


def prepare_student(accelerator, cfg, student: torch.nn.Module, engine: str, make_optimizer):
    """(student, optimizer) ready to train under `engine`; `make_optimizer(model)` builds the optimizer.

    Under fsdp the optimizer is built after sharding, over the sharded (DTensor) parameters.
    """
    if engine == "fsdp":
        student = fsdp2_shard(student, _fsdp_plugin(accelerator), "student", trainable=True)
        return student, make_optimizer(student)
    if engine == "deepspeed":
        deepspeed_settings(accelerator, cfg)
    return accelerator.prepare(student, make_optimizer(student))


def loss_scale(accelerator, engine: str, grad_accum: int, n_global: int) -> float:
    """The factor that turns one process's loss sums into its share of the global token mean.

    DDP and FSDP average gradients over processes, so each process's sum is scaled by P / n_global.
    DeepSpeed's backward also divides by gradient_accumulation_steps, which the extra factor undoes.
    """
    scale = accelerator.num_processes / max(n_global, 1)
    return scale * grad_accum if engine == "deepspeed" else scale


@contextlib.contextmanager
def accumulating(accelerator, student, engine: str, last: bool):
    """Gradient sync only on the step's last micro-batch, in each engine's own way."""
    if engine == "fsdp":
        student.set_requires_gradient_sync(last)
        yield
    elif engine == "deepspeed":
        # accelerate steps the DeepSpeed engine at every backward with sync_gradients True
        accelerator.gradient_state._set_sync_gradients(last)
        try:
            yield
        finally:
            accelerator.gradient_state._set_sync_gradients(True)
    elif last:
        yield
    else:
        with accelerator.no_sync(student):
            yield


def clip_grad_norm(accelerator, student, engine: str, max_norm: float) -> float:
    """Clip to `max_norm` (0: no clipping) and return the global gradient norm."""
    if engine == "deepspeed":  # clipped inside the engine's step (gradient_clipping in its config)
        norm = accelerator.clip_grad_norm_(student.parameters(), max_norm)
        return float(norm) if norm is not None else float("nan")
    if engine == "fsdp":
        norm = torch.nn.utils.clip_grad_norm_(student.parameters(), max_norm if max_norm > 0 else float("inf"))
        return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
    if max_norm > 0:
        return float(accelerator.clip_grad_norm_(student.parameters(), max_norm))
    norms = [p.grad.detach().float().norm() for p in student.parameters() if p.grad is not None]
    return float(torch.stack(norms).norm()) if norms else 0.0


def full_state_dict(accelerator, student, engine: str) -> dict:
    """The student's whole state dict on the main process (every process must call this: it gathers)."""
    if engine == "fsdp":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        student = getattr(student, "_orig_mod", student)  # train.compile: the keys without the _orig_mod. prefix
        return get_model_state_dict(student, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return accelerator.get_state_dict(student)


def plain_model(model: torch.nn.Module, state: dict) -> torch.nn.Module:
    """An ordinary (unsharded) copy of `model`'s class holding `state`: what `save_pretrained` writes to final/.

    FSDP2 makes a model an instance of a generated `FSDP<Class>`; save_pretrained would write that name into
    config.json, so the weights go into a fresh instance of the original class (built on the meta device, so no
    second copy of the weights is allocated).
    """
    inner = getattr(model, "module", model)  # DeepSpeed / DDP wrappers
    cls = next(c for c in type(inner).__mro__ if not c.__name__.startswith("FSDP"))
    with torch.device("meta"):
        plain = cls(inner.config)
    plain.load_state_dict(state, strict=False, assign=True)
    if hasattr(plain, "tie_weights"):
        plain.tie_weights()
    missing = [n for n, p in plain.named_parameters() if p.is_meta]
    if missing:
        raise RuntimeError(f"the gathered state dict lacks {missing[:3]}")
    return plain.eval()


def main(argv: list[str] | None = None) -> int:
    """`python -m distill.train.engine check CONFIG`: one line, exit 0 when the engine can run here, 2 when not."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2 or argv[0] != "check":
        print("usage: python -m distill.train.engine check ACCELERATE_CONFIG.yaml", file=sys.stderr)
        return 2
    from distill.errors import guarded_stdout, report

    try:
        with guarded_stdout():
            engine = check_config_file(argv[1])
            print(f"ok: {argv[1]} runs distill train under {engine}")
    except (UserError, OSError) as exc:
        return report("distill engine", exc)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
