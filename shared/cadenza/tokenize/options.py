"""Options of Cadenza's own encodings (midichar, chord-duration) and of the quarter-vq tokenizer.

Pydantic models, so a wrong option fails at request time with its name in the message. This
module imports neither symusic nor torch: the API validates requests with it.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

#: Largest mixed-radix value that maps to a Unicode scalar (code points minus surrogates),
#: leaving the first 256 code points unused so that no symbol is whitespace or a control char.
MAX_CHAR_SYMBOLS = 0x110000 - 0x800 - 0x100


class MidiCharConfig(BaseModel):
    """Options of the "midichar" encoding: one Unicode character per note.

    One character per note packs (pitch, velocity level, onset step since the previous note,
    duration bin) in mixed radix. Onsets are quantized on an absolute grid first, so rounding
    never accumulates; gaps longer than ``max_step`` become extra "rest" characters instead of
    being clamped; durations use bins that are exact below 16 steps and 4 % apart above. The
    defaults keep the onset grid, gap width and velocity levels of the original midichar format
    (a minGPT "idea generator"), whose 32 coarse duration bins decoded every note to ≥ 1.29 s.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    steps_per_second: int = Field(default=63, ge=8, le=1000)  # round(63·Δs): ~16 ms onset grid
    max_step: int = Field(default=63, ge=1, le=4095)  # 6 bits: onset gaps up to 1 s per char
    velocity_levels: int = Field(default=3, ge=1, le=32)  # clamp(round(3v/127), 1, 3)
    # 32 bins of 0.31 s each lost every short note; 64 log-spaced bins keep the error ≤ 4 %
    duration_bins: int = Field(default=64, ge=2, le=1024)
    max_duration_s: float = Field(default=8.0, gt=0.0, le=120.0)  # longer notes are held this long
    pitch_range: tuple[int, int] = (21, 108)  # inclusive; 88 keys keep the radix in Unicode
    word_seconds: float = Field(default=2.0, gt=0.0, le=60.0)  # BPE merges never cross these marks

    @model_validator(mode="after")
    def _check(self) -> MidiCharConfig:
        lo, hi = self.pitch_range
        if not 0 <= lo <= hi <= 127:
            raise ValueError("pitch_range must satisfy 0 <= low <= high <= 127")
        n = (hi - lo + 2) * self.velocity_levels * (self.max_step + 1) * self.duration_bins
        if n > MAX_CHAR_SYMBOLS:
            raise ValueError(
                f"(pitches + 1) × velocity_levels × (max_step + 1) × duration_bins = {n:,} "
                f"does not fit in one Unicode character ({MAX_CHAR_SYMBOLS:,}); lower one"
            )
        if self.max_duration_s * self.steps_per_second < self.duration_bins:
            raise ValueError("max_duration_s × steps_per_second must be ≥ duration_bins")
        return self


