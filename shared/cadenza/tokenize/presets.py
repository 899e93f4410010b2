"""TEMPORARY (replaced by the tokenize split): preset resolution."""

from __future__ import annotations

from typing import Any

from cadenza.tokenize.spec import PRESETS, TokenizerSpec


def resolve_spec(
    *, preset: str | None, tokenizer: str | None, config: dict[str, Any], bpe: dict[str, Any] | None
) -> TokenizerSpec:
    if preset:
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; known: {', '.join(PRESETS)}")
        base = dict(PRESETS[preset])
        if tokenizer and tokenizer != base["name"]:
            raise ValueError(
                f"preset {preset} is a {base['name']} tokenizer; drop `tokenizer` or the preset"
            )
        raw = {
            "name": base["name"],
            "config": {**base.get("config", {}), **config},
            "bpe": bpe if bpe is not None else base.get("bpe"),
        }
    else:
        raw = {"name": tokenizer or "REMI", "config": config, "bpe": bpe}
    return TokenizerSpec.model_validate(raw)
