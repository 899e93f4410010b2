"""The validated config of each architecture: pydantic models, no torch.

The API process validates a user's `{architecture, preset, config}` before it enqueues a
training job and must not pay for importing torch, so these classes import nothing heavy; the
model classes that consume them live in `gpt.py` and `rnn.py`.

Vocabulary size is never part of a config: it comes from the corpus tokenizer when the model is
built, so a config cannot disagree with the data (a config that hard-codes it goes stale as soon
as the tokenizer or its BPE changes: a REMI vocabulary of 276-279 tokens was once trained with a
hard-coded 258).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class TransformerConfig(BaseModel):
    """Decoder-only transformer shape; shared by `gpt` and `music-transformer`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    n_layer: int = Field(6, ge=1, le=64, description="number of transformer blocks")
    n_head: int = Field(8, ge=1, le=64, description="attention heads per block")
    n_embd: int = Field(256, ge=8, le=8192, description="model width; divisible by n_head")
    block_size: int = Field(1024, ge=2, le=65536, description="longest context the model sees")
    dropout: float = Field(0.1, ge=0.0, lt=1.0, description="dropout on attention and residuals")
    bias: bool = Field(True, description="biases in Linear and LayerNorm (nanoGPT option)")

    @model_validator(mode="after")
    def _heads_divide_width(self) -> TransformerConfig:
        if self.n_embd % self.n_head != 0:
            raise ValueError(
                f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head}); "
                "change one of the two"
            )
        return self


class GPTConfig(TransformerConfig):
    """nanoGPT: learned absolute positions, so it never sees a position >= block_size."""


class MusicTransformerConfig(TransformerConfig):
    """Music Transformer: relative attention instead of absolute positions."""

    rel_shared_heads: bool = Field(
        True,
        description="one relative table per layer shared by all heads (fewer parameters; the "
        "`base` preset's setting) instead of one per head",
    )


class RNNConfig(BaseModel):
    """Embedding -> LayerNorm -> GRU/LSTM -> LayerNorm -> Linear."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    embed_dim: int = Field(256, ge=1, le=8192, description="token embedding width")
    hidden_size: int = Field(1024, ge=1, le=16384, description="recurrent state width")
    num_layers: int = Field(1, ge=1, le=16, description="stacked recurrent layers")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout between recurrent layers")


class GRUConfig(RNNConfig):
    """GRU language model."""


class LSTMConfig(RNNConfig):
    """LSTM language model."""


# Bytes per parameter while training in fp32 with AdamW: weights, gradients, two moments.
TRAIN_BYTES_PER_PARAM = 4 + 4 + 8
FLOAT_BYTES = 4


def parameter_count(config: BaseModel, vocab_size: int) -> int:
    """The exact number of trainable parameters of the model `config` builds, without torch.

    Mirrors `gpt.py` and `rnn.py` layer by layer (a unit test checks it against the built
    model for every architecture), so the API can refuse a model too large to train before
    anything is queued.
    """
    if isinstance(config, TransformerConfig):
        c, b = config.n_embd, int(config.bias)
        relative = isinstance(config, MusicTransformerConfig)
        norm = c + c * b
        rel = 0
        if isinstance(config, MusicTransformerConfig):
            head = c // config.n_head
            rel = config.block_size * head * (1 if config.rel_shared_heads else config.n_head)
        block = (
            2 * norm
            + (3 * c * c + 3 * c * b)  # c_attn
            + (c * c + c * b)  # attn c_proj
            + (4 * c * c + 4 * c * b)  # mlp c_fc
            + (4 * c * c + c * b)  # mlp c_proj
            + rel
        )
        positions = 0 if relative else config.block_size * c
        return vocab_size * c + positions + config.n_layer * block + norm  # lm_head is tied
    if isinstance(config, RNNConfig):
        gates = 4 if isinstance(config, LSTMConfig) else 3
        e, h = config.embed_dim, config.hidden_size
        rnn = sum(gates * h * ((e if i == 0 else h) + h + 2) for i in range(config.num_layers))
        return vocab_size * e + 2 * e + rnn + 2 * h + h * vocab_size + vocab_size
    raise TypeError(f"no parameter count for {type(config).__name__}")


def train_memory_bytes(config: BaseModel, vocab_size: int, batch_size: int, seq_len: int) -> int:
    """An estimate of the memory one training step needs: fp32 weights, gradients and AdamW
    moments, plus the activations kept for the backward pass at `batch_size` × `seq_len`.

    Activations follow the usual per-layer count for a transformer (about 18 × width values per
    token plus the attention matrix per head) and the gate states for a recurrent net; the
    logits over the vocabulary are counted twice (values and their gradient). An estimate
    that errs high: it exists to refuse requests no device could run, not to plan placement.
    """
    tokens = batch_size * seq_len
    if isinstance(config, TransformerConfig):
        per_layer = tokens * (18 * config.n_embd + 3 * config.n_head * seq_len)
        acts = config.n_layer * per_layer
    elif isinstance(config, RNNConfig):
        gates = 4 if isinstance(config, LSTMConfig) else 3
        acts = tokens * (config.embed_dim + config.num_layers * (gates + 2) * config.hidden_size)
    else:
        raise TypeError(f"no memory estimate for {type(config).__name__}")
    acts += 2 * tokens * vocab_size
    return TRAIN_BYTES_PER_PARAM * parameter_count(config, vocab_size) + FLOAT_BYTES * acts


__all__ = [
    "TRAIN_BYTES_PER_PARAM",
    "GPTConfig",
    "GRUConfig",
    "LSTMConfig",
    "MusicTransformerConfig",
    "RNNConfig",
    "TransformerConfig",
    "parameter_count",
    "train_memory_bytes",
]
