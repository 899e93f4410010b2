"""Model presets: named starting points for each architecture's config (no torch).

A preset is a dict of config fields; a user's overrides win over it (`resolve_config`). Some
presets first shipped under names that said which tool they copied; those names stay accepted
as aliases (`ALIASES`), resolve to the same values, and are never listed, so requests written
for them keep working while help texts and errors show the names that say what a preset is.
The training side (optimiser and schedule per preset) is `cadenza.train.presets`, under the
same names and aliases.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

Fields = dict[str, Any]


class PresetTable(Mapping[str, Fields]):
    """One architecture's presets: name -> fields, where an old name reads its new entry.

    Iterating (and so listing, `len`, `set(...)`) gives the current names only; lookup and `in`
    also accept the aliases. Values are the stored dicts: copy before changing one.
    """

    def __init__(self, presets: Mapping[str, Fields], aliases: Mapping[str, str]) -> None:
        missing = sorted(set(aliases.values()) - set(presets))
        if missing:
            raise ValueError(f"aliases point at unknown presets: {', '.join(missing)}")
        self._presets = dict(presets)
        self._aliases = dict(aliases)

    @property
    def aliases(self) -> dict[str, str]:
        """Old name -> current name, for this table (a copy)."""
        return dict(self._aliases)

    def canonical(self, name: str) -> str:
        """The current name of `name` (itself unless it is an alias)."""
        return self._aliases.get(name, name)

    def __getitem__(self, name: str) -> Fields:
        return self._presets[self.canonical(name)]

    def __iter__(self) -> Iterator[str]:
        return iter(self._presets)

    def __len__(self) -> int:
        return len(self._presets)

    def __repr__(self) -> str:
        return f"PresetTable({self._presets!r}, aliases={self._aliases!r})"

    def fields(self, architecture: str, name: str) -> Fields:
        """A copy of preset `name`'s fields; the ValueError lists the current names."""
        if name not in self:
            raise ValueError(
                f"unknown preset {name!r} for {architecture!r}; choose one of: {names(self)}"
            )
        return dict(self[name])


def names(keys: Any) -> str:
    """Sorted, comma-separated: how every "choose one of" message lists valid names."""
    return ", ".join(sorted(keys))


ALIASES: dict[str, dict[str, str]] = {
    "gpt": {
        # minGPT's `gpt-nano` (3 layers, 3 heads, 48 wide) over 32-id SentencePiece sequences.
        "mingpt-nano": "nano",
        # The minGPT prior over VQ-VAE codes of the bachsformer project (16 codes a quarter).
        "bachsformer-prior": "vq-prior",
    },
    "music-transformer": {
        # The Colab nanoGPT + relative-attention pipeline over MidiTok REMI.
        "colab-remi": "base",
    },
    # The Keras chord-duration model: Embedding(256) -> GRU or LSTM(1024) -> Dense.
    "gru": {"keras-chord": "wide"},
    "lstm": {"keras-chord": "wide"},
}
"""architecture -> old preset name -> current name; each old name reproduces the setup of the
tool it names (see the comment above it), which is what a "coming from ..." table lists."""


_TINY_TRANSFORMER: Fields = {
    # Trains in about a minute on 2 CPU cores; used by tests, `make demo` and CI.
    "n_layer": 2,
    "n_head": 2,
    "n_embd": 64,
    "block_size": 128,
    "dropout": 0.0,
}
_SMALL_TRANSFORMER: Fields = {
    "n_layer": 6,
    "n_head": 8,
    "n_embd": 256,
    "block_size": 1024,
    "dropout": 0.1,
}
_TINY_RNN: Fields = {"embed_dim": 64, "hidden_size": 128, "num_layers": 1, "dropout": 0.0}
# One 1024-unit recurrent layer over 256-wide embeddings (with a vocabulary of 312 chord and
# duration tokens: 4.3M parameters for the GRU, 5.7M for the LSTM).
_WIDE_RNN: Fields = {"embed_dim": 256, "hidden_size": 1024, "num_layers": 1, "dropout": 0.0}

PRESETS: dict[str, PresetTable] = {
    "gpt": PresetTable(
        {
            "tiny": dict(_TINY_TRANSFORMER),
            "small": dict(_SMALL_TRANSFORMER),
            "nano": {"n_layer": 3, "n_head": 3, "n_embd": 48, "block_size": 32, "dropout": 0.1},
            # A prior over 16 VQ-VAE codes per quarter: windows of 192 codes (12 quarters),
            # of which 191 are inputs.
            "vq-prior": {
                "n_layer": 4,
                "n_head": 8,
                "n_embd": 128,
                "block_size": 191,
                "dropout": 0.1,
            },
        },
        ALIASES["gpt"],
    ),
    "music-transformer": PresetTable(
        {
            "tiny": dict(_TINY_TRANSFORMER),
            "small": dict(_SMALL_TRANSFORMER),
            "base": {
                "n_layer": 12,
                "n_head": 12,
                "n_embd": 360,
                "block_size": 1024,
                "dropout": 0.0,
                "rel_shared_heads": True,
            },
        },
        ALIASES["music-transformer"],
    ),
    "gru": PresetTable({"tiny": dict(_TINY_RNN), "wide": dict(_WIDE_RNN)}, ALIASES["gru"]),
    "lstm": PresetTable({"tiny": dict(_TINY_RNN), "wide": dict(_WIDE_RNN)}, ALIASES["lstm"]),
}
"""architecture -> preset name -> config fields. A preset is a starting point; overrides win."""


__all__ = ["ALIASES", "PRESETS", "Fields", "PresetTable", "names"]