class ChordDurationConfig(BaseModel):
    """Options of the "chord-duration" encoding: separator + steps, then (pitch, duration) pairs.

    The defaults are the token format of a Keras GRU/LSTM chord-duration model: a 16th-note
    grid, durations capped at 128 steps, 10 tempo tokens, pitches 21-108.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    steps_per_quarter: int = Field(default=4, ge=1, le=48)  # a 16th-note grid
    max_duration: int = Field(default=128, ge=1, le=1024)  # durations capped at 128 steps
    max_shift: int = Field(default=128, ge=1, le=1024)  # longer gaps use several separator groups
    pitch_range: tuple[int, int] = (21, 108)  # inclusive: the 88 piano keys
    num_tempos: int = Field(default=10, ge=0, le=64)  # 0 = no tempo tokens
    tempo_range: tuple[float, float] = (40.0, 250.0)  # quarter notes per minute, log-spaced
    # the encoding has no velocity; decoded notes get this one
    velocity: int = Field(default=80, ge=1, le=127)
    word_steps: int = Field(default=16, ge=1, le=4096)  # BPE merges never cross these (one 4/4 bar)

    @model_validator(mode="after")
    def _check(self) -> ChordDurationConfig:
        lo, hi = self.pitch_range
        if not 0 <= lo <= hi <= 127:
            raise ValueError("pitch_range must satisfy 0 <= low <= high <= 127")
        if not 0 < self.tempo_range[0] < self.tempo_range[1]:
            raise ValueError("tempo_range must satisfy 0 < low < high")
        return self


#: Codes per quarter note in a quarter-vq stream: the VQ-VAE encoder's 8 × 2 grid. Here, not in
#: quarter_vq, so that the API can use it without importing symusic or numpy's MIDI code.
CODES_PER_QUARTER = 16


class QuarterVQConfig(BaseModel):
    """Options of the "quarter-vq" tokenizer: a VQ-VAE over quarter-note piano rolls.

    Each quarter note of the merged, non-drum tracks is an 88 × 32 binary roll (pitches 21-108,
    32 columns per quarter at the score's own ticks per quarter); the VQ-VAE trained by ``fit``
    turns it into 8 × 2 = 16 code ids. The bachsformer project's network is convs
    1→32→64→128→128 with 128-d codes and batch 512 (preset ``quarter-vq-large``); the defaults
    halve the widths and train 1500 steps of batch 32, so that ``fit`` takes about a minute on
    2 CPU cores (tokenizing runs on the CPU worker) and still reconstructs better than the large
    sizes do in the same time. Unchanged from that network: 2 residual blocks, 16 codes, EMA
    decay 0.99, commitment 0.25, Adam 1e-3, a 0.5 note threshold and velocity 100.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    channels: tuple[int, int, int, int] = (16, 32, 64, 64)  # conv widths of the encoder
    residual_blocks: int = Field(default=2, ge=0, le=8)
    codebook_size: int = Field(default=16, ge=2, le=4096)
    code_dim: int = Field(default=64, ge=1, le=1024)
    decay: float = Field(default=0.99, gt=0.0, lt=1.0)  # EMA codebook decay
    commitment: float = Field(default=0.25, ge=0.0, le=10.0)  # commitment loss weight
    lr: float = Field(default=1e-3, gt=0.0, le=1.0)  # Adam
    batch_size: int = Field(default=32, ge=1, le=4096)
    steps: int = Field(default=1500, ge=0, le=1_000_000)  # optimizer steps of fit()
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    holdout_fraction: float = Field(default=0.1, ge=0.0, le=0.5)  # quarters kept out of fit
    threshold: float = Field(default=0.5, gt=0.0, lt=1.0)  # sigmoid > threshold is a note cell
    velocity: int = Field(default=100, ge=1, le=127)  # of decoded notes
    qpm: float = Field(default=120.0, gt=0.0, le=1000.0)  # tempo written into decoded MIDI

    @field_validator("channels")
    @classmethod
    def _check_channels(cls, v: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
        if any(not 1 <= c <= 1024 for c in v):
            raise ValueError("channels must be four integers between 1 and 1024")
        return v


class AudioVQConfig(BaseModel):
    """Options of the "audio-vq" tokenizer: a two-level VQ-VAE over log-mel frames of audio.

    Audio is decoded to ``sample_rate`` mono; an STFT of ``n_fft`` points every ``hop``
    samples gives ``n_mels`` log-mel bands per frame. The coarse level has one code per
    ``coarse_frames`` frames (structure), the fine level ``fine_per_coarse`` codes per coarse
    code, quantizing what the coarse level left out (detail). Each level has its own EMA
    codebook with dead-code restarts. The defaults (16 kHz, hop 256, 8 frames per coarse code,
    4 fine codes under each) give 7.8 coarse + 31.3 fine = 39 codes per second and train in
    well under a minute on 2 CPU cores. Decoding inverts the mel with Griffin-Lim
    (``griffin_lim_iters``): no trained vocoder, no downloaded weights.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    sample_rate: int = Field(default=16000, ge=8000, le=48000)
    n_fft: int = Field(default=1024, ge=128, le=8192)
    hop: int = Field(default=256, ge=32, le=4096)
    n_mels: int = Field(default=64, ge=16, le=256)
    coarse_frames: int = Field(default=8, ge=2, le=64)  # mel frames per coarse code
    fine_per_coarse: int = Field(default=4, ge=1, le=16)  # fine codes under each coarse code
    coarse_codebook: int = Field(default=256, ge=2, le=4096)
    fine_codebook: int = Field(default=256, ge=2, le=4096)
    code_dim: int = Field(default=64, ge=4, le=512)
    channels: int = Field(default=128, ge=8, le=1024)  # conv width of encoder and decoder
    decay: float = Field(default=0.99, gt=0.0, lt=1.0)  # EMA codebook decay
    commitment: float = Field(default=0.25, ge=0.0, le=10.0)
    coarse_weight: float = Field(default=0.5, ge=0.0, le=10.0)  # loss of the coarse-only decode
    lr: float = Field(default=2e-3, gt=0.0, le=1.0)  # Adam
    batch_size: int = Field(default=16, ge=1, le=4096)
    segment_frames: int = Field(default=64, ge=8, le=4096)  # frames per training crop
    steps: int = Field(default=600, ge=0, le=1_000_000)  # optimizer steps of fit()
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    holdout_fraction: float = Field(default=0.1, ge=0.0, le=0.5)  # each file's tail, not fit
    griffin_lim_iters: int = Field(default=32, ge=1, le=1000)
    max_file_seconds: float = Field(default=900.0, gt=0.0, le=7200.0)  # longer files: skipped

    @model_validator(mode="after")
    def _check(self) -> AudioVQConfig:
        if self.hop > self.n_fft:
            raise ValueError("hop must be ≤ n_fft")
        if self.coarse_frames % self.fine_per_coarse:
            raise ValueError("coarse_frames must be a multiple of fine_per_coarse")
        if self.segment_frames % self.coarse_frames:
            raise ValueError("segment_frames must be a multiple of coarse_frames")
        if self.n_mels > self.n_fft // 2 + 1:
            raise ValueError("n_mels must be ≤ n_fft / 2 + 1")
        return self

    @property
    def group(self) -> int:
        """Ids per coarse step in the flattened stream: the coarse code, then its fine codes."""
        return 1 + self.fine_per_coarse

    @property
    def codes_per_second(self) -> float:
        """Ids per second of audio, both levels."""
        return self.sample_rate / self.hop / self.coarse_frames * self.group


__all__ = [
    "CODES_PER_QUARTER",
    "AudioVQConfig",
    "MAX_CHAR_SYMBOLS",
    "ChordDurationConfig",
    "MidiCharConfig",
    "QuarterVQConfig",
]
