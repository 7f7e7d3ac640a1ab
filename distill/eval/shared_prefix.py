"""The teacher's frozen prefix, computed once per eval instead of once per model that shares it.

A student cut from its teacher (`student.from_teacher_layers`) whose embeddings and first k blocks stayed
frozen computes, on any input, exactly the teacher's hidden state entering block k. `distill eval` scores the
first model (the teacher) first; for the likelihood probe, the perplexity windows and the embedding and
downstream lenses it keeps that model's hidden state at block k of every batch, and runs each such student
from there (its blocks k.., final norm and head) on the same batch. Generation is not shared: each model
samples its own continuations.

    shared = SharedPrefix.plan(first_model, [path, ...], lens_layer)   # depths read from the later models' files
    forward = shared.recorder(first_model)                              # keeps hidden states while it scores
    forward = shared.reader(model, path)                                # a later model: starts at its depth
    out = forward(module, input_ids=ids, attention_mask=mask, **kw)     # instead of module(input_ids=..., ...)

A later model's depth is how many of its stored blocks, after equal embeddings, equal the first model's
tensors in the dtype the eval loads (so any folder of safetensors works, however it was made). Before it reuses
anything, a check on a few tokens runs it both ways and keeps the reuse only if the logits agree: GPT-2 adds
position embeddings inside its forward, which a start from a hidden state would add twice, and fails the check.
Batches are matched by their exact token ids and mask; one the first model did not see runs the ordinary way,
as does everything past MEMORY_CAP bytes of kept states (kept in CPU memory).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from distill.eval.runtime import plain_forward
from distill.train.prefix import decoder_blocks, forward_from, starts_alike

MEMORY_CAP = 2 << 30  # bytes of kept hidden states, in CPU memory; later batches are not kept
CHECK_TOKENS = 32


def _batch_key(input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> tuple:
    ids = input_ids.detach().cpu()
    mask = None if attention_mask is None else attention_mask.detach().cpu().numpy().tobytes()
    return tuple(ids.shape), ids.numpy().tobytes(), mask


def _qualified_names(model: torch.nn.Module) -> dict[int, str]:
    return {id(m): name for name, m in model.named_modules()}


def stored_prefix_depth(reference: torch.nn.Module, path: str) -> int:
    """How many leading blocks of the model stored at `path` (a folder of .safetensors files) equal the
    reference's, with equal input embeddings; 0 when the embeddings differ or `path` is not such a folder."""
    folder = Path(path).expanduser()
    files = sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
    blocks = decoder_blocks(reference)
    embeddings = reference.get_input_embeddings()
    if not files or blocks is None or embeddings is None:
        return 0
    from safetensors import safe_open

    names = _qualified_names(reference)
    with contextlib.ExitStack() as stack:
        handles = [stack.enter_context(safe_open(str(f), framework="pt")) for f in files]
        where = {key: h for h in handles for key in h.keys()}

        def stored_equal(module: torch.nn.Module) -> bool:
            prefix = names[id(module)]
            for pname, param in module.named_parameters():
                key = f"{prefix}.{pname}"
                if key not in where:
                    return False
                saved = where[key].get_tensor(key)
                if saved.shape != param.shape or not torch.equal(saved.to(param.dtype), param.detach().cpu()):
                    return False
            return True

        if not stored_equal(embeddings):
            return 0
        depth = 0
        for block in blocks:
            if not stored_equal(block):
                break
            depth += 1
    return depth


