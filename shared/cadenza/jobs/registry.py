"""The one table of job types: each row says which queue runs it, what parameters it takes and
which handler does the work.

Adding a job type is one row here, one params model (a torch-free pydantic model beside the
domain code that uses it) and one handler module under `cadenza.jobs.handlers`. The API
validates with the params model before anything is queued; the runner imports the handler
only when a job of that type runs, so torch stays out of the API process.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel

from cadenza.audio.params import AudioParams
from cadenza.render.params import RenderParams
from cadenza.sample.params import SampleParams
from cadenza.tokenize.params import TokenizeParams, TokenizeShardParams
from cadenza.train.params import TrainParams

Queue = Literal["cpu", "gpu"]


@dataclass(frozen=True)
class JobType:
    """One row of the table."""

    name: str
    queue: Queue  # "cpu" workers parse, convert and render; "gpu" workers train and sample
    params: type[BaseModel]
    handler: str  # "module:function", imported lazily by the worker that runs the job


JOB_TYPES: dict[str, JobType] = {
    t.name: t
    for t in (
        JobType("tokenize", "cpu", TokenizeParams, "cadenza.jobs.handlers.tokenize:run"),
        # A part of a sharded `tokenize` job, created by it (cadenza.jobs.fanout), never by users.
        JobType(
            "tokenize_shard", "cpu", TokenizeShardParams, "cadenza.jobs.handlers.tokenize_shard:run"
        ),
        JobType("audio", "cpu", AudioParams, "cadenza.jobs.handlers.audio:run"),
        JobType("render", "cpu", RenderParams, "cadenza.jobs.handlers.render:run"),
        JobType("train", "gpu", TrainParams, "cadenza.jobs.handlers.train:run"),
        JobType("sample", "gpu", SampleParams, "cadenza.jobs.handlers.sample:run"),
    )
}


def job_type(name: str) -> JobType:
    """The row of job type `name`; ValueError naming the known types otherwise."""
    try:
        return JOB_TYPES[name]
    except KeyError:
        raise ValueError(f"unknown job type {name!r}; known: {', '.join(JOB_TYPES)}") from None
