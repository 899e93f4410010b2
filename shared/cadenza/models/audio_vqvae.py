"""A two-level VQ-VAE over log-mel frames: the learned part of the "audio-vq" tokenizer.

Why log-mel and not the waveform: measured on 2 CPU cores (BENCHMARKS.md, "Audio
generation"), a small waveform VQ-VAE trained for the same seconds reconstructs worse than a
mel one (held-out log-mel SNR 15.8 against 20.0 dB), since a mel frame every 256 samples is a
256× shorter sequence to convolve.
The price is the phase, which the mel drops: :func:`griffin_lim` estimates it when decoding
(no trained vocoder, so no weights to download or train).

Shapes, with the defaults (``coarse_frames`` 8, ``fine_per_coarse`` 4): (N, n_mels, T) frames
→ encoder (stride 2) → fine features (N, D, T/2) → encoder (stride 4) → coarse vectors
(N, D, T/8), each replaced by its nearest coarse codebook entry. The quantized coarse vectors
are upsampled back to T/2; the fine level quantizes the *difference* between the fine
features and that upsampled coarse guess (a residual at a finer rate), so the fine codes only
hold the detail the coarse ones miss. The decoder maps (coarse guess + fine residual) back to
frames; it is also trained on the coarse guess alone, so the coarse level decodes to a
recognisable (blurred) spectrogram by itself — what "reconstruction per level" measures.
Both codebooks are EMA codebooks (updated from running averages of the vectors assigned to each
entry, not by gradients) with dead-code restarts (an entry unused for a while restarts at an
encoder output of the current batch).

Imported only by :mod:`cadenza.tokenize.audio_vq` when it trains, encodes or decodes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from torch import nn

from cadenza.tokenize.options import AudioVQConfig

EPS = 1e-5  # log(mel + EPS): the floor of silence
_DEAD_AFTER = 50  # steps without use after which a code is restarted


# ---- mel front end and Griffin-Lim ------------------------------------------------------------


@lru_cache(maxsize=8)
def _mel_basis(sample_rate: int, n_fft: int, n_mels: int) -> NDArray[np.float32]:
    import librosa

    basis = librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels)
    return np.asarray(basis, np.float32)


def mel_basis(cfg: AudioVQConfig) -> torch.Tensor:
    """(n_mels, n_fft/2 + 1) Slaney mel filterbank."""
    return torch.from_numpy(_mel_basis(cfg.sample_rate, cfg.n_fft, cfg.n_mels))


def stft_magnitude(wave: torch.Tensor, n_fft: int, hop: int) -> torch.Tensor:
    """(F, T) magnitude of a 1-D signal, Hann window, centred frames."""
    window = torch.hann_window(n_fft, device=wave.device)
    spec = torch.stft(wave, n_fft, hop, window=window, center=True, return_complex=True)
    return spec.abs()


def mel_magnitude(wave: NDArray[np.float32], cfg: AudioVQConfig) -> NDArray[np.float32]:
    """(n_mels, T) mel magnitudes of a mono signal at ``cfg.sample_rate``; T = 1 + len // hop."""
    with torch.no_grad():
        mag = stft_magnitude(torch.from_numpy(np.asarray(wave, np.float32)), cfg.n_fft, cfg.hop)
        return (mel_basis(cfg) @ mag).numpy()


def log_mel(wave: NDArray[np.float32], cfg: AudioVQConfig) -> NDArray[np.float32]:
    """(n_mels, T) natural-log mel magnitudes."""
    return np.log(mel_magnitude(wave, cfg) + EPS).astype(np.float32)


@torch.no_grad()
def griffin_lim(
    mel: NDArray[np.float32], cfg: AudioVQConfig, length: int | None = None, seed: int = 0
) -> NDArray[np.float32]:
    """Mel magnitudes (n_mels, T) → waveform: the pseudo-inverse of the filterbank (clipped
    at 0) gives linear magnitudes, and fast Griffin-Lim (momentum 0.99) finds a phase that
    agrees with them. Deterministic for a given ``seed``."""
    basis = mel_basis(cfg)
    lin = torch.clamp(torch.linalg.pinv(basis) @ torch.from_numpy(mel), min=0.0)
    n_fft, hop = cfg.n_fft, cfg.hop
    window = torch.hann_window(n_fft)
    length = length if length is not None else (lin.shape[1] - 1) * hop
    frames = 1 + length // hop  # centred STFT frames of `length` samples
    if lin.shape[1] < frames:  # the frames of whole coarse steps lack the closing one
        lin = torch.cat([lin, lin[:, -1:].expand(-1, frames - lin.shape[1])], dim=1)
    lin = lin[:, :frames]
    gen = torch.Generator().manual_seed(seed)
    angles = torch.exp(2j * np.pi * torch.rand(lin.shape, generator=gen))
    prev = torch.zeros_like(angles)
    wave = torch.zeros(length)
    for _ in range(cfg.griffin_lim_iters):
        wave = torch.istft(lin * angles, n_fft, hop, window=window, center=True, length=length)
        rebuilt = torch.stft(wave, n_fft, hop, window=window, center=True, return_complex=True)
        angles = rebuilt - 0.99 / 1.99 * prev
        prev = rebuilt
        angles = angles / (angles.abs() + 1e-8)
    wave = torch.istft(lin * angles, n_fft, hop, window=window, center=True, length=length)
    return wave.numpy().astype(np.float32)


