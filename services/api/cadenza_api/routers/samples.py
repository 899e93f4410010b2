"""`/v1/samples`: a generated piece's metadata and metrics, its MIDI and its renderings."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter
from fastapi.responses import Response

from cadenza.db.models import Sample
from cadenza.db.repo import get_owned
from cadenza.storage import ObjectNotFound
from cadenza_api.deps import CurrentOwner, SessionDep, SettingsDep, StoreDep
from cadenza_api.errors import ApiError
from cadenza_api.openapi import AUDIO_RENDER_MEDIA_TYPES, V1_ERRORS, binary, errors, rendering
from cadenza_api.rendered import rendered
from cadenza_api.schemas import SampleOut

router = APIRouter(prefix="/v1/samples", tags=["samples"], responses=V1_ERRORS)

# A sample made before renderings were keyed by content hash cannot be rendered.
_RENDER_ERRORS = errors(404, 409, why={409: "This sample has no content hash: sample again."})


@router.get(
    "/{sample_id}",
    response_model=SampleOut,
    operation_id="samples_get",
    summary="Get a sample",
    responses=errors(404),
)
def get_sample(sample_id: str, session: SessionDep, owner: CurrentOwner) -> SampleOut:
    """Its sampling parameters, length (tokens, notes, seconds) and measured metrics (`meta`)."""
    return SampleOut.model_validate(get_owned(session, Sample, sample_id, owner.id))


@router.get(
    "/{sample_id}/midi",
    response_class=Response,
    operation_id="samples_get_midi",
    summary="Download a sample's MIDI",
    responses=binary("The generated piece as a Standard MIDI File.", "audio/midi") | errors(404),
)
def sample_midi(
    sample_id: str, session: SessionDep, store: StoreDep, owner: CurrentOwner
) -> Response:
    """The generated piece as a `.mid` file (primer included when it was asked for)."""
    sample = get_owned(session, Sample, sample_id, owner.id)
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
    response_class=Response,
    operation_id="samples_get_audio",
    summary="Render a sample to audio",
    responses=rendering("The audio (MP3 or WAV, as asked).", *AUDIO_RENDER_MEDIA_TYPES)
    | _RENDER_ERRORS,
)
def sample_audio(
    sample_id: str,
    session: SessionDep,
    settings: SettingsDep,
    store: StoreDep,
    owner: CurrentOwner,
    format: Literal["mp3", "wav"] = "mp3",
) -> Response:
    """The sample rendered with the General MIDI soundfont (rendered by its sample job).

    200 with the audio when it is rendered, else 202 with the render job: poll it, then retry.
    """
    sample = get_owned(session, Sample, sample_id, owner.id)
    return rendered(
        session,
        settings,
        store,
        owner_id=owner.id,
        sha256=_hash(sample),
        midi_key=sample.midi_key,
        fmt=format,
    )


@router.get(
    "/{sample_id}/pianoroll.png",
    response_class=Response,
    operation_id="samples_get_pianoroll",
    summary="Draw a sample's piano roll",
    responses=rendering("The piano roll as a PNG.", "image/png") | _RENDER_ERRORS,
)
def sample_pianoroll(
    sample_id: str, session: SessionDep, settings: SettingsDep, store: StoreDep, owner: CurrentOwner
) -> Response:
    """The sample's notes drawn as a piano roll: 200 with the PNG, or 202 with the job."""
    sample = get_owned(session, Sample, sample_id, owner.id)
    return rendered(
        session,
        settings,
        store,
        owner_id=owner.id,
        sha256=_hash(sample),
        midi_key=sample.midi_key,
        fmt="png",
    )
