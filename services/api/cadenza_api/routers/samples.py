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
from cadenza_api.rendered import RENDER_202, rendered
from cadenza_api.schemas import SampleOut

router = APIRouter(prefix="/v1/samples", tags=["samples"])


@router.get("/{sample_id}", response_model=SampleOut)
def get_sample(sample_id: str, session: SessionDep, owner: CurrentOwner) -> SampleOut:
    return SampleOut.model_validate(get_owned(session, Sample, sample_id, owner.id))


@router.get("/{sample_id}/midi")
def sample_midi(
    sample_id: str, session: SessionDep, store: StoreDep, owner: CurrentOwner
) -> Response:
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


@router.get("/{sample_id}/audio", responses=RENDER_202)
def sample_audio(
    sample_id: str,
    session: SessionDep,
    settings: SettingsDep,
    store: StoreDep,
    owner: CurrentOwner,
    format: Literal["mp3", "wav"] = "mp3",
) -> Response:
    """The sample rendered with the General MIDI soundfont (rendered by its sample job)."""
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


@router.get("/{sample_id}/pianoroll.png", responses=RENDER_202)
def sample_pianoroll(
    sample_id: str, session: SessionDep, settings: SettingsDep, store: StoreDep, owner: CurrentOwner
) -> Response:
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
