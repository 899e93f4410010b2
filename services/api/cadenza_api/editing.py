"""What the API checks before an infill or accompany sample job: the mode, the source.

Shared by `POST /v1/models/{id}/samples` (a source file or sample named in the JSON) and the
MIDI routes `POST /v1/models/{id}/infill` and `/accompany` (the body is the source). What
only the database knows is checked here (the model can edit, the source is the caller's and
is MIDI, the bars and tracks exist in it); the job checks the same against the parsed piece.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from cadenza.db.models import Checkpoint, Corpus, File, Model, Sample
from cadenza.db.repo import get_owned, pick_checkpoint
from cadenza.midi.load import inspect_midi
from cadenza.sample.modes import check_mode, model_modes
from cadenza.sample.params import PAIR_NO_TAGS, SampleRequest
from cadenza.storage import ObjectStore
from cadenza.tokenize.controls import default_capabilities
from cadenza.tokenize.spec import AUDIO_TOKENIZERS
from cadenza.train.config import audio_prior
from cadenza.validation import InvalidParams
from cadenza_api.errors import ApiError


def capabilities(session: Session, model: Model) -> dict[str, Any]:
    """What a sample request may use with this model: the attribute controls and style tags
    its corpus learned (`cadenza.tokenize.controls.capabilities`, kept in the corpus stats)
    and the `modes` its corpus and training allow (`cadenza.sample.modes.model_modes`), and
    its `output` (`audio` for an audio-vq corpus's model, else `midi`): a client of a public
    model cannot read its corpus, yet must know which sampling options and results to expect.
    An audio model also says its `prior` (`train.audio_prior`: `flat`, or `pair` for a coarse
    prior + upsampler, which takes no tags, so its `tags` are empty)."""
    corpus = session.get(Corpus, model.corpus_id)
    spec = corpus.params.get("tokenizer_spec") if corpus is not None else None
    learned = corpus.stats.get("capabilities") if corpus is not None else None
    out = dict(learned) if learned else default_capabilities()
    output = "audio" if spec and spec.get("name") in AUDIO_TOKENIZERS else "midi"
    out |= {"modes": model_modes(spec, model.train_config), "output": output}
    if output == "audio":
        out["prior"] = audio_prior(model.train_config)
        if out["prior"] == "pair":
            out["tags"] = []
    return out


def sampling_checkpoint(session: Session, model: Model, which: str) -> Checkpoint:
    """The checkpoint a sample request names (`best`, `latest` or an id): 404 for an unknown
    id, 409 while the model has saved none yet. Shared by the JSON and the MIDI routes."""
    ckpt = pick_checkpoint(session=session, model_id=model.id, which=which)
    if ckpt is not None:
        return ckpt
    if which not in ("best", "latest"):
        raise ApiError(404, "not_found", f"checkpoint {which} not found")
    raise ApiError(
        409,
        "model_not_ready",
        f"model {model.id} has no checkpoint yet (state: {model.state}); "
        "wait for its training job to save one",
    )


def check_edit(
    session: Session, store: ObjectStore, model: Model, body: SampleRequest, owner_id: str
) -> None:
    """422 for a mode the model lacks; 404 for a source that is not the caller's; 422 for a
    source that is not MIDI or lacks the bars or tracks asked for."""
    check_mode(body.mode, capabilities(session, model)["modes"])
    if body.mode == "continue":
        return
    if body.source_sample_id:
        sample = get_owned(session, Sample, body.source_sample_id, owner_id)
        if body.infill is not None:
            check_source_file(None, body, _measured(store, sample.midi_key))
        return
    assert body.source_file_id is not None
    source = get_owned(session, File, body.source_file_id, owner_id)
    if source.kind == "midi" and body.infill is not None and "bars" not in (source.meta or {}):
        # Files uploaded before bars were measured: measure them once, keep it in the row.
        source.meta = {**(source.meta or {}), **_measured(store, source.object_key)}
        session.commit()  # kept even when the check below refuses the request
    check_source_file(source, body)


def _measured(store: ObjectStore, key: str) -> dict[str, Any]:
    """Tracks and bars of a stored MIDI object, by the sandboxed parse uploads use (a sample's
    or an older file's, whose row does not say); {} if it cannot be read, so the job decides."""
    try:
        info = inspect_midi(store.get(key))
    except Exception:  # noqa: BLE001 - a missing or unreadable object: the job reports it
        return {}
    return {"bars": info.bars, "tracks": info.tracks}


def check_source_file(
    source: File | None, body: SampleRequest, meta: dict[str, Any] | None = None
) -> None:
    """The source file is MIDI and has the infill's bars and tracks (by its upload's meta)."""
    if source is not None and source.kind != "midi":
        raise ApiError(
            422,
            "source_not_midi",
            f"source file {source.id} is {source.kind}; transcribe it to MIDI first "
            "(POST /v1/datasets/{id}/audio-jobs) and edit the MIDI file it gives",
        )
    info = meta if meta is not None else (source.meta if source is not None else {})
    if body.infill is None:
        return
    first, last = body.infill.bars
    bars = int(info.get("bars") or 0)
    if bars and last > bars:
        raise InvalidParams(
            f"infill.bars: the source has {bars} bars; [{first}, {last}] goes past its end",
            code="invalid_request",
            details=[{"field": "infill.bars", "message": f"the source has {bars} bars"}],
        )
    tracks = int(info.get("tracks") or 0)
    unknown = [k for k in body.infill.tracks or [] if tracks and k >= tracks]
    if unknown:
        raise InvalidParams(
            f"infill.tracks: the source has {tracks} tracks with notes (0..{tracks - 1}); "
            f"no track {unknown[0]}",
            code="invalid_request",
            details=[{"field": "infill.tracks", "message": f"the source has {tracks} tracks"}],
        )


def check_audio_request(
    session: Session, body: SampleRequest, owner_id: str, *, pair: bool = False
) -> None:
    """What an audio (audio-vq) model's sample request may say: a recording or an audio
    sample as primer, no token-level or MIDI-only option (422 naming the field); its `tags`
    are checked against the model's learned tags with every model's (`check_controls`), and
    refused outright for a `pair` model (`capabilities.prior`), whose prior reads none."""
    if pair and body.tags:
        raise ApiError(
            422,
            "invalid_for_audio",
            PAIR_NO_TAGS,
            details=[{"field": "tags", "message": "a pair model takes no tags"}],
        )
    if body.primer_file_id:
        primer = get_owned(session, File, body.primer_file_id, owner_id)
        if primer.kind != "audio":
            raise ApiError(
                422,
                "primer_not_audio",
                f"primer_file_id: file {primer.id} is {primer.kind}; this model continues "
                "recordings: upload a WAV, FLAC or MP3",
                details=[{"field": "primer_file_id", "message": f"a {primer.kind} file"}],
            )
    if body.primer_sample_id:
        parent = get_owned(session, Sample, body.primer_sample_id, owner_id)
        if parent.meta.get("kind") != "audio":
            raise ApiError(
                422,
                "primer_not_audio",
                f"primer_sample_id: sample {parent.id} is MIDI; this model continues audio "
                "samples and recordings",
                details=[{"field": "primer_sample_id", "message": "a MIDI sample"}],
            )
    for name in ("primer_tokens", "force_tokens", "controls", "primer_bars"):
        if getattr(body, name):
            raise ApiError(
                422,
                "invalid_for_audio",
                f"{name}: not for an audio model (it takes a recording as primer, cut by "
                "primer_seconds, max_seconds for the length, and the tags it learned)",
                details=[{"field": name, "message": "not for an audio model"}],
            )
    if body.mode != "continue":
        raise ApiError(
            422,
            "invalid_for_audio",
            "mode: an audio model only continues (mode continue)",
            details=[{"field": "mode", "message": "not for an audio model"}],
        )


__all__ = [
    "capabilities",
    "check_audio_request",
    "check_edit",
    "check_source_file",
    "sampling_checkpoint",
]
