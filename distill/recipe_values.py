"""One rule for every recipe key: a value must be there. Used by `distill.config.build_section`.

    check_not_empty(value, hint, "train.max_steps", field)   # UserError for null or "" where a value is needed

Why: `key=` on the command line and `key:` or `key: null` in a file give None, and `key: ""` gives an empty
string. Before this check, None passed every range check (ranges skip None) and an empty path became the
current directory (Path("") is "."), so the recipe was accepted and the run failed later with a traceback, or
wrote where nobody asked.
"""

from __future__ import annotations

import dataclasses
import types
import typing

from distill.errors import UserError

# Free text, where an empty string means what it says.
_MAY_BE_EMPTY = {"description"}


def check_not_empty(value, hint, name: str, f: dataclasses.Field) -> None:
    """A key given no value (null, `key=` on the command line) where its type has no "none", or an empty string
    where a path, name or word is needed, is refused here, for every key alike: later it would reach the code
    as None or as the current directory (Path("") is "."), far from the recipe."""
    optional = isinstance(hint, types.UnionType) and type(None) in typing.get_args(hint)
    empty_text = isinstance(value, str) and not value.strip() and name.rsplit(".", 1)[-1] not in _MAY_BE_EMPTY
    if (value is None and not optional) or empty_text:
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        allowed = [typing.get_origin(a) or a for a in (typing.get_args(hint) or (hint,)) if a is not type(None)]
        kinds = " or ".join(_KIND_WORDS.get(a, getattr(a, "__name__", str(a))) for a in allowed)
        what = "null (no value)" if value is None else "an empty string"
        out = "leave the key out (or null) for its default" if default is None else \
            f"leave the key out for its default ({default!r})"
        raise UserError(f"recipe key {name!r} is {what}; give {kinds}, or {out}")


_KIND_WORDS = {str: "a string", int: "an integer", float: "a number", bool: "true or false", list: "a list",
               dict: "a mapping"}
