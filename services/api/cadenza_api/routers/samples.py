"""Samples: generate continuations or fresh pieces from a model (a `sample` job)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response
from sqlalchemy import select

from cadenza.db.models import Corpus, File, Model, Sample
from cadenza.db.repo import get_owned, list_owned, pick_checkpoint
from cadenza.storage import ObjectNotFound
from cadenza_api.deps import CurrentOwner, SessionDep, SettingsDep, StoreDep
from cadenza_api.errors import ApiError
from cadenza_api.routers.jobs import submit
from cadenza_api.schemas import JobOut, SampleCreate, SampleList, SampleOut

router = APIRouter(tags=["samples"])


@router.post("/v1/models/{model_id}/samples", status_code=202, response_model=JobOut)
def create_samples(
    model_id: str,
    body: SampleCreate,
    session: SessionDep,
    settings: SettingsDep,
    owner: CurrentOwner,
) -> JobOut:
    """Queue `n` variations; the job's `sample_ids` name them when it succeeds."""
    model = get_owned(session, Model, model_id, owner.id)
    ckpt = pick_checkpoint(session=session, model_id=model.id, which=body.checkpoint)
    if ckpt is None:
        if body.checkpoint not in ("best", "latest"):
            raise ApiError(404, "not_found", f"checkpoint {body.checkpoint} not found")
        raise ApiError(
            409,
            "model_not_ready",
            f"model {model.id} has no checkpoint yet (state: {model.state}); "
            "wait for its training job to save one",
        )
    if body.primer_file_id:
        primer = get_owned(session, File, body.primer_file_id, owner.id)
        if primer.kind != "midi":
            raise ApiError(
                422,
                "primer_not_midi",
                f"primer file {primer.id} is {primer.kind}; transcribe it to MIDI first",
            )
    if body.primer_tokens and body.primer_tokenizer_hash not in (None, model.tokenizer_hash):
        raise ApiError(
            409,
            "tokenizer_mismatch",
            "primer_tokens come from another tokenizer than this model's "
            f"({model.tokenizer_hash[:12]}…); re-encode the primer with the model's corpus "
            "tokenizer or send a MIDI primer_file_id instead",
        )
    if body.primer_tokens:
        bad = [t for t in body.primer_tokens if not 0 <= t < model.vocab_size]
        if bad:
            raise ApiError(
                422,
                "primer_tokens_out_of_vocab",
                f"primer_tokens {bad[:5]} are outside this model's vocabulary "
                f"(0..{model.vocab_size - 1}); they must come from the same tokenizer",
            )
    if body.force_tokens:
        _check_force_tokens(session, model, body)
    params = body.model_dump(mode="json") | {"model_id": model.id, "checkpoint_id": ckpt.id}
    job = submit(session, settings, owner_id=owner.id, type="sample", params=params)
    return JobOut.model_validate(job)


@router.get("/v1/models/{model_id}/samples", response_model=SampleList)
def list_samples(model_id: str, session: SessionDep, owner: CurrentOwner) -> SampleList:
    get_owned(session, Model, model_id, owner.id)
    rows = list_owned(session, Sample, owner.id, limit=1000, model_id=model_id)
    return SampleList(samples=[SampleOut.model_validate(s) for s in rows])


@router.get("/v1/samples/{sample_id}", response_model=SampleOut)
def get_sample(sample_id: str, session: SessionDep, owner: CurrentOwner) -> SampleOut:
    return SampleOut.model_validate(get_owned(session, Sample, sample_id, owner.id))


@router.get("/v1/samples/{sample_id}/midi")
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


def _check_force_tokens(session: SessionDep, model: Model, body: SampleCreate) -> None:
    """Attribute control needs named tokens of the model's own vocabulary, and no primer."""
    if body.primer_file_id or body.primer_tokens:
        raise ApiError(
            422,
            "invalid_request",
            "force_tokens sets how a new piece starts; it cannot be combined with a primer",
        )
    corpus = session.scalar(select(Corpus).where(Corpus.id == model.corpus_id))
    names = set(corpus.stats.get("token_names", [])) if corpus else set()
    if not names:
        raise ApiError(
            422,
            "no_attribute_tokens",
            "this model's tokenizer has no named tokens to force (BPE, midichar, chord-duration "
            "or a multi-vocabulary tokenizer); train on a plain MidiTok corpus to use force_tokens",
        )
    unknown = [t for t in body.force_tokens or [] if t not in names]
    if unknown:
        prefix = unknown[0].split("_", 1)[0] + "_"
        like = sorted(n for n in names if n.startswith(prefix))[:8]
        raise ApiError(
            422,
            "unknown_tokens",
            f"force_tokens {unknown[:5]} are not in this model's vocabulary"
            + (f"; tokens like it: {like}" if like else ""),
        )
