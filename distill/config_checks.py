"""Checks of recipe values that stand alone: ranges and choices from a field's metadata, a list of block
indices, and data.block_size against a model's positions (once its config is known).

    from distill.config_checks import check_block_size, check_fields
    check_fields(cfg, "")                                     # UserError for a value out of range or not a choice
    check_block_size(cfg.data.block_size, model.config, "teacher")

`distill.config.validate` runs the first two on every recipe, with the rules that tie fields together.
"""

from __future__ import annotations

import dataclasses
import math

from distill.errors import UserError


def check_fields(obj, prefix: str) -> None:
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        name = prefix + f.name
        if dataclasses.is_dataclass(value):
            check_fields(value, name + ".")
            continue
        lo_hi, choices = f.metadata.get("range"), f.metadata.get("choices")
        if value is None:
            continue
        if isinstance(value, float) and not math.isfinite(value):
            raise UserError(f"{name}={value!r} must be a finite number")
        if choices and value not in choices:
            raise UserError(f"{name}={value!r} is not one of: {', '.join(choices)}")
        if lo_hi and not (lo_hi[0] <= value <= lo_hi[1]):
            lo, hi = lo_hi
            bound = f">= {lo}" if hi == math.inf else f"in [{lo}, {hi}]"
            raise UserError(f"{name}={value!r} is out of range: must be {bound}")


def check_layer_list(name: str, layers) -> None:
    """A list of distinct block indices >= 0, checked element by element (the upper bound needs the model)."""
    if layers is None:
        return
    if not layers:
        raise UserError(f"{name} is empty; list block indices such as [0, 2] (or null for the default)")
    for item in layers:
        if isinstance(item, bool) or not isinstance(item, int):
            raise UserError(f"{name}={layers!r}: {item!r} is not a block index (give integers such as [0, 2])")
        if item < 0:
            raise UserError(f"{name}={layers!r}: {item} is negative; block indices count from 0")
    dupes = sorted({i for i in layers if layers.count(i) > 1})
    if dupes:
        raise UserError(f"{name}={layers!r} names block {dupes[0]} twice; list each block once")


_POSITION_KEYS = ("n_positions", "max_position_embeddings", "n_ctx")


def model_positions(config) -> int | None:
    """The longest sequence a model config accepts (n_positions / max_position_embeddings), or None."""
    get = config.get if isinstance(config, dict) else (lambda k: getattr(config, k, None))
    values = [get(k) for k in _POSITION_KEYS]
    values = [v for v in values if isinstance(v, int) and not isinstance(v, bool)]
    return min(values) if values else None


def check_block_size(block_size: int, config, who: str) -> None:
    """data.block_size may not exceed the positions of `who` (the teacher's or the student's config)."""
    limit = model_positions(config)
    if limit is not None and block_size > limit:
        raise UserError(f"data.block_size={block_size} is longer than the {limit} positions of the {who}; "
                        f"set data.block_size={limit} or less")
