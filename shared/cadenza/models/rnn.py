"""GRU and LSTM language models.

Embedding -> LayerNorm -> GRU/LSTM (num_layers, hidden_size) -> LayerNorm -> Linear.
An RNN's cache is just its hidden state, so incremental decoding is exact and unbounded in
length: `block_size` is None and `crop_cache` keeps the state.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from cadenza.models.base import CadenzaModel
from cadenza.models.configs import RNNConfig

RNNState = Tensor | tuple[Tensor, Tensor]  # GRU: h (L, B, H); LSTM: (h, c)


@dataclass
class RNNCache:
    """Recurrent state after `length` positions (None before the first token)."""

    batch_size: int
    device: torch.device
    state: RNNState | None = None
    length: int = 0


class _RNNLM(CadenzaModel):
    """Shared body; subclasses choose the recurrent cell."""

    cell: type[nn.GRU] | type[nn.LSTM]
    rnn: nn.GRU | nn.LSTM
    config: RNNConfig

    def __init__(self, config: RNNConfig, vocab_size: int) -> None:
        super().__init__()
        self.config = config
        self.vocab_size = vocab_size
        self.block_size = None
        self.embed = nn.Embedding(vocab_size, config.embed_dim)
        self.ln_in = nn.LayerNorm(config.embed_dim)
        self.rnn = self._make_rnn(config)
        self.ln_out = nn.LayerNorm(config.hidden_size)
        self.head = nn.Linear(config.hidden_size, vocab_size)

    def _make_rnn(self, config: RNNConfig) -> nn.GRU | nn.LSTM:
        dropout = config.dropout if config.num_layers > 1 else 0.0  # only between layers
        return self.cell(
            config.embed_dim,
            config.hidden_size,
            config.num_layers,
            batch_first=True,
            dropout=dropout,
        )

    def _run(self, idx: Tensor, state: RNNState | None) -> tuple[Tensor, RNNState]:
        """idx (B, T) -> hidden outputs (B, T, H) and the final state."""
        x = self.ln_in(self.embed(idx))  # (B, T, E)
        out, state = self.rnn(x, state)  # (B, T, H)
        return out, state

    def forward(self, idx: Tensor, targets: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        out, _ = self._run(idx, None)
        logits = self.head(self.ln_out(out))  # (B, T, V)
        loss = self.loss(logits, targets) if targets is not None else None
        return logits, loss

    # -- incremental decoding ---------------------------------------------------------------

    def init_cache(self, batch_size: int, device: torch.device | str | None = None) -> RNNCache:
        dev = self.head.weight.device if device is None else torch.device(device)
        return RNNCache(batch_size=batch_size, device=dev)

    @torch.no_grad()
    def forward_step(self, idx: Tensor, cache: RNNCache, pad_mask: Tensor | None = None) -> Tensor:
        B, T = idx.size()
        if pad_mask is not None and bool(pad_mask.any()):
            if cache.length != 0:
                raise ValueError("pad_mask is only accepted while the cache is empty (prefill)")
            out = self._run_left_padded(idx, pad_mask, cache)
        else:
            out, cache.state = self._run(idx, cache.state)
        cache.length += T
        return self.head(self.ln_out(out))  # (B, T, V)

    def _run_left_padded(self, idx: Tensor, pad_mask: Tensor, cache: RNNCache) -> Tensor:
        """Prefill left-padded prompts: each row's state must see only its real tokens.

        Rows are rotated so the real tokens come first, run as a packed sequence (which stops
        each row at its own length), and the outputs are rotated back to the padded layout.
        """
        B, T = idx.size()
        n_pad = pad_mask.sum(dim=1)  # (B,)
        lengths = T - n_pad
        if bool((lengths == 0).any()):
            raise ValueError("every row needs at least one non-padding token")
        t = torch.arange(T, device=idx.device).view(1, T)
        to_front = (t + n_pad.view(B, 1)) % T  # (B, T) source column of each aligned column
        aligned = torch.gather(idx, 1, to_front)  # (B, T) real tokens first
        x = self.ln_in(self.embed(aligned))  # (B, T, E)
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out_packed, cache.state = self.rnn(packed, None)
        out, _ = pad_packed_sequence(out_packed, batch_first=True, total_length=T)  # (B, T, H)
        back = ((t - n_pad.view(B, 1)) % T).unsqueeze(-1).expand(B, T, out.size(-1))
        return torch.gather(out, 1, back)  # (B, T, H) in the padded layout

    def select_cache_rows(self, cache: RNNCache, rows: Tensor) -> RNNCache:
        state: RNNState | None = cache.state
        if isinstance(state, tuple):
            state = (state[0].index_select(1, rows), state[1].index_select(1, rows))
        elif state is not None:
            state = state.index_select(1, rows)  # (L, B, H)
        return RNNCache(int(rows.numel()), cache.device, state, cache.length)

    def cache_len(self, cache: RNNCache) -> int:
        return cache.length

    def crop_cache(self, cache: RNNCache, keep_last: int) -> None:
        """No-op: the recurrent state has no window to slide (block_size is None)."""
        if keep_last < 0:
            raise ValueError(f"keep_last must be >= 0, got {keep_last}")


class GRULM(_RNNLM):
    """GRU language model."""

    architecture = "gru"
    cell = nn.GRU


class LSTMLM(_RNNLM):
    """LSTM language model."""

    architecture = "lstm"
    cell = nn.LSTM
