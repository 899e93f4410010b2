"""A VQ-VAE over quarter-note piano rolls: the learned part of the "quarter-vq" tokenizer.

The network has the shape of the bachsformer project's VQ-VAE (the tokenizer preset
`quarter-vq-large` uses its widths), and the gpt preset `vq-prior` is the prior over its codes.

Imported only by :mod:`cadenza.tokenize.quarter_vq` when it trains, encodes or decodes, so the
API process (which only validates specs) never imports torch.

Shapes: a quarter is a binary roll of 88 pitches × 32 columns, one input channel. Four strided
convolutions (1 → c1 → c2 → c3 → c4 channels) take it to an 8 × 2 grid, two residual blocks
follow, a 1×1 convolution projects to the code dimension, and each of the 16 grid vectors is
replaced by its nearest codebook entry (an EMA codebook: updated from running averages of
the vectors assigned to each entry, not by gradients). The decoder mirrors the encoder with
transposed convolutions and outputs one logit per cell (BCE loss).
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from torch import nn

from cadenza.tokenize.spec import QuarterVQConfig

ROWS, COLS = 88, 32
GRID = (8, 2)  # encoder output: 8 rows × 2 columns = 16 codes per quarter
_DEAD_AFTER = 20  # steps without use after which a code is restarted


class _Residual(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(ch, ch, 3, padding=1)
        self.conv2 = nn.Conv2d(ch, ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class QuarterVQVAE(nn.Module):
    """Encoder → EMA vector quantizer → decoder over (N, 1, 88, 32) rolls."""

    codebook: torch.Tensor
    ema_count: torch.Tensor
    ema_sum: torch.Tensor

    def __init__(self, cfg: QuarterVQConfig) -> None:
        super().__init__()
        c1, c2, c3, c4 = cfg.channels
        # 88×32 → 44×16 → 22×8 → 11×4 → 8×2
        self.encoder = nn.Sequential(
            nn.Conv2d(1, c1, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(c1, c2, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(c2, c3, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(c3, c4, 4, stride=(1, 2), padding=(0, 1)),
            *[_Residual(c4) for _ in range(cfg.residual_blocks)],
            nn.ReLU(),
            nn.Conv2d(c4, cfg.code_dim, 1),
        )
        self.decoder = nn.Sequential(
            nn.Conv2d(cfg.code_dim, c4, 1),
            *[_Residual(c4) for _ in range(cfg.residual_blocks)],
            nn.ReLU(),
            nn.ConvTranspose2d(c4, c3, 4, stride=(1, 2), padding=(0, 1)),
            nn.ReLU(),
            nn.ConvTranspose2d(c3, c2, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.ConvTranspose2d(c2, c1, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.ConvTranspose2d(c1, 1, 4, stride=2, padding=1),
        )
        self.register_buffer("codebook", torch.zeros(cfg.codebook_size, cfg.code_dim))
        self.register_buffer("ema_count", torch.ones(cfg.codebook_size))
        self.register_buffer("ema_sum", torch.zeros(cfg.codebook_size, cfg.code_dim))
        self.decay = cfg.decay

    # (N, D, 8, 2) ⇄ (N·16, D), grid cells in row-major order
    @staticmethod
    def _flat(z: torch.Tensor) -> torch.Tensor:
        return z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])

    def codes(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, 1, 88, 32) rolls → (N, 16) code ids and the (N·16, D) encoder vectors."""
        z = self._flat(self.encoder(x))
        d = (z * z).sum(1, keepdim=True) - 2 * z @ self.codebook.T + (self.codebook**2).sum(1)
        return d.argmin(1).view(x.shape[0], -1), z

    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """(N, 16) code ids → (N, 88, 32) logits."""
        n = codes.shape[0]
        q = self.codebook[codes.reshape(-1)].view(n, GRID[0], GRID[1], -1).permute(0, 3, 1, 2)
        return self.decoder(q.contiguous())[:, 0]

    def loss(
        self, x: torch.Tensor, commitment: float
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """BCE + commitment loss (straight-through), updating the EMA codebook in training."""
        n = x.shape[0]
        idx, z = self.codes(x)
        idx = idx.reshape(-1)
        q = self.codebook[idx]
        if self.training:
            with torch.no_grad():
                onehot = F.one_hot(idx, self.codebook.shape[0]).to(z.dtype)
                self.ema_count.mul_(self.decay).add_(onehot.sum(0), alpha=1 - self.decay)
                self.ema_sum.mul_(self.decay).add_(onehot.T @ z, alpha=1 - self.decay)
                total = self.ema_count.sum()
                count = (self.ema_count + 1e-5) / (total + 1e-5 * len(self.ema_count)) * total
                self.codebook.copy_(self.ema_sum / count[:, None])
        commit = F.mse_loss(z, q.detach())
        zq = z + (q - z).detach()
        zq = zq.view(n, GRID[0], GRID[1], -1).permute(0, 3, 1, 2).contiguous()
        logits = self.decoder(zq)
        recon = F.binary_cross_entropy_with_logits(logits, x)
        return recon + commitment * commit, idx, z.detach()


def train_vqvae(
    rolls: NDArray[np.uint8],
    cfg: QuarterVQConfig,
    progress: Callable[[int, float], None] | None = None,
) -> QuarterVQVAE:
    """Train on (N, 88, 32) binary rolls on CPU, seeded by ``cfg.seed``.

    The same seed and data give the same weights on the same machine with the same torch thread
    count; another thread count sums in another order and gives (slightly) other weights.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = QuarterVQVAE(cfg)
    rng = np.random.default_rng(cfg.seed)
    data = torch.from_numpy(rolls.astype(np.float32)).unsqueeze(1)
    n = data.shape[0]
    model.train()
    with torch.no_grad():  # codebook starts at encoder outputs of random quarters
        pick = torch.from_numpy(rng.integers(0, n, size=max(cfg.batch_size, 1)))
        z = QuarterVQVAE._flat(model.encoder(data[pick]))
        rows = torch.from_numpy(rng.choice(z.shape[0], cfg.codebook_size, replace=True))
        model.codebook.copy_(z[rows])
        model.ema_sum.copy_(z[rows])
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    last_used = torch.zeros(cfg.codebook_size, dtype=torch.long)
    for step in range(cfg.steps):
        batch = data[torch.from_numpy(rng.integers(0, n, size=cfg.batch_size))]
        loss, idx, z = model.loss(batch, cfg.commitment)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        last_used[idx.unique()] = step
        dead = last_used < step - _DEAD_AFTER
        if bool(dead.any()):  # a code unused for a while restarts at an encoder output
            with torch.no_grad():
                pick = torch.from_numpy(rng.integers(0, z.shape[0], size=int(dead.sum())))
                model.codebook[dead] = z[pick]
                model.ema_sum[dead] = z[pick]
                model.ema_count[dead] = 1.0
                last_used[dead] = step
        if progress is not None:
            progress(step, float(loss))
    model.eval()
    return model


@torch.no_grad()
def encode_rolls(model: QuarterVQVAE, rolls: NDArray[np.uint8], batch: int = 1024) -> NDArray:
    """(N, 88, 32) rolls → (N, 16) int64 code ids."""
    out = []
    for i in range(0, rolls.shape[0], batch):
        x = torch.from_numpy(rolls[i : i + batch].astype(np.float32)).unsqueeze(1)
        out.append(model.codes(x)[0].numpy())
    return np.concatenate(out) if out else np.zeros((0, GRID[0] * GRID[1]), np.int64)


@torch.no_grad()
def decode_codes(
    model: QuarterVQVAE, codes: NDArray[np.int64], threshold: float, batch: int = 1024
) -> NDArray[np.uint8]:
    """(N, 16) code ids → (N, 88, 32) binary rolls (sigmoid > threshold)."""
    logit_cut = float(np.log(threshold / (1 - threshold)))
    out = []
    for i in range(0, codes.shape[0], batch):
        logits = model.decode_codes(torch.from_numpy(codes[i : i + batch].astype(np.int64)))
        out.append((logits.numpy() > logit_cut).astype(np.uint8))
    return np.concatenate(out) if out else np.zeros((0, ROWS, COLS), np.uint8)


# ---- weights as deterministic bytes -----------------------------------------------------------


def _is_ema(name: str) -> bool:
    return name.rsplit(".", 1)[-1].startswith("ema_")


def weights_state(model: nn.Module) -> dict[str, Any]:
    """Parameters + codebook as JSON: names, shapes, base64 of little-endian float32 bytes
    (EMA accumulators left out: they only matter while training)."""
    sd = model.state_dict()
    names = sorted(k for k in sd if not _is_ema(k))
    blob = b"".join(sd[k].detach().cpu().numpy().astype("<f4").tobytes() for k in names)
    return {
        "dtype": "float32-le",
        "tensors": [[k, list(sd[k].shape)] for k in names],
        "sha256": hashlib.sha256(blob).hexdigest(),
        "data": base64.b64encode(blob).decode("ascii"),
    }


def model_from_state(cfg: QuarterVQConfig, state: dict[str, Any]) -> QuarterVQVAE:
    """Rebuild a trained model from :func:`weights_state` (no training)."""
    model = QuarterVQVAE(cfg)
    load_weights(model, state, "quarter-vq")
    return model


def load_weights(model: nn.Module, state: dict[str, Any], label: str) -> None:
    """Load :func:`weights_state` into ``model`` (built from the same spec) and set eval mode;
    ValueError naming ``label`` when the bytes are corrupt or do not fit the network."""
    blob = base64.b64decode(state["data"])
    if hashlib.sha256(blob).hexdigest() != state["sha256"]:
        raise ValueError(f"{label} weights are corrupt (sha256 mismatch)")
    sd = model.state_dict()
    offset = 0
    loaded: dict[str, torch.Tensor] = {}
    for name, shape in state["tensors"]:
        if name not in sd or list(sd[name].shape) != list(shape):
            raise ValueError(f"{label} weights do not fit the spec's network ({name} {shape})")
        size = int(np.prod(shape)) * 4
        arr = np.frombuffer(blob[offset : offset + size], dtype="<f4").reshape(shape)
        loaded[name] = torch.from_numpy(arr.astype(np.float32))
        offset += size
    missing = [k for k in sd if not _is_ema(k) and k not in loaded]
    if missing or offset != len(blob):
        raise ValueError(f"{label} weights are incomplete (missing {missing[:3]})")
    model.load_state_dict(loaded, strict=False)
    model.eval()


__all__ = [
    "COLS",
    "GRID",
    "ROWS",
    "QuarterVQVAE",
    "decode_codes",
    "encode_rolls",
    "load_weights",
    "model_from_state",
    "train_vqvae",
    "weights_state",
]
