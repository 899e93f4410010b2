"""`/v1/corpora`: tokenize a dataset into training arrays (a `tokenize` job), read the result."""

from __future__ import annotations

from fastapi.responses import StreamingResponse
from sqlalchemy import func, select

from cadenza.db.models import Corpus, Dataset, File
from cadenza.db.repo import get_owned, get_visible_model, list_owned
from cadenza.delete import delete_corpus
from cadenza.jobs import submit
from cadenza.tokenize.params import TokenizeParams
from cadenza.tokenize.spec import AUDIO_TOKENIZERS
from cadenza_api.deletes import finish_delete
from cadenza_api.deps import (
    CurrentOwner,
    Limit,
    Offset,
    SessionDep,
    SettingsDep,
    StoreDep,
    v1_router,
)
from cadenza_api.errors import ApiError
from cadenza_api.openapi import NPZ, describe
from cadenza_api.schemas import CorpusOut, CorpusRequest, DeletedOut, JobOut
from cadenza_api.streams import stream_object

router = v1_router("/v1/corpora", "corpora")


@router.post(
    "",
    status_code=202,
    response_model=JobOut,
    **describe("corpora_create", "Tokenize a dataset into a corpus", 404, 409, 422, 429),
)
def create_corpus(
    body: CorpusRequest, session: SessionDep, settings: SettingsDep, owner: CurrentOwner
) -> JobOut:
    """Queue tokenization of a dataset's MIDI files (or, with `tokenizer` `audio-vq`, of its
    audio recordings); the job's `corpus_id` names the result.

    Answers 202 with the job; poll it (`GET /v1/jobs/{id}`) until `succeeded`. 409 when the
    dataset has no MIDI files yet (upload some, or transcribe audio, first); for `audio-vq`,
    422 when it has no audio files; 422 names each invalid tokenizer, preset, BPE,
    augmentation or split field.

    With `base_model_id` (yours or a public model; 404 otherwise) the files are tokenized with
    that model's saved tokenizer (BPE vocabulary included), so token ids mean what they mean
    to the model: the corpus an adapter of it trains on.
    """
    get_owned(session, Dataset, body.dataset_id, owner.id)
    base_spec = None
    if body.base_model_id is not None:
        base = get_visible_model(session, body.base_model_id, owner.id)
        base_corpus = session.get(Corpus, base.corpus_id)
        if base_corpus is None:  # cannot happen while the base exists (its corpus refuses)
            raise ApiError(404, "not_found", f"model {base.id}'s tokenizer is gone")
        base_spec = base_corpus.params["tokenizer_spec"]
    name = base_spec["name"] if base_spec is not None else body.tokenizer
    audio = name in AUDIO_TOKENIZERS
    n_files = session.scalar(
        select(func.count(File.id)).where(
            File.dataset_id == body.dataset_id, File.kind == ("audio" if audio else "midi")
        )
    )
    if not n_files and audio:
        raise ApiError(
            422,
            "no_audio_files",
            f"tokenizer: {name} learns from recordings, and the dataset has no audio "
            "files: upload WAV, FLAC or MP3 recordings to it, or choose a MIDI tokenizer",
            details=[{"field": "tokenizer", "message": "the dataset has no audio files"}],
        )
    if not n_files:
        raise ApiError(
            409,
            "no_midi_files",
            "the dataset has no MIDI files yet: upload some (or transcribe audio) first",
        )
    params = TokenizeParams.from_request(body, base_spec=base_spec)
    job = submit(session, settings, owner_id=owner.id, type="tokenize", params=params)
    return JobOut.model_validate(job)


@router.get("", response_model=list[CorpusOut], **describe("corpora_list", "List corpora"))
def list_corpora(
    session: SessionDep, owner: CurrentOwner, limit: Limit = 100, offset: Offset = 0
) -> list[CorpusOut]:
    """Your corpora, newest first."""
    return [
        CorpusOut.model_validate(c)
        for c in list_owned(session, Corpus, owner.id, limit=limit, offset=offset)
    ]


@router.get(
    "/{corpus_id}", response_model=CorpusOut, **describe("corpora_get", "Get a corpus", 404)
)
def get_corpus(corpus_id: str, session: SessionDep, owner: CurrentOwner) -> CorpusOut:
    """Its tokenizer (`params`, `tokenizer_hash`), vocabulary size and per-split counts."""
    return CorpusOut.model_validate(get_owned(session, Corpus, corpus_id, owner.id))


@router.get(
    "/{corpus_id}/export.npz",
    **describe("corpora_export", "Download a corpus as .npz", 404, ok=NPZ),
)
def export_corpus(
    corpus_id: str, session: SessionDep, store: StoreDep, owner: CurrentOwner
) -> StreamingResponse:
    """The corpus as nanoGPT-style `.npz` (`train_data`, `val_data`, 1-D token arrays)."""
    corpus = get_owned(session, Corpus, corpus_id, owner.id)
    return stream_object(
        store, f"{corpus.object_prefix}/export.npz", filename=f"corpus-{corpus.id}.npz"
    )


@router.delete(
    "/{corpus_id}",
    response_model=DeletedOut,
    **describe("corpora_delete", "Delete a corpus", 404, 409),
)
def delete_corpus_route(
    corpus_id: str, session: SessionDep, store: StoreDep, settings: SettingsDep, owner: CurrentOwner
) -> DeletedOut:
    """Delete the corpus, its tokenizer and token arrays. 409 while models were trained on it
    (delete them first)."""
    deleted = delete_corpus(session, owner_id=owner.id, corpus_id=corpus_id[:64])
    return finish_delete(session, store, settings, deleted)
