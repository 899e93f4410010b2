"""Corpora: tokenize a dataset into training arrays (a `tokenize` job)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import StreamingResponse
from pydantic import ValidationError
from sqlalchemy import func, select

from cadenza.db.models import Corpus, Dataset, File
from cadenza.db.repo import get_owned, list_owned
from cadenza.tokenize.presets import PRESETS_BY_ANY_NAME as TOKENIZER_PRESETS
from cadenza.tokenize.spec import AugmentSpec, TokenizerSpec
from cadenza_api.deps import CurrentOwner, SessionDep, SettingsDep, StoreDep
from cadenza_api.errors import ApiError, invalid
from cadenza_api.routers.jobs import submit
from cadenza_api.schemas import CorpusCreate, CorpusOut, JobOut
from cadenza_api.streams import stream_object

router = APIRouter(tags=["corpora"])


def _tokenizer_spec(body: CorpusCreate) -> dict[str, Any]:
    """Resolve preset + overrides into a validated TokenizerSpec (422 naming the field)."""
    if body.preset:
        if body.preset not in TOKENIZER_PRESETS:
            raise ApiError(
                422,
                "invalid_tokenizer",
                f"unknown preset {body.preset!r}; known: {', '.join(TOKENIZER_PRESETS)}",
            )
        base = dict(TOKENIZER_PRESETS[body.preset])
        if body.tokenizer and body.tokenizer != base["name"]:
            raise ApiError(
                422,
                "invalid_tokenizer",
                f"preset {body.preset} is a {base['name']} tokenizer; drop `tokenizer` "
                "or the preset",
            )
        raw = {
            "name": base["name"],
            "config": {**base.get("config", {}), **body.tokenizer_config},
            "bpe": body.bpe if body.bpe is not None else base.get("bpe"),
        }
    else:
        raw = {"name": body.tokenizer or "REMI", "config": body.tokenizer_config, "bpe": body.bpe}
    try:
        return TokenizerSpec.model_validate(raw).model_dump(mode="json")
    except ValidationError as exc:
        raise invalid("tokenizer", exc) from exc


@router.post("/v1/corpora", status_code=202, response_model=JobOut)
def create_corpus(
    body: CorpusCreate, session: SessionDep, settings: SettingsDep, owner: CurrentOwner
) -> JobOut:
    """Queue tokenization of a dataset's MIDI files; the job's `corpus_id` names the result."""
    get_owned(session, Dataset, body.dataset_id, owner.id)
    n_midi = session.scalar(
        select(func.count(File.id)).where(File.dataset_id == body.dataset_id, File.kind == "midi")
    )
    if not n_midi:
        raise ApiError(
            409,
            "no_midi_files",
            "the dataset has no MIDI files yet: upload some (or transcribe audio) first",
        )
    params: dict[str, Any] = body.model_dump(mode="json")
    params["tokenizer_spec"] = _tokenizer_spec(body)
    if body.augment is not None:
        try:
            params["augment"] = AugmentSpec.model_validate(body.augment).model_dump(mode="json")
        except ValidationError as exc:
            raise invalid("augment", exc) from exc
    job = submit(session, settings, owner_id=owner.id, type="tokenize", params=params)
    return JobOut.model_validate(job)


@router.get("/v1/corpora", response_model=list[CorpusOut])
def list_corpora(session: SessionDep, owner: CurrentOwner, limit: int = 100) -> list[CorpusOut]:
    return [CorpusOut.model_validate(c) for c in list_owned(session, Corpus, owner.id, limit=limit)]


@router.get("/v1/corpora/{corpus_id}", response_model=CorpusOut)
def get_corpus(corpus_id: str, session: SessionDep, owner: CurrentOwner) -> CorpusOut:
    return CorpusOut.model_validate(get_owned(session, Corpus, corpus_id, owner.id))


@router.get("/v1/corpora/{corpus_id}/export.npz")
def export_corpus(
    corpus_id: str, session: SessionDep, store: StoreDep, owner: CurrentOwner
) -> StreamingResponse:
    """The corpus as nanoGPT-style `.npz` (`train_data`, `val_data`, 1-D token arrays)."""
    corpus = get_owned(session, Corpus, corpus_id, owner.id)
    return stream_object(
        store, f"{corpus.object_prefix}/export.npz", filename=f"corpus-{corpus.id}.npz"
    )