class SharedPrefix:
    """Hidden states the first model computed, kept per (depth, batch) for the later models that share its
    first `depth` blocks."""

    def __init__(self, depths: dict[str, int], lens_layer: int = -1):
        self.depths = {p: d for p, d in depths.items() if d > 0}
        self.lens_layer = lens_layer
        self.kept: dict[int, dict[tuple, torch.Tensor]] = {d: {} for d in set(self.depths.values())}
        self.check_ids: torch.Tensor | None = None
        self.check_hidden: dict[int, torch.Tensor] = {}
        self.bytes = 0

    @classmethod
    def plan(cls, reference: torch.nn.Module, later_paths: list[str], lens_layer: int = -1) -> SharedPrefix:
        return cls({p: stored_prefix_depth(reference, p) for p in dict.fromkeys(later_paths)}, lens_layer)

    # ------------------------------------------------------------------------------------- the first model

    def recorder(self, model: torch.nn.Module):
        """`forward` for the first model: an ordinary forward that also keeps its hidden states at the depths
        the later models share."""
        if not self.kept:
            return plain_forward
        device = next(model.parameters()).device
        vocab = model.get_input_embeddings().num_embeddings
        self.check_ids = (torch.arange(CHECK_TOKENS, device=device) % vocab).unsqueeze(0)
        with torch.inference_mode():
            states = model(input_ids=self.check_ids, use_cache=False, output_hidden_states=True).hidden_states
        self.check_hidden = {d: states[d] for d in self.kept}

        def forward(module, *, input_ids, attention_mask=None, **kwargs):
            wanted = kwargs.pop("output_hidden_states", False)
            out = module(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True, **kwargs)
            key = _batch_key(input_ids, attention_mask)
            for depth, kept in self.kept.items():
                hidden = out.hidden_states[depth]
                size = hidden.numel() * hidden.element_size()
                if self.bytes + size <= MEMORY_CAP:
                    kept[key] = hidden.to("cpu")  # not the accelerator's memory: the teacher is still loaded
                    self.bytes += size
            if not wanted:
                out.hidden_states = None
            return out

        return forward

    # -------------------------------------------------------------------------------------- a later model

    def depth_for(self, model: torch.nn.Module, path: str) -> int:
        """The depth `model` (loaded from `path`) may start from: its planned depth if the check passes, else 0."""
        depth = self.depths.get(path, 0)
        blocks = decoder_blocks(model)
        if depth == 0 or depth not in self.check_hidden or blocks is None or depth >= len(blocks):
            return 0
        with torch.inference_mode():
            same = starts_alike(model, self.check_ids, self.check_hidden[depth], depth)
        return depth if same else 0

    def reader(self, model: torch.nn.Module, path: str):
        """`forward` for a later model: from the kept hidden state where the batch was kept, else ordinary.
        A call that asks for hidden states below the depth (a lens layer inside the prefix) runs ordinarily."""
        depth = self.depth_for(model, path)
        if depth == 0:
            return plain_forward
        kept = self.kept[depth]
        layer_inside = 0 <= self.lens_layer < depth

        def forward(module, *, input_ids, attention_mask=None, **kwargs):
            hidden = kept.get(_batch_key(input_ids, attention_mask))
            if hidden is None or (layer_inside and kwargs.get("output_hidden_states")):
                return module(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
            kwargs.pop("use_cache", None)
            out = forward_from(module, hidden.to(input_ids.device), depth, unwrapped=model,
                               attention_mask=attention_mask, **kwargs)
            if kwargs.get("output_hidden_states"):
                out.hidden_states = (None,) * depth + tuple(out.hidden_states)  # the full model's indices
            return out

        forward.depth = depth
        return forward


def shared_prefix_forward(model, path: str, label: str, shared: SharedPrefix | None, later: list[str],
                          lens_layer: int):
    """(the `forward` one run of an eval scores with, the SharedPrefix): the eval's first run (shared is None)
    plans the reuse for the `later` paths and keeps its hidden states; a later run starts from them."""
    from distill.eval import runtime

    if shared is None:
        shared = SharedPrefix.plan(model, later, lens_layer)
        return shared.recorder(model), shared
    forward = shared.reader(model, path)
    depth = getattr(forward, "depth", 0)
    if depth:
        runtime.log(f"  {label}: its first {depth} blocks are the first model's; probe, lenses and perplexity "
                    f"start from that model's hidden state there")
    return forward, shared
