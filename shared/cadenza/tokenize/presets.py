"""Named tokenizer and augmentation presets, and the one place a corpus request becomes a spec.

A preset is a TokenizerSpec (or AugmentSpec) in JSON form that reproduces a known setup with
measured numbers. Presets used to be named after the tool whose setup they copy; those names
stay accepted as aliases (a request keeps the name its user sent) and resolve to the same values.
Importing this module imports neither MidiTok, symusic nor torch: the API resolves requests here.
"""

from __future__ import annotations

from typing import Any

from cadenza.tokenize.mmm import INFILL_SPECIALS, MIDITOK_SPECIALS
from cadenza.tokenize.spec import TokenizerSpec

#: REMI's beat resolution in the preset below: 8 positions per beat in the first 4 beats of a
#: note's duration, 4 per beat up to 12 beats.
_REMI_BEAT_RES = {"0_4": 8, "4_12": 4}

#: Ready-made tokenizer specs by name (``name``, ``config`` and ``bpe`` of a TokenizerSpec).
PRESETS: dict[str, dict[str, Any]] = {
    # REMI with chord, rest and tempo tokens, 32 velocities, 32 tempos. MidiTok 2 gave this
    # setup 276-279 ids; MidiTok 3.1 gives 284 (more chord qualities, a TimeSig token).
    "remi-chords-tempos": {
        "name": "REMI",
        "config": {
            "pitch_range": [21, 108],  # inclusive in MidiTok 3
            "use_pitchdrum_tokens": False,  # drums are dropped by cleaning; MidiTok 2 had none
            "time_signature_range": {"4": [4]},  # MidiTok 2 without TimeSig tokens assumed 4/4
            "beat_res": _REMI_BEAT_RES,
            "num_velocities": 32,
            "use_chords": True,
            "use_rests": True,
            "use_tempos": True,
            "beat_res_rest": {"0_8": 2},  # = MidiTok 2's rest_range (2, 8): half-beat rests up to 8
            "num_tempos": 32,
            "tempo_range": [40, 250],
        },
        "bpe": None,
    },
    # One character per note, then a SentencePiece-style unigram model over the text.
    "midichar-sentencepiece": {
        "name": "midichar",
        "config": {},
        "bpe": {"vocab_size": 31185, "model": "Unigram"},
    },
    # 16th-note grid, separator + steps, (pitch, duration) pairs, durations capped at 128 steps.
    "chord-duration-16th": {"name": "chord-duration", "config": {}, "bpe": None},
    # VQ-VAE over quarter-note rolls at full size: convs 1→32→64→128→128, 16 codes of 128 dims,
    # batch 512. Slow where tokenizing runs (the CPU worker): about an hour on 2 cores. Pair it
    # with the gpt preset "vq-prior".
    "quarter-vq-large": {
        "name": "quarter-vq",
        "config": {
            "channels": [32, 64, 128, 128],
            "code_dim": 128,
            "codebook_size": 16,
            "batch_size": 512,
            "steps": 2000,
        },
        "bpe": None,
    },
    # Multi-track MMM (REMI per track, a Program token heading each track, drums kept) with
    # the infill special tokens, so a model trained on it can continue, fill in bars and
    # tracks, and accompany (see cadenza.tokenize.mmm). Its corpora keep tracks apart:
    # PRESET_CLEAN below. No subwords: a learned piece could swallow a bar line.
    "multitrack": {
        "name": "MMM",
        "config": {
            "base_tokenizer": "REMI",
            "special_tokens": [*MIDITOK_SPECIALS, *INFILL_SPECIALS],
        },
        "bpe": None,
    },
}

#: Cleaning a preset needs instead of the defaults (which merge every track into one piano
#: track and drop drums); a request's own `clean` fields still win, field by field.
PRESET_CLEAN: dict[str, dict[str, Any]] = {
    "multitrack": {"merge_tracks": False, "drop_drums": False},
}

#: Older preset names, still accepted, and which tool's setup each one reproduces.
ALIASES: dict[str, str] = {
    "remi-colab": "remi-chords-tempos",  # the Colab nanoGPT + MidiTok REMI pipeline
    "midichar-ideas": "midichar-sentencepiece",  # the minGPT midichar idea generator
    "chord-duration-keras": "chord-duration-16th",  # the Keras chord-duration GRU/LSTM
    "bachsformer-vq": "quarter-vq-large",  # the bachsformer VQ-VAE + GPT
}

#: Every accepted name, current and older, to its preset (for callers that look names up
#: directly instead of calling :func:`resolve_spec`).
PRESETS_BY_ANY_NAME: dict[str, dict[str, Any]] = {
    **PRESETS,
    **{old: PRESETS[new] for old, new in ALIASES.items()},
}

#: Ready-made augmentations (AugmentSpec in JSON form) by name.
AUGMENT_PRESETS: dict[str, dict[str, Any]] = {
    # ±1..2 octaves, ±2 velocity steps (32 bins ≈ 4 units each), ±1 duration step (an 8th of a
    # beat at beat_res 8): the shifts that suit "remi-chords-tempos".
    "small-shifts": {
        "octaves": 2,
        "velocity_offsets": [-8, -4, 4, 8],
        "duration_offsets": [-0.125, 0.125],
    }
}

#: Older augmentation preset names, still accepted.
AUGMENT_ALIASES: dict[str, str] = {
    "colab": "small-shifts",  # the Colab nanoGPT + MidiTok REMI pipeline's augmentation
}


def _known(presets: dict[str, Any], aliases: dict[str, str]) -> str:
    """The names to show in an error: current names first, then the older ones still accepted."""
    return f"{', '.join(presets)} (older names still accepted: {', '.join(aliases)})"


def resolve_spec(
    *,
    preset: str | None = None,
    tokenizer: str | None = None,
    config: dict[str, Any] | None = None,
    bpe: dict[str, Any] | None = None,
) -> TokenizerSpec:
    """The validated TokenizerSpec of a corpus request: a preset and/or explicit options.

    With ``preset`` (a name of :data:`PRESETS` or an alias of :data:`ALIASES`), ``config`` is
    merged over the preset's options key by key and ``bpe``, when given, replaces the preset's;
    ``tokenizer`` may repeat the preset's tokenizer but not name another one. Without a preset
    the tokenizer defaults to REMI. Raises ValueError with a message a user can act on: for an
    unknown preset or a conflicting tokenizer a plain ValueError, for a bad option a pydantic
    ``ValidationError`` (a ValueError subclass, so callers that want per-field details catch
    it first).
    """
    config = config or {}
    if preset:
        name = ALIASES.get(preset, preset)
        base = PRESETS.get(name)
        if base is None:
            raise ValueError(f"unknown preset {preset!r}; known: {_known(PRESETS, ALIASES)}")
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


__all__ = [
    "ALIASES",
    "AUGMENT_ALIASES",
    "AUGMENT_PRESETS",
    "PRESETS",
    "PRESETS_BY_ANY_NAME",
    "PRESET_CLEAN",
    "resolve_spec",
]
