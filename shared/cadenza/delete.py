"""Deleting what an owner made: rows now, objects through `pending_deletes` and the sweep.

Each function finds the row as its owner (another owner's id is NotFound, as on GET), locks
it, refuses with `Conflict` (409) while a queued or running job uses it or while other rows
depend on it, deletes the rows (children explicitly, not by cascade, so nothing disappears
without its objects being scheduled), and schedules the objects in the same transaction. The
caller commits and then sweeps the returned pending ids (`cadenza.sweep`).

A corpus outlives its dataset (it holds its own tokenizer and token arrays); a corpus with
models refuses (a model samples with its corpus's tokenizer). A model takes its checkpoints,
metrics and samples with it (they mean nothing without it). A sample that continued another
(`parent_sample_id`) outlives it: the database sets the link to null (ON DELETE SET NULL),
and a sample that a queued or running job continues is not deleted (409). A job's
outputs (corpus, model, samples, files) are resources of their own: deleting a finished job
removes its row and events, and only those objects of the job that no row uses any more.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, cast

from sqlalchemy import Table, delete, select, update
from sqlalchemy.orm import Session

from cadenza.db.models import (
    Base,
    Checkpoint,
    Corpus,
    Dataset,
    File,
    Job,
    JobEvent,
    MetricRecord,
    Model,
    Sample,
)
from cadenza.db.repo import get_owned
from cadenza.render import RENDER_FORMATS, render_key
from cadenza.storage import job_key
from cadenza.sweep import ACTIVE_STATES, schedule
from cadenza.validation import Conflict


@dataclass
class Deleted:
    """What a delete removed: rows per table, and the pending deletes it left to the sweep."""

    kind: str
    id: str
    rows: dict[str, int] = field(default_factory=dict)
    pending_ids: list[int] = field(default_factory=list)


def _lock(session: Session, model: type[Base], id: str) -> None:
    """Hold the row's lock until commit, so nothing that references it commits meanwhile.

    PostgreSQL: `FOR UPDATE` blocks inserts whose foreign key names the row (they take a key
    share lock). SQLite has one writer: a no-op update starts the write transaction now, so no
    other write commits between the reads below and the deletes.
    """
    table = cast(Table, model.__table__)
    pk = table.c.id
    if session.get_bind().dialect.name == "sqlite":
        session.execute(update(table).where(pk == id).values(id=pk))
    else:
        session.execute(select(pk).where(pk == id).with_for_update())


def _active_jobs(session: Session, owner_id: str) -> list[Job]:
    stmt = select(Job).where(Job.owner_id == owner_id, Job.state.in_(ACTIVE_STATES))
    return list(session.scalars(stmt.order_by(Job.created_at, Job.id)))


def _refuse_if_used(jobs: Iterable[Job], what: str, uses: Callable[[dict[str, Any]], bool]) -> None:
    for job in jobs:
        if uses(job.params or {}):
            raise Conflict(
                f"{what} is used by {job.type} job {job.id} ({job.state}): cancel job {job.id} "
                f"first (POST /v1/jobs/{job.id}/cancel), wait for it to end, then delete again",
                code="in_use",
            )


def _refuse_if_depended(what: str, kind: str, ids: list[str], hint: str) -> None:
    if ids:
        shown = ", ".join(ids[:5]) + (f" and {len(ids) - 5} more" if len(ids) > 5 else "")
        raise Conflict(f"{what} is used by {kind} {shown}: {hint}", code="has_dependents")


def _renders(shas: Iterable[str | None]) -> list[str]:
    return [render_key(s, fmt) for s in dict.fromkeys(shas) if s for fmt in RENDER_FORMATS]


def _count(session: Session, stmt: Any) -> int:
    return int(session.execute(stmt).rowcount or 0)  # type: ignore[attr-defined]


def delete_dataset(session: Session, *, owner_id: str, dataset_id: str) -> Deleted:
    """A dataset and its files; 409 while a job reads it.

    Its corpora stay (they hold their own tokenizer and token arrays, so the models trained on
    them keep sampling and can be fine-tuned further); their `dataset_id` becomes null.
    """
    get_owned(session, Dataset, dataset_id, owner_id)
    _lock(session, Dataset, dataset_id)
    files = list(
        session.execute(
            select(File.id, File.object_key, File.sha256, File.kind).where(
                File.dataset_id == dataset_id
            )
        )
    )
    ids = {f.id for f in files}
    _refuse_if_used(
        _active_jobs(session, owner_id),
        f"dataset {dataset_id}",
        lambda p: (
            p.get("dataset_id") == dataset_id
            or p.get("primer_file_id") in ids
            or p.get("source_file_id") in ids
        ),
    )
    out = Deleted("dataset", dataset_id)
    out.pending_ids = schedule(
        session,
        [f.object_key for f in files] + _renders(f.sha256 for f in files if f.kind == "midi"),
    )
    session.execute(update(Corpus).where(Corpus.dataset_id == dataset_id).values(dataset_id=None))
    # By dataset, not by id list (no parameter limit); the lock keeps the set as read above.
    out.rows["files"] = _count(session, delete(File).where(File.dataset_id == dataset_id))
    out.rows["datasets"] = _count(session, delete(Dataset).where(Dataset.id == dataset_id))
    return out


def delete_file(session: Session, *, owner_id: str, file_id: str) -> Deleted:
    """One file; 409 while a job reads it (or tokenizes its dataset)."""
    row = get_owned(session, File, file_id, owner_id)
    _lock(session, File, file_id)
    _refuse_if_used(
        _active_jobs(session, owner_id),
        f"file {file_id}",
        lambda p: (
            file_id in (p.get("file_ids") or [])
            or p.get("primer_file_id") == file_id
            or p.get("source_file_id") == file_id
            or (p.get("dataset_id") == row.dataset_id and "file_ids" not in p)
        ),
    )
    out = Deleted("file", file_id)
    renders = _renders([row.sha256]) if row.kind == "midi" else []
    out.pending_ids = schedule(session, [row.object_key, *renders])
    out.rows["files"] = _count(session, delete(File).where(File.id == file_id))
    return out


def delete_corpus(session: Session, *, owner_id: str, corpus_id: str) -> Deleted:
    """A corpus (tokenizer and token arrays); 409 while models were trained on it."""
    corpus = get_owned(session, Corpus, corpus_id, owner_id)
    _lock(session, Corpus, corpus_id)
    models = list(
        session.scalars(
            select(Model.id).where(Model.corpus_id == corpus_id).order_by(Model.created_at)
        )
    )
    _refuse_if_depended(
        f"corpus {corpus_id}",
        "models",
        models,
        "a model samples with its corpus's tokenizer; delete the models first",
    )
    out = Deleted("corpus", corpus_id)
    out.pending_ids = schedule(session, [], [corpus.object_prefix])
    out.rows["corpora"] = _count(session, delete(Corpus).where(Corpus.id == corpus_id))
    return out


def adapters_of(session: Session, model_id: str) -> list[tuple[str, str]]:
    """(id, owner id) of the adapter models built on `model_id`, oldest first (any owner)."""
    stmt = (
        select(Model.id, Model.owner_id)
        .where(Model.base_model_id == model_id)
        .order_by(Model.created_at, Model.id)
    )
    return [(row.id, row.owner_id) for row in session.execute(stmt)]


def delete_model(session: Session, *, owner_id: str, model_id: str) -> Deleted:
    """A model with its checkpoints, metrics, samples, weights, loss curve and renderings.

    409 while its training job, a sample job on it, a sample job continuing one of its
    samples, a corpus build with its tokenizer (anyone's, for a public model), or a
    fine-tuning from one of its checkpoints is queued or running, and while adapter models
    (anyone's) are built on it: an adapter samples merged into its base's checkpoint, so the
    base goes only after them. Samples other owners made from a public model go with it.
    """
    model = get_owned(session, Model, model_id, owner_id)
    _lock(session, Model, model_id)
    _refuse_if_depended(
        f"model {model_id}",
        "adapters",
        [a for a, _ in adapters_of(session, model_id)],
        "an adapter samples with its base model's weights; their owners must delete them first",
    )
    ckpts = set(session.scalars(select(Checkpoint.id).where(Checkpoint.model_id == model_id)))
    jobs = _active_jobs(session, owner_id)
    if model.visibility == "public":  # other owners may be sampling or adapting it now
        others = select(Job).where(Job.owner_id != owner_id, Job.state.in_(ACTIVE_STATES))
        jobs += list(session.scalars(others.order_by(Job.created_at, Job.id)))
    children = {
        str(j.params.get("model_id"))
        for j in jobs
        if j.type == "train" and j.params.get("model_id") != model_id
    }
    finetunes = (
        set(
            session.scalars(
                select(Model.id).where(Model.id.in_(children), Model.init_checkpoint_id.in_(ckpts))
            )
        )
        if children and ckpts
        else set()
    )
    samples = list(
        session.execute(
            select(Sample.id, Sample.midi_key, Sample.meta).where(Sample.model_id == model_id)
        )
    )
    sample_ids = {s.id for s in samples}
    _refuse_if_used(
        jobs,
        f"model {model_id}",
        lambda p: (
            p.get("model_id") == model_id
            or p.get("model_id") in finetunes
            or p.get("primer_sample_id") in sample_ids
            or p.get("source_sample_id") in sample_ids
            or p.get("base_model_id") == model_id  # a corpus tokenized with its tokenizer
        ),
    )
    out = Deleted("model", model_id)
    out.pending_ids = schedule(
        session,
        [s.midi_key for s in samples] + _renders(s.meta.get("sha256") for s in samples),
        [job_key(model.job_id)],
    )
    out.rows["samples"] = _count(session, delete(Sample).where(Sample.model_id == model_id))
    out.rows["checkpoints"] = _count(
        session, delete(Checkpoint).where(Checkpoint.model_id == model_id)
    )
    out.rows["metrics"] = _count(
        session, delete(MetricRecord).where(MetricRecord.model_id == model_id)
    )
    out.rows["models"] = _count(session, delete(Model).where(Model.id == model_id))
    return out


def delete_sample(session: Session, *, owner_id: str, sample_id: str) -> Deleted:
    """One sample: its row, its MIDI and its renderings (unless another row shares them).

    409 while a queued or running job continues or edits it (`primer_sample_id`,
    `source_sample_id`). The samples that
    continued it stay; their `parent_sample_id` becomes null.
    """
    sample = get_owned(session, Sample, sample_id, owner_id)
    _lock(session, Sample, sample_id)
    _refuse_if_used(
        _active_jobs(session, owner_id),
        f"sample {sample_id}",
        lambda p: sample_id in (p.get("primer_sample_id"), p.get("source_sample_id")),
    )
    out = Deleted("sample", sample_id)
    out.pending_ids = schedule(session, [sample.midi_key, *_renders([sample.meta.get("sha256")])])
    out.rows["samples"] = _count(session, delete(Sample).where(Sample.id == sample_id))
    return out


def delete_job(session: Session, *, owner_id: str, job_id: str) -> Deleted:
    """A finished job's row and events; 409 while it is queued or running (cancel it first).

    What the job made stays (a corpus, a model, samples, files are deleted on their own); its
    objects that nothing uses (say, a failed job's partial output) go to the sweep.
    """
    job = get_owned(session, Job, job_id, owner_id)
    _lock(session, Job, job_id)
    session.refresh(job)
    if job.state in ACTIVE_STATES:
        raise Conflict(
            f"job {job_id} is {job.state}: cancel it first (POST /v1/jobs/{job_id}/cancel), "
            "wait for it to end, then delete it",
            code="job_active",
        )
    out = Deleted("job", job_id)
    out.pending_ids = schedule(session, [], [job_key(job_id)])
    out.rows["job_events"] = _count(session, delete(JobEvent).where(JobEvent.job_id == job_id))
    out.rows["jobs"] = _count(session, delete(Job).where(Job.id == job_id))
    return out
