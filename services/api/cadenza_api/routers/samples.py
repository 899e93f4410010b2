"""`/v1/samples`: a generated piece's metadata and metrics, its MIDI and its renderings."""

from __future__ import annotations

from typing import Literal

from fastapi.responses import Response

from cadenza.db.models import Sample
from cadenza.db.repo import get_owned, sample_lineage
from cadenza.delete import delete_sample
from cadenza.storage import ObjectNotFound
from cadenza_api.deletes import finish_delete
from cadenza_api.deps import (
    CurrentOwner,
    SessionDep,
    SettingsDep,
    StoreDep,
    v1_router,
)
from cadenza_api.errors import ApiError
from cadenza_api.openapi import AUDIO_RENDERING, MIDI, PIANOROLL_RENDERING, describe
from cadenza_api.rendered import rendered
from cadenza_api.schemas import DeletedOut, SampleLineage, SampleOut

router = v1_router("/v1/samples", "samples")


@router.get(
    "/{sample_id}", response_model=SampleOut, **describe("samples_get", "Get a sample", 404)
)
def get_sample(sample_id: str, session: SessionDep, owner: CurrentOwner) -> SampleOut:
    """Its sampling parameters, length (tokens, notes, seconds) and measured metrics (`meta`)."""
    return SampleOut.model_validate(get_owned(session, Sample, sample_id, owner.id))


@router.get(
    "/{sample_id}/lineage",
    response_model=SampleLineage,
    **describe("samples_get_lineage", "List the samples a sample continues", 404),
)
def get_lineage(sample_id: str, session: SessionDep, owner: CurrentOwner) -> SampleLineage:
    """The chain of samples this one grew from (each made with `primer_sample_id` set to the
    one before), oldest first, the sample itself last; one sample for a sample made without a
    primer sample. A deleted ancestor ends the chain (its child's `parent_sample_id` became
    null). At most 1001 samples: `truncated` says the first one listed has a parent not shown.
    """
    samples, truncated = sample_lineage(session, sample_id, owner.id)
    return SampleLineage(
        samples=[SampleOut.model_validate(s) for s in samples], truncated=truncated
    )


@router.get(
    "/{sample_id}/midi",
    **describe("samples_get_midi", "Download a sample's MIDI", 404, 409, ok=MIDI),
)
def sample_midi(
    sample_id: str, session: SessionDep, store: StoreDep, owner: CurrentOwner
) -> Response:
    """The generated piece as a `.mid` file (primer included when it was asked for); 409 for
    an audio sample (of an audio-vq model), which has no MIDI: get its `/audio`."""
    sample = get_owned(session, Sample, sample_id, owner.id)
    if sample.meta.get("kind") == "audio":
        raise ApiError(
            409, "audio_sample", "this sample is audio, not MIDI: GET /v1/samples/{id}/audio"
        )
    try:
        data = store.get(sample.midi_key)
    except ObjectNotFound as exc:
        raise ApiError(404, "not_found", "the sample's MIDI is missing from the store") from exc
    return Response(
        data,
        media_type="audio/midi",
        headers={"Content-Disposition": f'attachment; filename="sample-{sample.id}.mid"'},
    )


def _hash(sample: Sample) -> str:
    sha = sample.meta.get("sha256")
    if not sha:
        raise ApiError(409, "not_rendered", "this sample has no content hash; sample again")
    return str(sha)


@router.get(
    "/{sample_id}/audio",
    **describe("samples_get_audio", "Render a sample to audio", 404, 409, ok=AUDIO_RENDERING),
)
def sample_audio(
    sample_id: str,
    session: SessionDep,
    settings: SettingsDep,
    store: StoreDep,
    owner: CurrentOwner,
    format: Literal["mp3", "wav"] = "mp3",
) -> Response:
    """The sample rendered with the General MIDI soundfont (rendered by its sample job); an
    audio sample (of an audio-vq model) is its own generated WAV, or that as MP3.

    200 with the audio when it is rendered, else 202 with the render job: poll it, then retry.
    409 for a sample without a content hash (made before renderings were cached): sample again.
    """
    sample = get_owned(session, Sample, sample_id, owner.id)
    return rendered(
        session,
        settings,
        store,
        owner.id,
        (_hash(sample), sample.midi_key),
        format,
        made_by_owner=True,
    )


@router.get(
    "/{sample_id}/pianoroll.png",
    **describe(
        "samples_get_pianoroll", "Draw a sample's piano roll", 404, 409, ok=PIANOROLL_RENDERING
    ),
)
def sample_pianoroll(
    sample_id: str, session: SessionDep, settings: SettingsDep, store: StoreDep, owner: CurrentOwner
) -> Response:
    """The sample's notes drawn as a piano roll: 200 with the PNG, or 202 with the job (409 as
    for its audio). For an audio sample: its log-mel spectrogram, the seam marked."""
    sample = get_owned(session, Sample, sample_id, owner.id)
    return rendered(
        session,
        settings,
        store,
        owner.id,
        (_hash(sample), sample.midi_key),
        "png",
        made_by_owner=True,
    )


@router.delete(
    "/{sample_id}",
    response_model=DeletedOut,
    **describe("samples_delete", "Delete a sample", 404),
)
def delete_sample_route(
    sample_id: str, session: SessionDep, store: StoreDep, settings: SettingsDep, owner: CurrentOwner
) -> DeletedOut:
    """Delete the sample, its MIDI and its renderings (unless another sample or file has the
    same content)."""
    deleted = delete_sample(session, owner_id=owner.id, sample_id=sample_id[:64])
    return finish_delete(session, store, settings, deleted)
