"""Where the `cadenza` command writes: messages and progress to stderr, results to stdout."""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console

console = Console(stderr=True)
# Paths, ids and JSON on stdout are for copying and piping: never wrapped at the terminal width.
out = Console(soft_wrap=True)


def print_json(obj: Any) -> None:
    out.print_json(json.dumps(obj))
