"""The teacher's frozen prefix, computed once per step instead of twice (`train.share_teacher_prefix`).

A student made by `student.from_teacher_layers` whose first k blocks are the teacher's blocks 0..k-1, frozen
with the embeddings, computes exactly what the teacher computed up to block k on the same input. The step
then starts the student at block k from the teacher's hidden state there:

    depth = shared_prefix_depth(teacher, student, from_teacher_layers, ids)  # 0: not shared
    targets = teacher_targets(..., prefix_depth=depth)                       # keeps targets.prefix_hidden
    out = forward_from(student, targets.prefix_hidden, depth)                 # blocks k.., norm, head

Nothing below block k has a gradient, so the backward pass is unchanged. `shared_prefix_depth` runs both
paths on a few tokens before training and shares only if they agree: a model that does more to its input
embeddings than pass them to block 0 (GPT-2 adds position embeddings, Gemma scales them), dropout in the
prefix all fail that check, a teacher in another dtype than the student is not tried, and each trains the
ordinary way.
"""

from __future__ import annotations

import contextlib

import torch

from distill.models import num_layers

CHECK_TOKENS = 32  # tokens of the start-up check: enough to exercise position encoding and the causal mask


def candidate_depth(from_teacher_layers: list[int] | None, student: torch.nn.Module) -> int:
    """How many leading student blocks are the teacher's own blocks 0..k-1 and frozen, with frozen embeddings;
    0 when the student was not made from the teacher's blocks or its embeddings train."""
    if not from_teacher_layers:
        return 0
    embeddings = student.get_input_embeddings()
    if embeddings is None or any(p.requires_grad for p in embeddings.parameters()):
        return 0
    blocks = decoder_blocks(student)
    if blocks is None:
        return 0
    depth = 0
    for i, source in enumerate(from_teacher_layers[: len(blocks)]):
        if source != i or any(p.requires_grad for p in blocks[i].parameters()):
            break
        depth = i + 1
    # The student needs a block of its own after the prefix: a fully shared student is the teacher's prefix.
    return depth if depth < len(blocks) else 0


def _block_list(model: torch.nn.Module) -> tuple[torch.nn.Module, str] | None:
    """(the module holding the model's transformer blocks, the attribute naming them: `layers` or `h`)."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    for owner in (decoder, getattr(model, "model", None), getattr(model, "transformer", None)):
        for name in ("layers", "h"):
            blocks = getattr(owner, name, None) if owner is not None else None
            if isinstance(blocks, torch.nn.ModuleList) and len(blocks) == num_layers(model.config):
                return owner, name
    return None


def decoder_blocks(model: torch.nn.Module) -> torch.nn.ModuleList | None:
    """The model's list of transformer blocks, or None if it has none this module can find."""
    found = _block_list(model)
    return getattr(*found) if found is not None else None


@contextlib.contextmanager
def _blocks_from(model: torch.nn.Module, depth: int):
    """Within the block, `model`'s decoder runs its blocks from `depth` on (the full list is restored after)."""
    owner, name = _block_list(model)
    blocks = getattr(owner, name)
    setattr(owner, name, blocks[depth:])
    try:
        yield
    finally:
        setattr(owner, name, blocks)


def forward_from(student: torch.nn.Module, hidden: torch.Tensor, depth: int, *, unwrapped=None, **kwargs):
    """The student's forward from block `depth`, given the hidden state entering that block.

    `student` is what is called (possibly wrapped by DDP); `unwrapped` is the model inside it whose block list
    is cut for the call (default: `student` itself). kwargs go to the forward (e.g. output_hidden_states)."""
    with _blocks_from(unwrapped if unwrapped is not None else student, depth):
        return student(inputs_embeds=hidden, use_cache=False, **kwargs)


def shared_prefix_depth(teacher: torch.nn.Module, student: torch.nn.Module, from_teacher_layers: list[int] | None,
                        sample_ids: torch.Tensor) -> int:
    """The student's shared prefix depth (0: none), after checking on `sample_ids` (1, T) that starting the
    student from the teacher's hidden state gives the student's own logits. The check runs the student as
    training does (train mode) under a forked RNG, so the run's random stream is not moved."""
    depth = candidate_depth(from_teacher_layers, student)
    if depth == 0:
        return 0
    if next(teacher.parameters()).dtype != next(student.parameters()).dtype:
        return 0
    ids = sample_ids[:, :CHECK_TOKENS].to(next(student.parameters()).device)
    cuda = [ids.device] if ids.device.type == "cuda" else []  # dropout on a GPU draws from its own generator
    with torch.random.fork_rng(devices=cuda), torch.no_grad():
        with torch.inference_mode():
            teacher_out = teacher(input_ids=ids.to(next(teacher.parameters()).device), use_cache=False,
                                  output_hidden_states=True)
        hidden = teacher_out.hidden_states[depth].clone().to(ids.device)
        same = starts_alike(student, ids, hidden, depth)
    return depth if same else 0


def starts_alike(model: torch.nn.Module, ids: torch.Tensor, hidden: torch.Tensor, depth: int) -> bool:
    """Whether `model` started at block `depth` from `hidden` (another model's hidden state entering that block on
    `ids`) gives its own full forward's logits, to 1e-4 of their largest magnitude. The caller sets the mode and
    the grad context."""
    full = model(input_ids=ids, use_cache=False).logits
    shared = forward_from(model, hidden, depth).logits
    scale = full.abs().max().clamp_min(1.0).item()
    return torch.allclose(shared, full, rtol=0.0, atol=1e-4 * scale)
