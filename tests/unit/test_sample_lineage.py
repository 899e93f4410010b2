"""Sample lineage in the database, on SQLite and PostgreSQL: the recursive lineage query, and
deletes (of a sample, of a model) that unlink the samples continuing them instead of deleting
or breaking them, and that wait for a job continuing one of them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from cadenza.db.migrate import upgrade
from cadenza.db.models import Corpus, Job, Model, Sample, new_id
from cadenza.db.repo import NotFound, get_or_create_owner, sample_lineage
from cadenza.db.session import session_scope
from cadenza.delete import delete_model, delete_sample
from cadenza.launch.postgres import ensure_postgres, fresh_postgres_database
from cadenza.validation import Conflict


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'l.db'}"
        upgrade(url)
        yield url
        return
    ensure_postgres()
    with fresh_postgres_database() as url:
        upgrade(url)
        yield url


def model(s: Session, owner_id: str, corpus_id: str) -> str:
    row = Model(
        owner_id=owner_id,
        corpus_id=corpus_id,
        job_id="j",
        architecture="a",
        vocab_size=1,
        tokenizer_hash="h",
        state="ready",
    )
    s.add(row)
    s.flush()
    return row.id


def sample(s: Session, owner_id: str, model_id: str, parent: str | None = None) -> str:
    row = Sample(
        owner_id=owner_id,
        model_id=model_id,
        job_id=new_id(),
        index=0,
        midi_key="k",
        num_tokens=1,
        num_notes=1,
        duration_s=1.0,
        parent_sample_id=parent,
    )
    s.add(row)
    s.flush()
    return row.id


def parent_of(url: str, sample_id: str) -> str | None:
    with session_scope(url) as s:
        row = s.get(Sample, sample_id)
        assert row is not None
        return row.parent_sample_id


def test_deletes_unlink_the_samples_that_continue_what_goes(db_url: str) -> None:
    with session_scope(db_url) as s:
        owner = get_or_create_owner(session=s, name="alice").id
        other = get_or_create_owner(session=s, name="mallory").id
        corpus = Corpus(
            owner_id=owner,
            job_id="j",
            tokenizer_key="k",
            tokenizer_hash="h",
            vocab_size=1,
            object_prefix="p",
        )
        s.add(corpus)
        s.flush()
        a, b = model(s, owner, corpus.id), model(s, owner, corpus.id)
        a1 = sample(s, owner, a)
        a2 = sample(s, owner, a, parent=a1)
        b1 = sample(s, owner, b, parent=a2)
        b2 = sample(s, owner, b, parent=b1)

    with session_scope(db_url) as s:
        chain, truncated = sample_lineage(s, b2, owner)
        assert [r.id for r in chain] == [a1, a2, b1, b2] and not truncated
        chain, truncated = sample_lineage(s, b2, owner, max_depth=1)
        assert [r.id for r in chain] == [b1, b2] and truncated
        with pytest.raises(NotFound):
            sample_lineage(s, b2, other)

    # A job continuing one of model a's samples holds the model (and that sample) until it ends.
    with session_scope(db_url) as s:
        s.add(Job(id="cont", owner_id=owner, type="sample", queue="gpu", state="running"))
        s.flush()
        s.get(Job, "cont").params = {"model_id": b, "primer_sample_id": a2}  # type: ignore[union-attr]
    for delete in (
        lambda s: delete_model(s, owner_id=owner, model_id=a),
        lambda s: delete_sample(s, owner_id=owner, sample_id=a2),
    ):
        with pytest.raises(Conflict, match="cancel job cont"), session_scope(db_url) as s:
            delete(s)
    with session_scope(db_url) as s:
        s.get(Job, "cont").state = "succeeded"  # type: ignore[union-attr]

    # The model takes its own chain (a1 → a2) in one statement; b1 only loses its link.
    with session_scope(db_url) as s:
        assert delete_model(s, owner_id=owner, model_id=a).rows["samples"] == 2
    assert parent_of(db_url, b1) is None and parent_of(db_url, b2) == b1
    with session_scope(db_url) as s:
        assert delete_sample(s, owner_id=owner, sample_id=b1).rows["samples"] == 1
    assert parent_of(db_url, b2) is None
    with session_scope(db_url) as s:
        assert [r.id for r in sample_lineage(s, b2, owner)[0]] == [b2]
