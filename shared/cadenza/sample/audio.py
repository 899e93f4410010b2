"""Generating audio with a prior over audio-vq codes: continue a recording, or start fresh.

The `sample` job (`cadenza.jobs.handlers.sample_audio`) adds loading, storage and progress
around :func:`sample_audio`; `bench/audio_gen.py` calls it directly, so the benchmark measures
what a user gets.

The seam. The primer's codes and the new ones are decoded together, so the spectrogram runs
on across the seam; the output then keeps the real recording up to the seam and crossfades
(equal power, :data:`XFADE_S`) into the decoded audio, whose level is matched to the
recording's over the last second before the seam (Griffin-Lim and the codes' blur change the
level a little). So neither a click (a waveform discontinuity) nor a jump in loudness marks
where the recording ends; :func:`seam_report` measures both.
"""

from __future__ import annotations

import io
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

if TYPE_CHECKING:
    from cadenza.models.audio_upsampler import Upsampler
    from cadenza.models.base import CadenzaModel
    from cadenza.tokenize.audio_vq import AudioVQTokenizer
    from cadenza.tokenize.grammar import Grammar, Rules

XFADE_S = 0.1  # crossfade from the recording into the generated audio
_LEVEL_S = 1.0  # the recording's and the decoding's level compared over this long
_WIN_S = 0.05  # windows of the loudness / spectral-change measures


@dataclass
class AudioVariation:
    """One generated variation: its new ids, its waveform and how long it took."""

    index: int
    new_ids: list[int]
    wave: NDArray[np.float32]  # the output: primer + continuation, or the continuation alone
    seam_s: float | None  # where the continuation starts in `wave` (None: no primer in it)
    new_seconds: float  # length of the generated part
    prompt_tokens: int  # ids the model was prompted with (BOS, tags, the primer's codes)
    seconds: dict[str, float] = field(default_factory=dict)  # generate, decode
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def real_time_factor(self) -> float:
        """Seconds of compute per second of generated audio (< 1: faster than real time)."""
        return sum(self.seconds.values()) / max(self.new_seconds, 1e-9)


