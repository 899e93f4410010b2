"""A worker SIGKILLed or SIGSTOPped past its lease mid-job, with a second worker running.

Each job ends once, with exactly one set of outputs: the second attempt finishes it, and the
paused attempt, woken (SIGCONT) while the second one runs, stops at its next write and writes
nothing (no rows, no objects). Tokenization and sampling are killed and paused, training
(the longest-running, most write-heavy job) is paused, on the embedded stack; training is
paused on the production-like stack too. (A SIGKILL mid-training, on both stacks, is
tests/integration/test_training_reliability.py's.) The
figures (faults, recovery times) are printed for RELIABILITY.md; run with `-s` to see them.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from cadenza.client import Client
from cadenza.config import Settings
from cadenza.db.models import Checkpoint, Corpus, Job, JobEvent, MetricRecord, Sample
from cadenza.db.session import session_factory
from cadenza.storage import job_key, open_store
from tests.support.stack import Stack

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TRAIN = {
    "max_steps": 60,
    "checkpoint_interval": 10,
    "eval_interval": 20,
    "batch_size": 4,
    "seq_len": 64,
    "keep_last_n": 2,
}
Ready = Callable[[dict[str, Any]], bool]


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def stack_settings(stack: Stack) -> Settings:
    prefix = "CADENZA_"
    fields = {k[len(prefix) :].lower(): v for k, v in stack.env.items() if k.startswith(prefix)}
    return Settings.model_validate({k: v for k, v in fields.items() if k in Settings.model_fields})


class Faults:
    """Signals the worker that holds a job, the way a node dies or a process stalls."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.settings = stack_settings(stack)
        self.factory = session_factory(self.settings.resolved_database_url)
        self.store = open_store(self.settings)
        self.extra = stack.launched.start_worker()  # the second worker, idle until needed
        self.nudges = 0

    def session(self) -> Session:
        return self.factory()

    def holder(self, job_id: str) -> tuple[str, subprocess.Popen[bytes]]:
        with self.session() as s:
            worker = s.scalar(select(Job.worker).where(Job.id == job_id))
        pid = int((worker or ":0").rsplit(":", 1)[1])
        for name, proc in self.stack.launched.procs.items():
            if proc.pid == pid and proc.poll() is None:
                return name, proc
        raise AssertionError(f"no running worker process {worker}")

    def inject(self, c: Client, job_id: str, fault: str, ready: Ready) -> dict[str, Any]:
        """Signal the job's worker once `ready`; wait for the job to end; return its row."""
        wait_for(lambda: ready(c.job(job_id)), 300, f"job {job_id} to be under way")
        name, proc = self.holder(job_id)
        log = self.stack.logs / f"{name}.log"
        lost_before = log.read_text(errors="replace").count("was taken from this attempt")
        t0 = time.monotonic()
        os.killpg(proc.pid, signal.SIGKILL if fault == "kill" else signal.SIGSTOP)
        if fault == "kill":
            proc.wait()
            self.stack.start_worker()  # a replacement, as a supervisor would start
        self.await_takeover(c, job_id, proc if fault == "stop" else None)
        recovery = time.monotonic() - t0
        if fault == "stop":
            os.killpg(proc.pid, signal.SIGCONT)  # wakes up while the second attempt runs
        final = c.wait(job_id, timeout=600)
        if fault == "stop":
            wait_for(
                lambda: (
                    log.read_text(errors="replace").count("was taken from this attempt")
                    > lost_before
                ),
                120,
                "the woken worker to notice it lost the job",
            )
        total = time.monotonic() - t0
        print(
            f"FAULT {fault} {final['type']}: recovered (second attempt running) in "
            f"{recovery:.1f} s, job done {total:.1f} s after the fault"
        )
        assert final["state"] == "succeeded", final
        assert final["attempts"] == 2, final  # exactly one re-run
        with self.session() as s:
            ends = s.scalars(
                select(JobEvent.data).where(JobEvent.job_id == job_id, JobEvent.kind == "state")
            )
            assert [d["state"] for d in ends if d["state"] in ("succeeded", "failed")] == [
                "succeeded"
            ]
        return final

    def await_takeover(
        self, c: Client, job_id: str, paused: subprocess.Popen[bytes] | None
    ) -> None:
        """Wait for a second attempt to hold the job.

        SQLite has one writer lock: a process stopped inside a write transaction (a progress
        row, a fenced insert) blocks every other writer, the reconciler too, until it runs
        again. There the test lets a stopped worker run for a moment (its transaction ends)
        and stops it again; PostgreSQL's row locks only hold back that one job's row.
        """

        def taken() -> bool:
            j = c.job(job_id)
            return bool(j["attempts"] >= 2 and j["state"] != "queued")

        for _ in range(3):
            try:
                wait_for(taken, 4 * self.settings.job_lease_seconds + 10, "a second attempt")
                return
            except AssertionError:
                if paused is None or not self.settings.embedded:
                    raise
                os.killpg(paused.pid, signal.SIGCONT)
                time.sleep(0.2)
                os.killpg(paused.pid, signal.SIGSTOP)
                self.nudges += 1
        raise AssertionError(f"job {job_id} was never taken over")

    def close(self) -> None:
        for proc in self.stack.launched.procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGCONT)
        with_extra = [n for n, p in self.stack.launched.procs.items() if p is self.extra]
        if self.extra.poll() is None:
            self.extra.terminate()
            self.extra.wait(60)
        for name in with_extra:
            del self.stack.launched.procs[name]


