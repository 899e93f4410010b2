"""A cap on list lengths inside the free-form parts of a request (tokenizer options, BPE,
model and training overrides), which no pydantic field bounds before a library reads them."""

from __future__ import annotations

from typing import Any

# Items in any list nested in a free-form request dict; the longest real option list (a
# tokenizer's programs, pitch range or beat resolutions) is far shorter.
MAX_NESTED_LIST = 256
MAX_NESTED_DEPTH = 8


def check_nested_lists(value: Any, field: str, depth: int = 0) -> None:
    """ValueError naming the first list over `MAX_NESTED_LIST` items (or nesting too deep)."""
    if depth > MAX_NESTED_DEPTH:
        raise ValueError(f"{field}: nested deeper than {MAX_NESTED_DEPTH} levels")
    if isinstance(value, dict):
        for k, v in value.items():
            check_nested_lists(v, f"{field}.{k}", depth + 1)
    elif isinstance(value, list | tuple):
        if len(value) > MAX_NESTED_LIST:
            raise ValueError(f"{field} has {len(value)} items; the limit is {MAX_NESTED_LIST}")
        for i, v in enumerate(value):
            check_nested_lists(v, f"{field}[{i}]", depth + 1)