def primer_cut(
    tok: AudioVQTokenizer, wave: NDArray[np.float32], seconds: float | None
) -> NDArray[np.float32]:
    """The first ``seconds`` of ``wave`` (all of it when None), in whole coarse steps."""
    sps = tok.samples_per_step
    n = wave.size if seconds is None else min(wave.size, int(round(seconds * tok.cfg.sample_rate)))
    return wave[: (n // sps) * sps]


def splice(
    primer: NDArray[np.float32], decoded: NDArray[np.float32], sample_rate: int
) -> NDArray[np.float32]:
    """The recording up to the seam (``primer.size``), then ``decoded`` from there on, joined by
    an equal-power crossfade ending at the seam, with the decoded level matched to the
    recording's over the second before it."""
    seam = primer.size
    level = min(seam, int(_LEVEL_S * sample_rate))
    ref = float(np.sqrt(np.mean(primer[seam - level : seam] ** 2))) if level else 0.0
    got = float(np.sqrt(np.mean(decoded[seam - level : seam] ** 2))) if level else 0.0
    gain = float(np.clip(ref / got, 0.25, 4.0)) if got > 1e-6 and ref > 1e-6 else 1.0
    out = decoded.astype(np.float32) * np.float32(gain)
    fade = min(seam, int(XFADE_S * sample_rate))
    out[: seam - fade] = primer[: seam - fade]
    if fade:
        t = (np.arange(fade, dtype=np.float32) + 0.5) / fade
        a, b = np.cos(t * np.pi / 2), np.sin(t * np.pi / 2)
        out[seam - fade : seam] = primer[seam - fade : seam] * a + out[seam - fade : seam] * b
    return np.clip(out, -1.0, 1.0).astype(np.float32)


def spectral_flatness(wave: NDArray[np.float32], n_fft: int = 1024) -> float:
    """Mean over frames of geometric / arithmetic mean of the power spectrum: near 0.56 for
    white noise with this window, near 0 for tones; silent frames are left out."""
    import torch

    from cadenza.models.audio_vqvae import stft_magnitude

    if wave.size < n_fft:
        return 0.0
    power = stft_magnitude(torch.from_numpy(wave.copy()), n_fft, n_fft // 4).numpy() ** 2 + 1e-12
    loud = power.sum(0) > power.sum(0).max() * 1e-4
    if not loud.any():
        return 0.0
    p = power[:, loud]
    return float(np.mean(np.exp(np.log(p).mean(0)) / p.mean(0)))


def _windows(
    wave: NDArray[np.float32], sample_rate: int
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Per window of :data:`_WIN_S`: RMS in dBFS and the magnitude spectrum (rows)."""
    w = max(16, int(_WIN_S * sample_rate))
    n = wave.size // w
    frames = wave[: n * w].reshape(n, w).astype(np.float64)
    rms = 20 * np.log10(np.sqrt((frames**2).mean(1)) + 1e-6)
    spec = np.abs(np.fft.rfft(frames * np.hanning(w), axis=1))
    return rms, spec


def seam_report(wave: NDArray[np.float32], seam_s: float, sample_rate: int) -> dict[str, float]:
    """Change across the seam beside the change between neighbouring windows elsewhere:
    |Δ RMS| in dB and spectral flux (L2 change of the normalised spectrum), at the seam and as
    the median and 95th percentile over the whole output; the largest sample-to-sample step at
    the seam beside the 99.9th percentile elsewhere (a click shows as an outlier there)."""
    rms, spec = _windows(wave, sample_rate)
    w = max(16, int(_WIN_S * sample_rate))
    norm = spec / (np.linalg.norm(spec, axis=1, keepdims=True) + 1e-9)
    d_rms = np.abs(np.diff(rms))
    flux = np.linalg.norm(np.diff(norm, axis=0), axis=1)
    k = min(max(int(round(seam_s * sample_rate / w)) - 1, 0), max(d_rms.size - 1, 0))
    around = slice(max(k - 1, 0), k + 2)  # the windows touching the seam
    step = np.abs(np.diff(wave.astype(np.float64)))
    s = int(seam_s * sample_rate)
    return {
        "rms_jump_db": round(float(d_rms[around].max()), 3) if d_rms.size else 0.0,
        "rms_jump_db_median": round(float(np.median(d_rms)), 3) if d_rms.size else 0.0,
        "rms_jump_db_p95": round(float(np.percentile(d_rms, 95)), 3) if d_rms.size else 0.0,
        "flux": round(float(flux[around].max()), 4) if flux.size else 0.0,
        "flux_median": round(float(np.median(flux)), 4) if flux.size else 0.0,
        "flux_p95": round(float(np.percentile(flux, 95)), 4) if flux.size else 0.0,
        "sample_step": round(float(step[max(s - 8, 0) : s + 8].max()), 5) if step.size else 0.0,
        "sample_step_p999": round(float(np.percentile(step, 99.9)), 5) if step.size else 0.0,
    }


def audio_metrics(
    wave: NDArray[np.float32], sample_rate: int, seam_s: float | None
) -> dict[str, Any]:
    """Level, spectral flatness (noise ≈ 0.56) and, with a seam, :func:`seam_report`."""
    rms = float(np.sqrt(np.mean(wave.astype(np.float64) ** 2))) if wave.size else 0.0
    out: dict[str, Any] = {
        "rms_dbfs": round(20 * math.log10(rms + 1e-9), 2),
        "peak": round(float(np.abs(wave).max()) if wave.size else 0.0, 4),
        "spectral_flatness": round(spectral_flatness(wave), 4),
    }
    if seam_s is not None:
        out["seam"] = seam_report(wave, seam_s, sample_rate)
    return out


def wav_bytes(wave: NDArray[np.float32], sample_rate: int) -> bytes:
    """16-bit mono WAV (the renderer's writer, so every WAV Cadenza serves is written alike)."""
    from cadenza.render.audio import _wav_bytes

    return _wav_bytes(np.asarray(wave, np.float32)[None, :], sample_rate)


def spectrogram_png(
    wave: NDArray[np.float32], tok: AudioVQTokenizer, seam_s: float | None = None
) -> bytes:
    """A log-mel spectrogram of ``wave`` (time in seconds, mel bands), the seam marked."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from cadenza.models.audio_vqvae import log_mel

    mel = log_mel(wave, tok.cfg) if wave.size else np.zeros((tok.cfg.n_mels, 1), np.float32)
    seconds = wave.size / tok.cfg.sample_rate
    fig = Figure(figsize=(10, 3), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.imshow(mel, origin="lower", aspect="auto", extent=(0, seconds, 0, mel.shape[0]),
              cmap="magma")  # fmt: skip
    if seam_s is not None:
        ax.axvline(seam_s, color="white", linestyle="--", linewidth=1)
    ax.set_xlabel("seconds")
    ax.set_ylabel("mel band")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def planned_steps(tok: AudioVQTokenizer, max_seconds: float | None, max_new_tokens: int) -> int:
    """Coarse steps a request asks for: ``max_seconds`` of audio (rounded up), else
    ``max_new_tokens`` flattened ids in whole steps; at least one."""
    if max_seconds is not None:
        return max(1, math.ceil(max_seconds * tok.cfg.sample_rate / tok.samples_per_step))
    return max(1, int(max_new_tokens) // tok.cfg.group)


def _endless(tok: AudioVQTokenizer, rules: Rules, base_size: int, vocab_size: int) -> Grammar:
    """``rules`` over ids below ``vocab_size`` with no end of piece and no new BOS: a
    variation lasts as long as asked, and every id it spends is a code."""
    from cadenza.tokenize.grammar import Grammar, Rules, build_grammar

    g = build_grammar(
        Rules(rules.start, rules.step, lambda key: False, rules.summary),
        base_size=base_size,
        vocab_size=vocab_size,
        pad=tok.pad_id,
        bos=tok.bos_id,
        eos=tok.eos_id,
    )
    table = g.table.copy()
    table[:, tok.bos_id] = -1
    return Grammar(table, g.start, g.ended, g.summary)


def fixed_length_grammar(tok: AudioVQTokenizer) -> Any:
    """The tokenizer's grammar without the end of piece and without a new BOS (a BOS sampled
    at a step boundary, which a prior whose windows all open with BOS may well propose after
    its context slides, would cost the last step its final code). The prompt's own BOS and tag
    ids are skipped by the walk, which leaves the state at a step's start."""
    return _endless(tok, tok.grammar_rules(), tok.base_vocab_size, tok.vocab_size)


def sample_audio(
    model: CadenzaModel,
    tok: AudioVQTokenizer,
    primer: NDArray[np.float32] | None,
    options: Mapping[str, Any],
    *,
    n: int = 1,
    max_seconds: float | None = None,
    include_primer: bool = True,
    device: str = "cpu",
    on_token: Callable[[int, list[list[int]]], bool | None] | None = None,
    tags: Sequence[str] = (),
) -> list[AudioVariation]:
    """``n`` continuations of ``primer`` (whole coarse steps of mono audio at the tokenizer's
    rate; None starts fresh), each ``max_seconds`` long (else ``options['max_new_tokens']``
    ids, rounded down to whole steps). ``options`` are :class:`SamplingOptions` fields.
    ``tags`` (of a tokenizer that learned tags) fill the conditioning prefix after BOS, as
    every training window had its file's; the grammar's walk skips them, so it starts on a
    coarse code."""
    from cadenza.sample.sampler import SamplingParams, generate

    group, sps = tok.cfg.group, tok.samples_per_step
    steps = planned_steps(tok, max_seconds, options.get("max_new_tokens", group))
    primer_wave = primer if primer is not None and primer.size >= sps else None
    prompt = [tok.bos_id, *tok.prefix_ids(tags)]
    if primer_wave is not None:
        prompt += [int(i) for i in tok.wave_ids(primer_wave)]
    opts = {**dict(options), "max_new_tokens": steps * group, "stop_at_eos": False}
    params = SamplingParams(**opts, eos_id=tok.eos_id)
    t0 = time.perf_counter()
    block = model.block_size
    if tok.tag_slots and block is not None and len(prompt) + steps * group > block:
        rows = _tagged_chunks(model, tok, prompt, params, steps, n, block, on_token, device)
    else:
        rows = generate(
            model,
            [prompt],
            params,
            n=n,
            on_token=on_token,
            device=device,
            grammar=fixed_length_grammar(tok),
        )
    gen_s = (time.perf_counter() - t0) / max(len(rows), 1)
    return decode_variations(tok, prompt, rows, primer_wave, gen_s, include_primer=include_primer)


def coarse_grammar(tok: AudioVQTokenizer) -> Grammar:
    """The sampling grammar of a prior over the coarse stream (the flattened ids below
    ``fine_base``: specials and coarse codes): coarse codes only, no end, no new BOS."""
    from cadenza.tokenize.grammar import Rules

    cb, kc = tok.coarse_base, tok.cfg.coarse_codebook
    rules = Rules(0, lambda key, b: 0 if cb <= b < cb + kc else None, lambda key: False, "coarse")
    return _endless(tok, rules, tok.fine_base, tok.fine_base)


#: Primer steps a pair model regenerates before the seam (:func:`pair_primer_codes`).
PAIR_EDGE_STEPS = 1


def pair_primer_codes(
    tok: AudioVQTokenizer, primer_wave: NDArray[np.float32] | None
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """The primer's coarse and fine codes a pair model continues: all but the last
    :data:`PAIR_EDGE_STEPS` (none without a primer; a one-step primer keeps its step).

    The encoder codes a cut recording's last step against the silence after the cut (on the
    benchmark's validation primer its fine codes there differ from the whole recording's), and
    the upsampler continues that edge badly: decoding even the recording's *true* following
    codes after it jumped at the seam. Regenerating that step (the splice still keeps the
    recording up to the seam) took the continuations whose seam |Δ RMS| exceeds the output's
    95th percentile from 13 of 24 to 5 (the flattened prior's: 1; BENCHMARKS.md, "Audio
    generation"). The flattened prior's seam, measured smooth, keeps every step."""
    if primer_wave is None:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    pc, pf = tok.wave_codes(primer_wave)
    keep = pc.size - PAIR_EDGE_STEPS if pc.size > PAIR_EDGE_STEPS else pc.size
    return pc[:keep], pf[: keep * tok.cfg.fine_per_coarse]


def sample_audio_pair(
    coarse_model: CadenzaModel,
    upsampler: Upsampler,
    tok: AudioVQTokenizer,
    primer: NDArray[np.float32] | None,
    options: Mapping[str, Any],
    *,
    n: int = 1,
    max_seconds: float | None = None,
    include_primer: bool = True,
    device: str = "cpu",
    on_token: Callable[[int, list[list[int]]], bool | None] | None = None,
) -> list[AudioVariation]:
    """:func:`sample_audio` for Jukebox's layout: ``coarse_model`` (a prior over the coarse
    stream) continues the primer's coarse codes, then ``upsampler`` writes the fine codes of the
    new steps given all the coarse codes, the primer's true fine codes before them; the result
    is decoded and measured as :func:`sample_audio`'s is. The primer's last step is
    regenerated (:func:`pair_primer_codes`), so each row's ids start one step before the
    seam. Variation ``i`` upsamples with seed ``seed + i``. No tags: the coarse stream has no
    conditioning prefix. ``on_token`` hears of each coarse step (as
    :func:`cadenza.sample.sampler.generate` reports it; true cancels, and the steps sampled so
    far are upsampled and returned). The upsampler runs on the CPU."""
    from dataclasses import replace

    from cadenza.models.audio_upsampler import upsample
    from cadenza.sample.sampler import SamplingParams, generate

    fpc, sps = tok.cfg.fine_per_coarse, tok.samples_per_step
    steps = planned_steps(tok, max_seconds, options.get("max_new_tokens", tok.cfg.group))
    primer_wave = primer if primer is not None and primer.size >= sps else None
    pc, pf = pair_primer_codes(tok, primer_wave)
    steps += 0 if primer_wave is None else primer_wave.size // sps - pc.size  # the edge step
    opts = {**dict(options), "max_new_tokens": steps, "stop_at_eos": False}
    params = SamplingParams(**opts, eos_id=tok.eos_id)
    t0 = time.perf_counter()
    c_prompt = [tok.bos_id, *[int(c) + tok.coarse_base for c in pc]]
    coarse_rows = generate(
        coarse_model,
        [c_prompt],
        params,
        n=n,
        on_token=on_token,
        device=device,
        grammar=coarse_grammar(tok),
    )
    rows: list[list[int]] = []
    for i, new in enumerate(coarse_rows):
        c = np.concatenate([pc, np.asarray(new, np.int64) - tok.coarse_base])
        seed = None if params.seed is None else params.seed + i
        f = upsample(upsampler, c, pf.reshape(-1, fpc), replace(params, seed=seed))
        rows.append([int(x) for x in tok.codes_to_ids(c[pc.size :], f[pc.size :].reshape(-1))])
    gen_s = (time.perf_counter() - t0) / max(len(rows), 1)
    prompt = [tok.bos_id, *[int(x) for x in tok.codes_to_ids(pc, pf)]]
    return decode_variations(tok, prompt, rows, primer_wave, gen_s, include_primer=include_primer)


def decode_variations(
    tok: AudioVQTokenizer,
    prompt: Sequence[int],
    rows: Sequence[Sequence[int]],
    primer_wave: NDArray[np.float32] | None,
    generate_seconds: float,
    *,
    include_primer: bool = True,
) -> list[AudioVariation]:
    """Generated ids → variations: each row decoded after ``prompt`` (so the spectrogram runs on
    across the seam), spliced onto ``primer_wave``, timed and measured. Any generator of
    flattened ids feeds it (``bench/audio_prior.py`` decodes a coarse prior + upsampler's
    output with it), so every figure is computed alike; ``generate_seconds`` is per row."""
    sr = tok.cfg.sample_rate
    out: list[AudioVariation] = []
    for i, new in enumerate(rows):
        t1 = time.perf_counter()
        decoded = tok.decode_audio([*prompt, *new], seed=i)
        p = primer_wave.size if primer_wave is not None else 0
        if primer_wave is not None and include_primer:
            wave, seam = splice(primer_wave, decoded, sr), p / sr
        else:
            wave, seam = np.clip(decoded[p:], -1.0, 1.0).astype(np.float32), None
        dec_s = time.perf_counter() - t1
        var = AudioVariation(
            index=i,
            new_ids=[int(t) for t in new],
            wave=wave,
            seam_s=seam,
            new_seconds=(decoded.size - p) / sr,
            prompt_tokens=len(prompt),
            seconds={"generate": round(generate_seconds, 4), "decode": round(dec_s, 4)},
        )
        var.metrics = audio_metrics(wave, sr, seam)
        out.append(var)
    return out


def _tagged_chunks(
    model: CadenzaModel,
    tok: AudioVQTokenizer,
    prompt: list[int],
    params: Any,
    steps: int,
    n: int,
    block: int,
    on_token: Callable[[int, list[list[int]]], bool | None] | None,
    device: str,
) -> list[list[int]]:
    """Generation longer than the prior's context, for a tagged prior: in chunks, each
    prompted by BOS, the conditioning prefix and the last half block of whole steps, so every
    code is sampled with the tags in context (a plain slide would drop them, as no training
    window lacks them). A chunk's seed follows the request's, so the result stays seeded."""
    from dataclasses import replace

    from cadenza.sample.sampler import generate

    group, head = tok.cfg.group, 1 + tok.tag_slots
    ctx = max(0, (block // 2 - head) // group) * group  # ids of context kept per chunk
    per = max(1, (block - head - ctx) // group)  # steps generated per chunk
    codes = [list(prompt[head:]) for _ in range(n)]
    new: list[list[int]] = [[] for _ in range(n)]
    done, chunk = 0, 0
    grammar = fixed_length_grammar(tok)
    while done < steps:
        take = min(per, steps - done)
        seed = None if params.seed is None else params.seed + chunk
        p = replace(params, max_new_tokens=take * group, seed=seed)
        prompts = [prompt[:head] + (c[-ctx:] if ctx else []) for c in codes]
        offset = done * group

        def relay(step: int, rows: list[list[int]], offset: int = offset) -> bool | None:
            return None if on_token is None else on_token(offset + step, rows)

        got = generate(model, prompts, p, n=1, on_token=relay, device=device, grammar=grammar)
        for r, g in enumerate(got):
            codes[r] += g
            new[r] += g
        done, chunk = done + take, chunk + 1
        if any(len(g) < take * group for g in got):
            break  # cancelled
    return new


__all__ = [
    "PAIR_EDGE_STEPS",
    "XFADE_S",
    "AudioVariation",
    "audio_metrics",
    "coarse_grammar",
    "decode_variations",
    "pair_primer_codes",
    "primer_cut",
    "sample_audio",
    "sample_audio_pair",
    "seam_report",
    "spectral_flatness",
    "spectrogram_png",
    "splice",
    "wav_bytes",
]
