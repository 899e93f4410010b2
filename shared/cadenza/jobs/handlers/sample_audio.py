"""`sample` jobs on a model whose corpus is audio (audio-vq): recordings in, WAV out.

Called by `cadenza.jobs.handlers.sample.run` once it has loaded the rows, the tokenizer and
the model. The primer is an uploaded recording (`primer_file_id`) or an earlier audio sample
(`primer_sample_id`: co-composition), cut to `primer_seconds`. Each variation is stored as a
WAV (the sample's own object, `midi_key`, whose name predates audio samples) and, keyed by
its content hash like every rendering, as WAV, MP3 and a spectrogram PNG: so
`GET /v1/samples/{id}/audio` and `/pianoroll.png` serve them unchanged.

A pair model (`train.audio_prior` pair) generates through `sample_audio_pair`: its checkpoint's
weights are the coarse prior, and its `UPSAMPLER_KEY` entry the upsampler that writes the fine
codes; tags are refused (its prior reads no conditioning prefix).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cadenza.jobs.context import JobContext, Outcome, UserError
from cadenza.sample.params import PAIR_NO_TAGS, SampleParams, SamplingOptions
from cadenza.storage import job_key, sha256_of

if TYPE_CHECKING:
    from cadenza.jobs.handlers.sample import _Rows
    from cadenza.models.audio_upsampler import Upsampler
    from cadenza.models.base import CadenzaModel
    from cadenza.sample.audio import AudioVariation
    from cadenza.tokenize.audio_vq import AudioVQTokenizer


def run(
    ctx: JobContext,
    p: SampleParams,
    rows: _Rows,
    tok: AudioVQTokenizer,
    model: CadenzaModel,
    device: str,
) -> Outcome:
    from cadenza.sample.audio import (
        planned_steps,
        primer_cut,
        sample_audio,
        sample_audio_pair,
    )
    from cadenza.tokenize.audio_vq import decode_audio_bytes
    from cadenza.train.config import audio_prior

    if p.mode != "continue":
        raise UserError(f"mode {p.mode}: an audio model only continues (mode continue)")
    if p.primer_tokens or p.force_tokens or p.controls:
        raise UserError(
            "an audio model takes a recording as primer (primer_file_id or primer_sample_id) "
            "and style tags, not primer_tokens, force_tokens or controls"
        )
    pair = audio_prior(rows.model.train_config) == "pair"
    if p.tags and pair:
        raise UserError(PAIR_NO_TAGS)
    if p.tags:
        from cadenza.tokenize.controls import resolve_controls

        try:
            resolve_controls(None, p.tags, tok.capabilities())
        except ValueError as exc:
            raise UserError(str(exc)) from exc
    primer = None
    if rows.primer is not None:
        try:
            wave = decode_audio_bytes(
                ctx.store.get(rows.primer.key), tok.cfg.sample_rate, tok.cfg.max_file_seconds
            )
        except ValueError as exc:
            raise UserError(f"{rows.primer.label}: {exc}") from exc
        primer = primer_cut(tok, wave, p.primer_seconds)
        if primer.size == 0:
            raise UserError(f"{rows.primer.label} is shorter than one coarse code")
    options = {name: getattr(p, name) for name in SamplingOptions.model_fields}
    planned = planned_steps(tok, p.max_seconds, p.max_new_tokens) * tok.cfg.group
    cancelled = False

    def on_token(step: int, new: list[list[int]]) -> bool:
        nonlocal cancelled
        if ctx.cancelled():
            cancelled = True
            return True
        if step % 32 == 0:
            ctx.progress(0.8 * step / planned, f"{step} codes", tokens=step)
        return False

    what = f"{primer.size / tok.cfg.sample_rate:.1f} s primer" if primer is not None else "scratch"
    ctx.progress(0.0, f"generating {p.n} variation(s) from {what}", force=True)
    common: dict[str, Any] = {
        "n": p.n,
        "max_seconds": p.max_seconds,
        "include_primer": p.include_primer,
        "device": device,
    }
    if pair:  # the pair reports coarse steps, each standing for a step's flattened ids
        variations = sample_audio_pair(
            model,
            _upsampler(ctx, rows),
            tok,
            primer,
            options,
            on_token=lambda step, new: on_token(step * tok.cfg.group, new),
            **common,
        )
    else:
        variations = sample_audio(
            model, tok, primer, options, on_token=on_token, tags=p.tags or (), **common
        )
    stored = [_store(ctx, tok, v, len(variations)) for v in variations]

    from cadenza.jobs.handlers.sample import samples_outcome

    out = [
        {
            "index": v.index,
            "midi_key": o["key"],
            "num_tokens": v.prompt_tokens - 1 + len(v.new_ids),
            "num_notes": 0,
            "duration_s": round(v.wave.size / tok.cfg.sample_rate, 4),
            "meta": {
                "kind": "audio",
                "sample_rate": tok.cfg.sample_rate,
                "primer_tokens": v.prompt_tokens,
                "new_tokens": len(v.new_ids),
                "new_seconds": round(v.new_seconds, 4),
                "seam_s": v.seam_s,
                "seconds": v.seconds,
                "real_time_factor": round(v.real_time_factor, 4),
                "device": device,
                "audio": v.metrics,
                "sha256": o["sha256"],
                "render_errors": o["render_errors"],
            },
        }
        for v, o in zip(variations, stored, strict=True)
    ]
    return samples_outcome(ctx, p, rows.model.id, p.primer_sample_id, out, cancelled)


def _upsampler(ctx: JobContext, rows: _Rows) -> Upsampler:
    """The upsampler stored in the sampled checkpoint; a checkpoint saved before it was trained
    (the prior's, while the job still trains, or after a cancel) has none: the user's to fix."""
    from cadenza.models.audio_upsampler import UPSAMPLER_KEY, upsampler_from_entry
    from cadenza.models.checkpoint import load_checkpoint

    entry = load_checkpoint(ctx.store.get(rows.checkpoint.object_key)).get(UPSAMPLER_KEY)
    if entry is None:
        raise UserError(
            f"checkpoint {rows.checkpoint.id} (step {rows.checkpoint.step}) holds only the "
            "coarse prior: the upsampler is trained after it and written into the model's "
            "checkpoints when it is done; sample once the training job has succeeded"
        )
    return upsampler_from_entry(entry)


def _store(ctx: JobContext, tok: AudioVQTokenizer, v: AudioVariation, n: int) -> dict[str, Any]:
    """The WAV under the job, and its renderings (WAV, MP3, spectrogram) by content hash."""
    from cadenza.render import render_key
    from cadenza.render.audio import _to_mp3
    from cadenza.sample.audio import spectrogram_png, wav_bytes

    ctx.progress(0.8 + 0.2 * v.index / max(n, 1), f"writing variation {v.index + 1}", force=True)
    wav = wav_bytes(v.wave, tok.cfg.sample_rate)
    key = job_key(ctx.job_id, "samples", f"{v.index:03d}.wav")
    ctx.store.put(key, wav)
    sha = sha256_of([wav])
    errors: dict[str, str] = {}
    ctx.store.put(render_key(sha, "wav"), wav)
    try:
        ctx.store.put(render_key(sha, "mp3"), _to_mp3(wav, 600.0))
    except Exception as exc:  # noqa: BLE001 - the WAV is the product; MP3 is a view of it
        errors["mp3"] = f"{type(exc).__name__}: {exc}"[:500]
    try:
        ctx.store.put(render_key(sha, "png"), spectrogram_png(v.wave, tok, v.seam_s))
    except Exception as exc:  # noqa: BLE001 - likewise for the picture
        errors["png"] = f"{type(exc).__name__}: {exc}"[:500]
    return {"key": key, "sha256": sha, "render_errors": errors}
