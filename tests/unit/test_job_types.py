"""The table of job types: every row is complete, and submission validates against it."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
from pydantic import BaseModel

from cadenza.config import Settings
from cadenza.db.migrate import upgrade
from cadenza.db.models import Owner
from cadenza.db.session import session_scope
from cadenza.jobs import JOB_TYPES, job_type, submit
from cadenza.render.params import RenderParams, RenderTarget
from cadenza.train.params import TrainParams


def test_every_job_type_has_a_queue_a_params_model_and_a_handler() -> None:
    assert set(JOB_TYPES) == {"tokenize", "tokenize_shard", "audio", "render", "train", "sample"}
    for name, spec in JOB_TYPES.items():
        assert spec.name == name and spec.queue in ("cpu", "gpu")
        assert issubclass(spec.params, BaseModel)
        module, _, attr = spec.handler.partition(":")
        assert module.startswith("cadenza.jobs.handlers.")
        assert (Path(importlib.util.find_spec(module).origin or "")).exists()  # type: ignore[union-attr]
        assert attr == "run"
    with pytest.raises(ValueError, match="known: tokenize"):
        job_type("transmogrify")


def test_submit_refuses_params_of_another_type_and_commits_before_enqueueing(
    tmp_path: Path,
) -> None:
    settings = Settings(data_dir=tmp_path)
    upgrade(settings.resolved_database_url)
    with session_scope(settings.resolved_database_url) as s:
        owner = Owner(name="o")
        s.add(owner)
        s.flush()
        with pytest.raises(TypeError, match="render jobs take RenderParams"):
            submit(
                s,
                settings,
                owner_id=owner.id,
                type="render",
                params=TrainParams(model_id="m", corpus_id="c"),
            )
        target = RenderTarget(sha256="ab" * 32, key="renders/x.mid")
        job = submit(
            s, settings, owner_id=owner.id, type="render", params=RenderParams(targets=[target])
        )
        assert (job.type, job.queue, job.state) == ("render", "cpu", "queued")
        assert job.params == {"targets": [{"sha256": "ab" * 32, "key": "renders/x.mid"}]}
    # the message is in the embedded broker's queue folder
    assert any((settings.broker_dir / "queue").iterdir())
