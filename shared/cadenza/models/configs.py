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


__all__ = [
    "GPTConfig",
    "GRUConfig",
    "LSTMConfig",
    "MusicTransformerConfig",
    "RNNConfig",
    "TransformerConfig",
]
