"""The "audio-vq" tokenizer: recordings ⇄ two levels of VQ-VAE codes, learned from the corpus.

The audio counterpart of quarter-vq, after Jukebox's design on a CPU budget: a VQ-VAE
compresses audio into codes at two time scales (:mod:`cadenza.models.audio_vqvae`), and any
prior the trainer knows models the codes.

* ``audio_symbols(bytes)``: any uploaded audio kind, decoded by ffmpeg to ``sample_rate`` mono
  16-bit; the symbols are the samples themselves (int16 values in int32), so the workers need
  no learned state and the corpus spool stays plain integers.
* ``fit(train)``: log-mel frames of the training files (each file's last
  ``holdout_fraction`` held out) train the VQ-VAE; the held-out tails measure reconstruction
  per level (:meth:`AudioVQTokenizer.fit_stats`).
* ``ids(symbols)``: per coarse step, the coarse code and then its ``fine_per_coarse`` fine
  codes (MusicGen's "flattening" of codebooks). Coarse ids come after the specials PAD, BOS,
  EOS, then the fine ids. One stream means every architecture the trainer has learns it
  unchanged, and each fine code is predicted with its coarse code (and all before it) in
  context: the prior plays the part of Jukebox's separate upsamplers, at the price of a
  ``1 + fine_per_coarse`` times longer sequence, which at 39 ids per second is still short.
  What it does not see is the coarse codes *after* a fine code, which Jukebox's upsampler
  does. Measured (``bench/audio_prior.py``; BENCHMARKS.md, "One flattened prior, or a coarse
  prior + an upsampler"), a coarse prior plus such an upsampler, at the same parameters and
  optimizer steps, describes validation audio in 6 % fewer bits per second at each model's
  best checkpoint (7 % on the fine level; 12 % with twice the training audio), though 1.5 %
  more at the bench's fixed 400 steps, and its continuations' seams are rougher. So the pair
  is the better model and should become a training option; until it is, the one stream is
  what every audio-vq corpus trains and samples.
* Style tags (``learn_tags``): after the code ids, one id per tag the corpus's files carry
  (sorted) and one "no tag" id. Each file's sequence starts with a conditioning prefix of
  :attr:`AudioVQTokenizer.tag_slots` ids after BOS: its tags' ids (sorted), padded with the
  no-tag id. The trainer puts that prefix at the start of *every* window it cuts from the file
  (``cadenza.train.data.TrainBatches``), as Jukebox conditions every window on its artist and
  genre, and the sampler writes the requested tags' prefix before the codes
  (:meth:`AudioVQTokenizer.prefix_ids`). A fixed length keeps the codes' coarse-step grid.
* ``decode_audio(ids)``: codes → log-mel → Griffin-Lim → waveform; ungrammatical or
  incomplete steps are skipped. ``decode`` (the MIDI interface) returns an empty score.

torch is imported only inside the methods that train or run the network.
"""

from __future__ import annotations

import tempfile
import time as _time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from numpy.typing import NDArray
from symusic.core import ScoreTick as Score

from cadenza.tokenize.base import OwnSpecials, Symbols, Tokenizer, empty_symbols
from cadenza.tokenize.controls import MAX_TAGS
from cadenza.tokenize.grammar import Key, Rules
from cadenza.tokenize.options import AudioVQConfig
from cadenza.tokenize.spec import TokenizerSpec

if TYPE_CHECKING:
    from cadenza.models.audio_vqvae import AudioVQVAE

N_SPECIALS = 3
_PCM = 32768.0
_MAX_EVAL_SECONDS = 60.0  # held-out audio measured per fit (Griffin-Lim is not free on CPU)