def dup_counts(s: Session, *cols: Any) -> list[int]:
    """Group sizes above one: duplicates of `cols`."""
    rows = s.execute(select(*cols, func.count()).group_by(*cols).having(func.count() > 1))
    return [r[-1] for r in rows]


def tokenized(c: Client, f: Faults, chorales: list[Path], fault: str | None) -> str:
    ds = c.create_dataset(f"faults-{fault}")
    c.upload(ds["id"], chorales)
    job = c.create_corpus(ds["id"], tokenizer="REMI")
    if fault is None:
        final = c.wait(job["id"], timeout=300)
    else:
        final = f.inject(c, job["id"], fault, lambda j: j["state"] == "running")
    with f.session() as s:
        assert s.scalar(select(func.count()).where(Corpus.job_id == job["id"])) == 1
    return str(final["corpus_id"])


def trained(c: Client, f: Faults, corpus_id: str, fault: str | None) -> str:
    job = c.create_model(corpus_id, architecture="gpt", preset="tiny", train=TRAIN)
    model_id = job["model_id"]
    if fault is None:
        c.wait(job["id"], timeout=600)
        return str(model_id)

    def checkpointed(_: dict[str, Any]) -> bool:
        return any(ck["step"] >= 20 for ck in c.get(f"/v1/models/{model_id}")["checkpoints"])

    f.inject(c, job["id"], fault, checkpointed)
    model = c.get(f"/v1/models/{model_id}")
    assert model["state"] == "ready" and model["summary"]["steps"] == TRAIN["max_steps"]
    # Lost at most one checkpoint interval: resumed from a checkpoint at or after step 20.
    assert model["summary"]["resumed_from_step"] >= 20
    with f.session() as s:
        assert not dup_counts(s, MetricRecord.model_id, MetricRecord.step, MetricRecord.split)
        assert not dup_counts(s, Checkpoint.model_id, Checkpoint.step)
        keys = set(s.scalars(select(Checkpoint.object_key).where(Checkpoint.model_id == model_id)))
        steps = set(s.scalars(select(MetricRecord.step).where(MetricRecord.model_id == model_id)))
    assert max(steps) == TRAIN["max_steps"]
    stored = {o.key for o in f.store.list(job_key(job["id"], "checkpoints"))}
    assert stored == keys  # no object of the lost attempt, no orphan
    tokens = {re.sub(r".*-(\w+)\.pt$", r"\1", k) for k in keys}
    assert len(tokens) == 1  # every kept checkpoint was written by the attempt that finished
    return str(model_id)


def sampled(c: Client, f: Faults, model_id: str, fault: str) -> None:
    request = {"n": 2, "max_new_tokens": 3000, "stop_at_eos": False, "seed": 3}
    job = c.sample(model_id, **request)
    final = f.inject(c, job["id"], fault, lambda j: 0.05 < j["progress"] < 0.6)
    assert len(final["sample_ids"]) == 2
    with f.session() as s:
        rows = list(s.scalars(select(Sample).where(Sample.job_id == job["id"])))
        assert sorted(r.index for r in rows) == [0, 1]
        assert not dup_counts(s, Sample.job_id, Sample.index)
    stored = {o.key for o in f.store.list(job_key(job["id"], "samples"))}
    assert stored == {r.midi_key for r in rows}


def test_jobs_survive_a_killed_or_paused_worker(
    embedded_stack: Stack, chorales: list[Path], request: pytest.FixtureRequest
) -> None:
    f = Faults(embedded_stack)
    request.addfinalizer(f.close)
    c = Client(embedded_stack.api_url, embedded_stack.api_key)
    tokenized(c, f, chorales, "kill")
    corpus_id = tokenized(c, f, chorales, "stop")
    # SIGKILL during training, on both stacks, is test_training_reliability's; with it
    # fenced, the checks here (no duplicate rows, no stray objects) would add little.
    model_id = trained(c, f, corpus_id, "stop")
    sampled(c, f, model_id, "kill")
    sampled(c, f, model_id, "stop")
    print(f"SQLITE NUDGES {f.nudges}")


def test_paused_training_on_production_stack(
    production_stack: Stack, chorales: list[Path], request: pytest.FixtureRequest
) -> None:
    f = Faults(production_stack)
    request.addfinalizer(f.close)
    c = Client(production_stack.api_url, production_stack.api_key)
    corpus_id = tokenized(c, f, chorales[:4], None)
    trained(c, f, corpus_id, "stop")