def multi_resolution_stft(
    ref: NDArray[np.float32], est: NDArray[np.float32], sample_rate: int
) -> float:
    """Mean over three STFT sizes (about 32, 64 and 128 ms windows at this rate) of spectral
    convergence + mean |log magnitude difference|: 0 for equal spectra, phase ignored."""
    n = min(ref.size, est.size)
    a, b = torch.from_numpy(ref[:n].copy()), torch.from_numpy(est[:n].copy())
    base = max(64, 1 << int(np.round(np.log2(sample_rate * 0.032))))
    total = 0.0
    sizes = (base, base * 2, base * 4)
    for n_fft in sizes:
        if n < n_fft:
            continue
        ma, mb = stft_magnitude(a, n_fft, n_fft // 4), stft_magnitude(b, n_fft, n_fft // 4)
        sc = torch.linalg.norm(ma - mb) / torch.clamp(torch.linalg.norm(ma), min=1e-8)
        lm = (torch.log(ma + 1e-7) - torch.log(mb + 1e-7)).abs().mean()
        total += float(sc) + float(lm)
    return total / len(sizes)


def mel_snr_db(ref: NDArray[np.float32], est: NDArray[np.float32]) -> float:
    """10·log10(Σ ref² / Σ (ref − est)²) over mel magnitudes (higher is better)."""
    n = min(ref.shape[-1], est.shape[-1])
    r, e = ref[..., :n].astype(np.float64), est[..., :n].astype(np.float64)
    err = float(((r - e) ** 2).sum())
    return float(10 * np.log10(max(float((r**2).sum()), 1e-12) / max(err, 1e-12)))


# ---- network ----------------------------------------------------------------------------------


class _Residual(nn.Module):
    def __init__(self, ch: int, dilation: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(ch, ch, 3, padding=dilation, dilation=dilation)
        self.conv2 = nn.Conv1d(ch, ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


def _down(cin: int, cout: int, s: int) -> nn.Module:
    """Length ÷ s (exactly, for s = 1 or even s; else kernel = stride)."""
    if s == 1:
        return nn.Conv1d(cin, cout, 3, padding=1)
    if s % 2 == 0:
        return nn.Conv1d(cin, cout, 2 * s, stride=s, padding=s // 2)
    return nn.Conv1d(cin, cout, s, stride=s)


def _up(cin: int, cout: int, s: int) -> nn.Module:
    """Length × s, the inverse shape of :func:`_down`."""
    if s == 1:
        return nn.Conv1d(cin, cout, 3, padding=1)
    if s % 2 == 0:
        return nn.ConvTranspose1d(cin, cout, 2 * s, stride=s, padding=s // 2)
    return nn.ConvTranspose1d(cin, cout, s, stride=s)


class _Codebook(nn.Module):
    """K vectors of D dims, updated by exponential moving averages of their assignments."""

    codebook: torch.Tensor
    ema_count: torch.Tensor
    ema_sum: torch.Tensor

    def __init__(self, k: int, d: int, decay: float) -> None:
        super().__init__()
        self.register_buffer("codebook", torch.zeros(k, d))
        self.register_buffer("ema_count", torch.ones(k))
        self.register_buffer("ema_sum", torch.zeros(k, d))
        self.decay = decay

    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        c = self.codebook
        d = (z * z).sum(1, keepdim=True) - 2 * z @ c.T + (c * c).sum(1)
        return d.argmin(1)

    @torch.no_grad()
    def update(self, z: torch.Tensor, idx: torch.Tensor) -> None:
        onehot = F.one_hot(idx, self.codebook.shape[0]).to(z.dtype)
        self.ema_count.mul_(self.decay).add_(onehot.sum(0), alpha=1 - self.decay)
        self.ema_sum.mul_(self.decay).add_(onehot.T @ z, alpha=1 - self.decay)
        total = self.ema_count.sum()
        count = (self.ema_count + EPS) / (total + EPS * len(self.ema_count)) * total
        self.codebook.copy_(self.ema_sum / count[:, None])

    @torch.no_grad()
    def restart(self, dead: torch.Tensor, z: torch.Tensor, rng: np.random.Generator) -> None:
        pick = torch.from_numpy(rng.integers(0, z.shape[0], size=int(dead.sum())))
        self.codebook[dead] = z[pick]
        self.ema_sum[dead] = z[pick]
        self.ema_count[dead] = 1.0


def _flat(z: torch.Tensor) -> torch.Tensor:
    """(N, D, T) → (N·T, D)."""
    return z.permute(0, 2, 1).reshape(-1, z.shape[1])


def _unflat(q: torch.Tensor, n: int) -> torch.Tensor:
    """(N·T, D) → (N, D, T)."""
    return q.view(n, -1, q.shape[1]).permute(0, 2, 1).contiguous()


class AudioVQVAE(nn.Module):
    """(N, n_mels, T) normalised log-mel → coarse codes (N, T/cf) and fine codes (N, T·fpc/cf)."""

    norm: torch.Tensor

    def __init__(self, cfg: AudioVQConfig) -> None:
        super().__init__()
        m, c, d = cfg.n_mels, cfg.channels, cfg.code_dim
        s_fine = cfg.coarse_frames // cfg.fine_per_coarse
        s_coarse = cfg.fine_per_coarse
        self.register_buffer("norm", torch.tensor([0.0, 1.0]))  # log-mel mean and std
        self.enc_fine = nn.Sequential(
            nn.Conv1d(m, c, 3, padding=1),
            nn.ReLU(),
            _down(c, c, s_fine),
            _Residual(c, 1),
            _Residual(c, 3),
            nn.ReLU(),
        )
        self.to_fine = nn.Conv1d(c, d, 1)
        self.enc_coarse = nn.Sequential(
            _down(c, c, s_coarse), _Residual(c, 1), _Residual(c, 3), nn.ReLU(), nn.Conv1d(c, d, 1)
        )
        self.up_coarse = nn.Sequential(
            _up(d, c, s_coarse), _Residual(c, 1), nn.ReLU(), nn.Conv1d(c, d, 1)
        )
        self.decoder = nn.Sequential(
            nn.Conv1d(d, c, 3, padding=1),
            _Residual(c, 1),
            _Residual(c, 3),
            nn.ReLU(),
            _up(c, c, s_fine),
            nn.ReLU(),
            nn.Conv1d(c, m, 3, padding=1),
        )
        self.coarse = _Codebook(cfg.coarse_codebook, d, cfg.decay)
        self.fine = _Codebook(cfg.fine_codebook, d, cfg.decay)

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Fine features (N, D, T/s_fine) and coarse vectors (N, D, T/coarse_frames)."""
        h = self.enc_fine(x)
        return self.to_fine(h), self.enc_coarse(h)

    def codes(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Coarse (N, Tc) and fine (N, Tf) code ids of normalised frames."""
        n = x.shape[0]
        hf, zc = self.features(x)
        ic = self.coarse.nearest(_flat(zc))
        uc = self.up_coarse(_unflat(self.coarse.codebook[ic], n))
        i_f = self.fine.nearest(_flat(hf - uc))
        return ic.view(n, -1), i_f.view(n, -1)

    def decode_codes(self, coarse: torch.Tensor, fine: torch.Tensor | None = None) -> torch.Tensor:
        """Normalised frames from coarse codes (N, Tc) and, unless None, fine codes (N, Tf)."""
        n = coarse.shape[0]
        z = self.up_coarse(_unflat(self.coarse.codebook[coarse.reshape(-1)], n))
        if fine is not None:
            z = z + _unflat(self.fine.codebook[fine.reshape(-1)], n)
        out: torch.Tensor = self.decoder(z)
        return out

    def loss(
        self, x: torch.Tensor, cfg: AudioVQConfig
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        """Reconstruction (both levels, and coarse alone) + commitment, straight-through;
        updates the EMA codebooks in training. Returns the loss, (coarse ids, fine ids) and
        the (coarse, fine) vectors that were quantized (for dead-code restarts)."""
        n = x.shape[0]
        hf, zc = self.features(x)
        zc_flat = _flat(zc)
        ic = self.coarse.nearest(zc_flat)
        qc = self.coarse.codebook[ic]
        if self.training:
            self.coarse.update(zc_flat.detach(), ic)
        commit = F.mse_loss(zc_flat, qc.detach())
        uc = self.up_coarse(_unflat(zc_flat + (qc - zc_flat).detach(), n))
        r = _flat(hf - uc.detach())
        i_f = self.fine.nearest(r)
        qf = self.fine.codebook[i_f]
        if self.training:
            self.fine.update(r.detach(), i_f)
        commit = commit + F.mse_loss(r, qf.detach())
        full = self.decoder(uc + _unflat(r + (qf - r).detach(), n))
        coarse_only = self.decoder(uc)
        loss = (
            F.mse_loss(full, x)
            + cfg.coarse_weight * F.mse_loss(coarse_only, x)
            + cfg.commitment * commit
        )
        return loss, (ic, i_f), (zc_flat.detach(), r.detach())


def _crops(
    mels: Sequence[NDArray[np.float32]], rng: np.random.Generator, size: int, count: int
) -> NDArray[np.float32]:
    """``count`` random crops of ``size`` frames (files shorter than that are padded at the
    floor value, i.e. silence), chosen with probability proportional to file length."""
    lengths = np.asarray([m.shape[1] for m in mels], np.float64)
    which = rng.choice(len(mels), size=count, p=lengths / lengths.sum())
    out = np.empty((count, mels[0].shape[0], size), np.float32)
    for j, w in enumerate(which):
        m = mels[w]
        if m.shape[1] <= size:
            out[j] = np.log(EPS)
            out[j, :, : m.shape[1]] = m
        else:
            s = int(rng.integers(0, m.shape[1] - size + 1))
            out[j] = m[:, s : s + size]
    return out


def train_audio_vqvae(
    mels: Sequence[NDArray[np.float32]],
    cfg: AudioVQConfig,
    progress: Callable[[int, float], None] | None = None,
) -> AudioVQVAE:
    """Train on log-mel arrays (n_mels, T) of the training files, seeded by ``cfg.seed``
    (same data, seed and torch thread count: same weights)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = AudioVQVAE(cfg)
    rng = np.random.default_rng(cfg.seed)
    allv = np.concatenate([m.reshape(-1) for m in mels])
    mean, std = float(allv.mean()), float(max(allv.std(), 1e-3))
    model.norm.copy_(torch.tensor([mean, std]))

    def batch() -> torch.Tensor:
        x = _crops(mels, rng, cfg.segment_frames, cfg.batch_size)
        return (torch.from_numpy(x) - mean) / std

    model.train()
    with torch.no_grad():  # codebooks start at encoder outputs of random crops
        x = batch()
        hf, zc = model.features(x)
        zc_flat = _flat(zc)
        rows = torch.from_numpy(rng.integers(0, zc_flat.shape[0], cfg.coarse_codebook))
        model.coarse.codebook.copy_(zc_flat[rows])
        model.coarse.ema_sum.copy_(zc_flat[rows])
        ic = model.coarse.nearest(zc_flat)
        r = _flat(hf - model.up_coarse(_unflat(model.coarse.codebook[ic], x.shape[0])))
        rows = torch.from_numpy(rng.integers(0, r.shape[0], cfg.fine_codebook))
        model.fine.codebook.copy_(r[rows])
        model.fine.ema_sum.copy_(r[rows])
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    books = (model.coarse, model.fine)
    last_used = [torch.zeros(b.codebook.shape[0], dtype=torch.long) for b in books]
    for step in range(cfg.steps):
        loss, ids, vecs = model.loss(batch(), cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        for book, used, idx, z in zip(books, last_used, ids, vecs, strict=True):
            used[idx.unique()] = step
            dead = used < step - _DEAD_AFTER
            if bool(dead.any()):
                book.restart(dead, z, rng)
                used[dead] = step
        if progress is not None:
            progress(step, float(loss))
    model.eval()
    return model


@torch.no_grad()
def encode_mel(
    model: AudioVQVAE, mel: NDArray[np.float32]
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Log-mel (n_mels, T) with T a multiple of coarse_frames → coarse (Tc,), fine (Tf,) ids."""
    mean, std = float(model.norm[0]), float(model.norm[1])
    x = (torch.from_numpy(np.ascontiguousarray(mel)) - mean) / std
    ic, i_f = model.codes(x.unsqueeze(0))
    return ic[0].numpy().astype(np.int64), i_f[0].numpy().astype(np.int64)


@torch.no_grad()
def decode_mel(
    model: AudioVQVAE, coarse: NDArray[np.int64], fine: NDArray[np.int64] | None
) -> NDArray[np.float32]:
    """Codes → log-mel (n_mels, T); without ``fine``, the coarse level alone."""
    mean, std = float(model.norm[0]), float(model.norm[1])
    c = torch.from_numpy(np.asarray(coarse, np.int64)).unsqueeze(0)
    f = None if fine is None else torch.from_numpy(np.asarray(fine, np.int64)).unsqueeze(0)
    out = model.decode_codes(c, f)[0] * std + mean
    return out.numpy().astype(np.float32)


__all__ = [
    "EPS",
    "AudioVQVAE",
    "decode_mel",
    "encode_mel",
    "griffin_lim",
    "log_mel",
    "mel_magnitude",
    "mel_snr_db",
    "multi_resolution_stft",
    "train_audio_vqvae",
]