def decode_audio_bytes(data: bytes, sample_rate: int, max_seconds: float) -> NDArray[np.float32]:
    """Any accepted audio kind → mono float32 at ``sample_rate`` (ffmpeg resamples and mixes
    down). Raises :class:`cadenza.audio.probe.AudioRejected` (a ValueError) for bytes that are
    not audio and ValueError for a recording longer than ``max_seconds``."""
    import soundfile as sf

    from cadenza.audio.convert import convert

    with tempfile.TemporaryDirectory(prefix="cadenza-audio-vq-") as tmp:
        src, dst = Path(tmp) / "in", Path(tmp) / "out.wav"
        src.write_bytes(data)
        info = convert(src, dst, sample_rate=sample_rate, mono=True)
        if info.duration_s > max_seconds:
            raise ValueError(
                f"the recording lasts {info.duration_s:.0f} s, longer than the tokenizer's "
                f"max_file_seconds ({max_seconds:.0f} s); crop it first"
            )
        wave, _ = sf.read(str(dst), dtype="float32", always_2d=False)
    return np.asarray(wave, np.float32).reshape(-1)


class AudioVQTokenizer(OwnSpecials, Tokenizer):
    """Audio ⇄ coarse + fine VQ-VAE codes, learned by :meth:`fit`."""

    names = ("audio-vq",)
    input_kind: ClassVar[str] = "audio"

    def __init__(self, spec: TokenizerSpec) -> None:
        super().__init__(spec)
        self.cfg = AudioVQConfig.model_validate(spec.config)
        self._model: AudioVQVAE | None = None
        self._weights: dict[str, Any] | None = None
        self._report: dict[str, Any] = {}
        self._fit_seconds: float | None = None
        self.tags: list[str] = []

    # ---- vocabulary ---------------------------------------------------------------------------
    @property
    def coarse_base(self) -> int:
        """Id of coarse code 0."""
        return N_SPECIALS

    @property
    def fine_base(self) -> int:
        """Id of fine code 0."""
        return N_SPECIALS + self.cfg.coarse_codebook

    @property
    def tag_base(self) -> int:
        """Id of the first learned tag (the no-tag id follows the last)."""
        return N_SPECIALS + self.cfg.coarse_codebook + self.cfg.fine_codebook

    @property
    def no_tag_id(self) -> int:
        """Pads a file's conditioning prefix when it has fewer tags than the prefix holds."""
        return self.tag_base + len(self.tags)

    @property
    def tag_slots(self) -> int:
        """Length of the conditioning prefix after BOS: 0 without learned tags."""
        return min(len(self.tags), MAX_TAGS)

    @property
    def vocab_size(self) -> int:
        return self.tag_base + (len(self.tags) + 1 if self.tags else 0)

    @property
    def base_vocab_size(self) -> int:
        return self.vocab_size

    @property
    def is_trained(self) -> bool:
        return self._weights is not None

    @property
    def samples_per_step(self) -> int:
        """Audio samples one coarse step (``group`` ids) covers."""
        return self.cfg.hop * self.cfg.coarse_frames

    def _net(self) -> AudioVQVAE:
        if self._weights is None:
            raise RuntimeError("the audio-vq VQ-VAE is not trained yet; call fit() first")
        if self._model is None:
            from cadenza.models.audio_vqvae import AudioVQVAE
            from cadenza.models.vqvae import load_weights

            model = AudioVQVAE(self.cfg)
            load_weights(model, self._weights, "audio-vq")
            self._model = model
        return self._model

    # ---- style tags -------------------------------------------------------------------------
    def set_tags(self, tags: Sequence[str]) -> None:
        """The corpus's tags (every used file's); ids after the code ids. Only ``learn_tags``."""
        if self.spec.learn_tags:
            self.tags = sorted(set(tags))

    def tag_id(self, tag: str) -> int | None:
        return self.tag_base + self.tags.index(tag) if tag in self.tags else None

    def prefix_ids(self, tags: Sequence[str]) -> list[int]:
        """The conditioning prefix of ``tags``: their ids (sorted, unknown ones left out, the
        first :attr:`tag_slots` kept), padded with the no-tag id; [] without learned tags."""
        k = self.tag_slots
        ids = sorted({i for t in tags if (i := self.tag_id(t)) is not None})[:k]
        return ids + [self.no_tag_id] * (k - len(ids))

    def with_tags(self, ids: NDArray[np.int32], tags: Sequence[str]) -> NDArray[np.int32]:
        """A file's codes after its conditioning prefix (unchanged without learned tags); an
        empty file gets the prefix too, so every BOS of the stream is followed by one."""
        if not self.tag_slots:
            return ids
        return np.concatenate([np.asarray(self.prefix_ids(tags), np.int32), ids])

    def capabilities(self) -> dict[str, Any]:
        from cadenza.tokenize.controls import capabilities

        return capabilities([], self.tags)

    def grammar_transparent(self) -> list[int]:
        """Tag and no-tag ids: a prompt's conditioning prefix passes the code grammar."""
        return list(range(self.tag_base, self.vocab_size))

    # ---- encoding -----------------------------------------------------------------------------
    def symbols(self, score: Score) -> Symbols:
        raise ValueError("audio-vq encodes audio recordings, not MIDI")

    def audio_symbols(self, data: bytes) -> Symbols:
        """An uploaded recording's bytes → its samples at the tokenizer's rate."""
        wave = decode_audio_bytes(data, self.cfg.sample_rate, self.cfg.max_file_seconds)
        return self.wave_symbols(wave)

    def wave_symbols(self, wave: NDArray[np.float32]) -> Symbols:
        """Mono float samples in [-1, 1] → symbols (16-bit values)."""
        if wave.size < self.samples_per_step:
            return empty_symbols()
        pcm = np.clip(np.rint(wave * _PCM), -32768, 32767).astype(np.int32)
        return Symbols(pcm, np.zeros(1, np.int32), 0)

    @staticmethod
    def wave(item: Symbols) -> NDArray[np.float32]:
        """The samples of symbols as floats in [-1, 1]."""
        return (item.symbols.astype(np.float32) / _PCM).astype(np.float32)

    def _frames(self, wave: NDArray[np.float32]) -> NDArray[np.float32]:
        """Log-mel of ``wave``, cut to whole coarse steps (the partial last step dropped)."""
        from cadenza.models.audio_vqvae import log_mel

        mel = log_mel(wave, self.cfg)
        steps = wave.size // self.samples_per_step
        return mel[:, : steps * self.cfg.coarse_frames]

    def wave_codes(self, wave: NDArray[np.float32]) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
        """Coarse (steps,) and fine (steps·fine_per_coarse,) codes of whole steps of ``wave``."""
        from cadenza.models.audio_vqvae import encode_mel

        mel = self._frames(wave)
        if mel.shape[1] == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        return encode_mel(self._net(), mel)

    def codes_to_ids(self, coarse: NDArray[np.int64], fine: NDArray[np.int64]) -> NDArray[np.int32]:
        """Flatten: per coarse step its coarse id, then its fine ids."""
        fpc = self.cfg.fine_per_coarse
        grid = np.empty((coarse.size, 1 + fpc), np.int64)
        grid[:, 0] = coarse + self.coarse_base
        grid[:, 1:] = fine.reshape(-1, fpc) + self.fine_base
        return grid.reshape(-1).astype(np.int32)

    def wave_ids(self, wave: NDArray[np.float32]) -> NDArray[np.int32]:
        """Final ids of whole coarse steps of ``wave`` (what a primer recording becomes)."""
        return self.codes_to_ids(*self.wave_codes(wave))

    def ids_batch(self, items: Sequence[Symbols]) -> list[NDArray[np.int32]]:
        return [self.wave_ids(self.wave(it)) for it in items]

    def ids_to_codes(self, ids: Sequence[int]) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
        """Inverse of :meth:`codes_to_ids` on any sequence: specials, out-of-range ids, and
        steps that are incomplete or out of order are skipped (a step is a coarse id followed
        by exactly ``fine_per_coarse`` fine ids)."""
        kc, kf, fpc = self.cfg.coarse_codebook, self.cfg.fine_codebook, self.cfg.fine_per_coarse
        coarse: list[int] = []
        fine: list[int] = []
        step: list[int] = []
        for raw in ids:
            i = int(raw)
            if self.coarse_base <= i < self.coarse_base + kc:
                step = [i - self.coarse_base]
            elif self.fine_base <= i < self.fine_base + kf and step:
                step.append(i - self.fine_base)
                if len(step) == 1 + fpc:
                    coarse.append(step[0])
                    fine.extend(step[1:])
                    step = []
            else:
                step = []
        return np.asarray(coarse, np.int64), np.asarray(fine, np.int64)

    def decode_mel(self, ids: Sequence[int], levels: int = 2) -> NDArray[np.float32]:
        """Ids → log-mel frames (n_mels, steps·coarse_frames); ``levels`` 1 = coarse alone."""
        from cadenza.models.audio_vqvae import decode_mel

        coarse, fine = self.ids_to_codes(ids)
        if coarse.size == 0:
            return np.zeros((self.cfg.n_mels, 0), np.float32)
        return decode_mel(self._net(), coarse, fine if levels >= 2 else None)

    def decode_audio(
        self, ids: Sequence[int], levels: int = 2, seed: int = 0
    ) -> NDArray[np.float32]:
        """Ids → mono float32 waveform at ``sample_rate`` (``samples_per_step`` per step)."""
        from cadenza.models.audio_vqvae import EPS, griffin_lim

        mel = self.decode_mel(ids, levels)
        if mel.shape[1] == 0:
            return np.zeros(0, np.float32)
        length = mel.shape[1] * self.cfg.hop
        mag = np.maximum(np.exp(mel) - EPS, 0.0).astype(np.float32)
        return griffin_lim(mag, self.cfg, length=length, seed=seed)

    def decode(self, ids: Sequence[int]) -> Score:
        """An empty score: audio-vq ids are sound, not notes (see :meth:`decode_audio`)."""
        return Score(480)

    # ---- fitting ------------------------------------------------------------------------------
    def fit(self, train: Sequence[Symbols]) -> None:
        from cadenza.models.audio_vqvae import log_mel, train_audio_vqvae
        from cadenza.models.vqvae import weights_state

        t0 = _time.perf_counter()
        step = self.samples_per_step
        fit_waves: list[NDArray[np.float32]] = []
        held: list[NDArray[np.float32]] = []
        for item in train:
            w = self.wave(item)
            n_steps = w.size // step
            n_hold = int(n_steps * self.cfg.holdout_fraction)
            if n_hold and n_steps - n_hold >= 1:
                fit_waves.append(w[: (n_steps - n_hold) * step])
                held.append(w[(n_steps - n_hold) * step : n_steps * step])
            elif n_steps:
                fit_waves.append(w[: n_steps * step])
        if not fit_waves:
            raise ValueError("audio-vq: the training files have no audio to learn from")
        mels = [log_mel(w, self.cfg) for w in fit_waves]
        model = train_audio_vqvae(mels, self.cfg)
        self._weights = weights_state(model)
        self._model = None  # re-read from the saved weights: the same numbers after a reload
        report: dict[str, Any] = {
            "sample_rate": self.cfg.sample_rate,
            "seconds_fit": round(sum(w.size for w in fit_waves) / self.cfg.sample_rate, 3),
            "seconds_held_out": round(sum(w.size for w in held) / self.cfg.sample_rate, 3),
            "steps": self.cfg.steps,
            "codes_per_second": {
                "coarse": round(self.cfg.sample_rate / step, 4),
                "fine": round(self.cfg.sample_rate / step * self.cfg.fine_per_coarse, 4),
                "total": round(self.cfg.codes_per_second, 4),
            },
        }
        budget = int(_MAX_EVAL_SECONDS * self.cfg.sample_rate)
        part = held if held else fit_waves
        sample: list[NDArray[np.float32]] = []
        for w in part:
            if budget <= 0:
                break
            sample.append(w[: max(step, (min(w.size, budget) // step) * step)])
            budget -= sample[-1].size
        report["measured_on"] = "held_out" if held else "train"
        report.update(self.reconstruction(sample))
        self._report = report
        self._fit_seconds = _time.perf_counter() - t0

    def reconstruction(self, waves: Sequence[NDArray[np.float32]]) -> dict[str, Any]:
        """Per level: SNR (dB) of the mel magnitudes (``mel_snr_db``) and of the log-mel above
        the silence floor (``log_mel_snr_db``), and the multi-resolution STFT distance of
        the Griffin-Lim waveform to the original; ``vocoder`` is Griffin-Lim on the original
        mel (the floor the codes cannot beat), and ``codes_used`` counts distinct codes."""
        from cadenza.models.audio_vqvae import (
            EPS,
            griffin_lim,
            mel_magnitude,
            mel_snr_db,
            multi_resolution_stft,
        )

        sr = self.cfg.sample_rate
        acc: dict[str, list[tuple[float, float, float, int]]] = {
            "coarse": [],
            "fine": [],
            "vocoder": [],
        }
        floor = float(np.log(EPS))
        used_c: set[int] = set()
        used_f: set[int] = set()
        for w in waves:
            if w.size < self.samples_per_step:
                continue
            frames = (w.size // self.samples_per_step) * self.cfg.coarse_frames
            ref = mel_magnitude(w, self.cfg)[:, :frames]
            ids = [int(i) for i in self.wave_ids(w)]
            c, f = self.ids_to_codes(ids)
            used_c.update(int(x) for x in c)
            used_f.update(int(x) for x in f)
            mags = {"vocoder": ref}
            for name, lv in (("coarse", 1), ("fine", 2)):
                mags[name] = np.maximum(np.exp(self.decode_mel(ids, lv)) - EPS, 0).astype(
                    np.float32
                )
            for name, mag in mags.items():
                est = griffin_lim(mag, self.cfg, length=mag.shape[1] * self.cfg.hop)
                log_ref, log_est = np.log(ref + EPS) - floor, np.log(mag + EPS) - floor
                acc[name].append(
                    (
                        mel_snr_db(ref, mag),
                        mel_snr_db(log_ref, log_est),
                        multi_resolution_stft(w, est, sr),
                        w.size,
                    )
                )
        out: dict[str, Any] = {}
        for name, rows in acc.items():
            if not rows:
                continue
            weights = np.asarray([r[3] for r in rows], np.float64)
            out[name] = {
                key: round(float(np.average([r[k] for r in rows], weights=weights)), 4)
                for k, key in enumerate(("mel_snr_db", "log_mel_snr_db", "mr_stft"))
            }
        out["levels"] = {"coarse": "coarse codes alone", "fine": "coarse + fine codes"}
        out["codes_used"] = {"coarse": len(used_c), "fine": len(used_f)}
        return out

    def fit_stats(self) -> dict[str, Any]:
        report = dict(self._report)
        if self._fit_seconds is not None:
            report["fit_seconds"] = round(self._fit_seconds, 3)
        return report

    # ---- grammar ------------------------------------------------------------------------------
    def grammar_rules(self) -> Rules:
        """Steps of one coarse id then ``fine_per_coarse`` fine ids; a piece ends on a step
        boundary."""
        kc, kf, group = self.cfg.coarse_codebook, self.cfg.fine_codebook, self.cfg.group
        cb, fb = self.coarse_base, self.fine_base

        def step(key: Key, b: int) -> Key | None:
            assert isinstance(key, int)
            ok = cb <= b < cb + kc if key == 0 else fb <= b < fb + kf
            return (key + 1) % group if ok else None

        return Rules(
            0, step, lambda key: key == 0, f"audio-vq: a coarse code, then {group - 1} fine codes"
        )

    # ---- persistence --------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        out: dict[str, Any] = {"weights": self._weights, "report": self._report}
        if self.tags:  # left out otherwise: tokenizers without tags keep their bytes and hash
            out["tags"] = self.tags
        return out

    @classmethod
    def from_state(cls, spec: TokenizerSpec, state: dict[str, Any]) -> AudioVQTokenizer:
        tok = cls(spec)
        tok._weights = state.get("weights")
        tok._report = dict(state.get("report") or {})
        tok.set_tags(state.get("tags") or [])
        return tok


__all__ = ["AudioVQTokenizer", "decode_audio_bytes"]
