"""Schema migrations keep the rows they find, on SQLite and PostgreSQL, and match the models."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, text

from cadenza.db.migrate import alembic_config, upgrade
from cadenza.db.models import Base, Job
from cadenza.db.session import session_scope
from cadenza.launch.postgres import ensure_postgres, fresh_postgres_database
from cadenza.render.params import RenderParams

T0 = "2026-01-01 00:00:00"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'm.db'}"
        return
    ensure_postgres()
    with fresh_postgres_database() as url:
        yield url


def _insert_0002_rows(url: str) -> None:
    rows = [
        "INSERT INTO owners (id, name, created_at) VALUES ('o', 'alice', :t)",
        "INSERT INTO api_keys (id, owner_id, prefix, key_hash, created_at)"
        " VALUES ('k', 'o', 'p', 'h', :t)",
        "INSERT INTO jobs (id, owner_id, type, queue, state, progress, message, params, result,"
        " attempts, max_attempts, cancel_requested, created_at, updated_at) VALUES"
        " ('j', 'o', 'train', 'gpu', 'queued', 0, '', '{}', '{}', 0, 3, false, :t, :t)",
        "INSERT INTO job_events (job_id, kind, data, created_at) VALUES ('j', 'state', '{}', :t)",
    ]
    with create_engine(url).begin() as c:
        for sql in rows:
            c.execute(text(sql), {"t": T0})


def test_0003_keeps_rows_and_matches_models(db_url: str) -> None:
    upgrade(db_url, "0002")
    _insert_0002_rows(db_url)
    upgrade(db_url)
    engine = create_engine(db_url)
    with engine.connect() as c:
        # SQLite copies a table to alter it: with foreign keys on, that used to cascade.
        assert c.execute(text("SELECT count(*) FROM job_events")).scalar_one() == 1
        (scopes,) = c.execute(text("SELECT scopes FROM api_keys")).one()
        assert "train" in str(scopes) and "admin" not in str(scopes)
        (attempts, interruptions) = c.execute(
            text("SELECT attempts, interruptions FROM jobs")
        ).one()
        assert (attempts, interruptions) == (0, 0)
        assert compare_metadata(MigrationContext.configure(c), Base.metadata) == []
    command.downgrade(alembic_config(db_url), "0002")
    upgrade(db_url)
    with engine.connect() as c:
        assert c.execute(text("SELECT count(*) FROM api_keys")).scalar_one() == 1
    engine.dispose()


def test_old_render_jobs_are_retyped_by_0002(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'm.db'}"
    upgrade(url, "0001")
    render_params = {"operation": "render", "targets": [{"sha256": "c" * 64, "key": "k"}]}
    insert = text(
        "INSERT INTO jobs (id, owner_id, type, queue, state, progress, message, params, result,"
        " attempts, max_attempts, cancel_requested, created_at, updated_at) VALUES"
        " (:id, 'o', 'audio', 'cpu', 'queued', 0, '', :params, '{}', 0, 3, false, :t, :t)"
    )
    with create_engine(url).begin() as c:
        c.execute(
            text("INSERT INTO owners (id, name, created_at) VALUES ('o', 'o', :t)"), {"t": T0}
        )
        c.execute(insert, {"id": "r", "params": json.dumps(render_params), "t": T0})
        c.execute(insert, {"id": "c", "params": json.dumps({"operation": "convert"}), "t": T0})
    upgrade(url)
    with session_scope(url) as s:
        render, convert = s.get(Job, "r"), s.get(Job, "c")
        assert render is not None and convert is not None
        assert render.type == "render" and render.params == {"targets": render_params["targets"]}
        assert convert.type == "audio" and convert.params["operation"] == "convert"
        RenderParams.model_validate(render.params)


def test_0004_lets_a_corpus_outlive_its_dataset(db_url: str) -> None:
    upgrade(db_url, "0003")
    rows = [
        "INSERT INTO owners (id, name, limits, created_at) VALUES ('o', 'alice', '{}', :t)",
        "INSERT INTO datasets (id, owner_id, name, description, created_at)"
        " VALUES ('d', 'o', 'd', '', :t)",
        "INSERT INTO corpora (id, owner_id, dataset_id, job_id, params, tokenizer_key,"
        " tokenizer_hash, vocab_size, object_prefix, stats, created_at)"
        " VALUES ('c', 'o', 'd', 'j', '{}', 'k', 'h', 1, 'p', '{}', :t)",
    ]
    with create_engine(db_url).begin() as c:
        for sql in rows:
            c.execute(text(sql), {"t": T0})
    upgrade(db_url)
    with session_scope(db_url) as s:  # the app's engine: SQLite foreign keys on
        (fk,) = [
            fk
            for fk in s.connection().dialect.get_foreign_keys(s.connection(), "corpora")
            if fk["referred_table"] == "datasets"
        ]
        assert fk["options"].get("ondelete") == "SET NULL"
        s.execute(text("DELETE FROM datasets"))
    with session_scope(db_url) as s:
        assert s.execute(text("SELECT id, dataset_id FROM corpora")).one() == ("c", None)
    with pytest.raises(RuntimeError, match="1 corpora outlived their datasets"):
        command.downgrade(alembic_config(db_url), "0003")
    with session_scope(db_url) as s:
        s.execute(text("DELETE FROM corpora"))
    command.downgrade(alembic_config(db_url), "0003")
    upgrade(db_url)


def test_0005_links_a_sample_to_its_parent_and_a_delete_unlinks(db_url: str) -> None:
    upgrade(db_url, "0004")
    rows = [
        "INSERT INTO owners (id, name, limits, created_at) VALUES ('o', 'alice', '{}', :t)",
        "INSERT INTO corpora (id, owner_id, dataset_id, job_id, params, tokenizer_key,"
        " tokenizer_hash, vocab_size, object_prefix, stats, created_at)"
        " VALUES ('c', 'o', NULL, 'j', '{}', 'k', 'h', 1, 'p', '{}', :t)",
        "INSERT INTO models (id, owner_id, corpus_id, job_id, architecture, preset, config,"
        " train_config, vocab_size, tokenizer_hash, state, summary, created_at)"
        " VALUES ('m', 'o', 'c', 'j', 'a', NULL, '{}', '{}', 1, 'h', 'ready', '{}', :t)",
        'INSERT INTO samples (id, owner_id, model_id, job_id, "index", params, midi_key,'
        " num_tokens, num_notes, duration_s, partial, meta, created_at)"
        " VALUES ('s', 'o', 'm', 'j', 0, '{}', 'k', 1, 1, 1.0, false, '{}', :t)",
    ]
    with create_engine(db_url).begin() as c:
        for sql in rows:
            c.execute(text(sql), {"t": T0})
    upgrade(db_url)
    engine = create_engine(db_url)
    with engine.connect() as c:
        assert c.execute(text("SELECT id, parent_sample_id FROM samples")).one() == ("s", None)
        assert compare_metadata(MigrationContext.configure(c), Base.metadata) == []
    with session_scope(db_url) as s:  # the app's engine: SQLite foreign keys on
        (fk,) = [
            fk
            for fk in s.connection().dialect.get_foreign_keys(s.connection(), "samples")
            if fk["referred_table"] == "samples"
        ]
        assert fk["constrained_columns"] == ["parent_sample_id"]
        assert fk["options"].get("ondelete") == "SET NULL"
        child = (
            'INSERT INTO samples (id, owner_id, model_id, job_id, "index", params, midi_key,'
            " num_tokens, num_notes, duration_s, partial, meta, created_at, parent_sample_id)"
            " VALUES ('t', 'o', 'm', 'j', 1, '{}', 'k', 1, 1, 1.0, false, '{}', :t, 's')"
        )
        s.execute(text(child), {"t": T0})
    with session_scope(db_url) as s:
        s.execute(text("DELETE FROM samples WHERE id = 's'"))
    with session_scope(db_url) as s:
        assert s.execute(text("SELECT id, parent_sample_id FROM samples")).one() == ("t", None)
    command.downgrade(alembic_config(db_url), "0004")
    with engine.connect() as c:
        assert c.execute(text("SELECT id FROM samples")).one() == ("t",)
    upgrade(db_url)
    engine.dispose()


def test_0006_shares_models_and_keeps_existing_ones_private(db_url: str) -> None:
    upgrade(db_url, "0005")
    rows = [
        "INSERT INTO owners (id, name, limits, created_at) VALUES ('o', 'alice', '{}', :t)",
        "INSERT INTO corpora (id, owner_id, dataset_id, job_id, params, tokenizer_key,"
        " tokenizer_hash, vocab_size, object_prefix, stats, created_at)"
        " VALUES ('c', 'o', NULL, 'j', '{}', 'k', 'h', 1, 'p', '{}', :t)",
        "INSERT INTO models (id, owner_id, corpus_id, job_id, architecture, config, train_config,"
        " vocab_size, tokenizer_hash, state, summary, created_at)"
        " VALUES ('m', 'o', 'c', 'j', 'gpt', '{}', '{}', 1, 'h', 'ready', '{}', :t)",
    ]
    with create_engine(db_url).begin() as c:
        for sql in rows:
            c.execute(text(sql), {"t": T0})
    upgrade(db_url)
    engine = create_engine(db_url)
    with engine.connect() as c:
        row = c.execute(text("SELECT visibility, base_model_id, adapter FROM models")).one()
        assert tuple(row) == ("private", None, None)
        assert c.execute(text("SELECT base_model_id FROM corpora")).scalar_one() is None
        assert compare_metadata(MigrationContext.configure(c), Base.metadata) == []
    with engine.begin() as c:
        c.execute(
            text(
                "INSERT INTO models (id, owner_id, corpus_id, job_id, architecture, config,"
                " train_config, vocab_size, tokenizer_hash, state, summary, created_at,"
                " visibility, base_model_id, adapter) VALUES ('a', 'o', 'c', 'j2', 'gpt', '{}',"
                " '{}', 1, 'h', 'ready', '{}', :t, 'private', 'm', '{\"rank\": 8}')"
            ),
            {"t": T0},
        )
    engine.dispose()
    with pytest.raises(RuntimeError, match="1 adapter models exist"):
        command.downgrade(alembic_config(db_url), "0005")
    with session_scope(db_url) as s:
        s.execute(text("DELETE FROM models WHERE id = 'a'"))
    command.downgrade(alembic_config(db_url), "0005")
    upgrade(db_url)


def test_0007_adds_empty_tags_to_existing_datasets_and_files(db_url: str) -> None:
    upgrade(db_url, "0006")
    rows = [
        "INSERT INTO owners (id, name, limits, created_at) VALUES ('o', 'alice', '{}', :t)",
        "INSERT INTO datasets (id, owner_id, name, description, created_at)"
        " VALUES ('d', 'o', 'd', '', :t)",
        "INSERT INTO files (id, owner_id, dataset_id, name, kind, format, sha256, size,"
        " object_key, meta, created_at) VALUES ('f', 'o', 'd', 'a.mid', 'midi', 'mid', 's', 1,"
        " 'k', '{}', :t)",
    ]
    with create_engine(db_url).begin() as c:
        for sql in rows:
            c.execute(text(sql), {"t": T0})
    upgrade(db_url, "0007")
    with session_scope(db_url) as s:
        for table in ("datasets", "files"):  # PostgreSQL answers a list, SQLite a string
            tags = s.execute(text(f"SELECT tags FROM {table}")).scalar_one()  # noqa: S608
            assert (json.loads(tags) if isinstance(tags, str) else tags) == []
        s.execute(text("UPDATE files SET tags = '[\"baroque\"]'"))
    command.downgrade(alembic_config(db_url), "0006")
    with session_scope(db_url) as s:  # the file survived the downgrade (no table copy)
        assert s.execute(text("SELECT count(*) FROM files")).scalar_one() == 1
    upgrade(db_url)
