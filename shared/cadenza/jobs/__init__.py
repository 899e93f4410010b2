"""Jobs: the table of job types, their lifecycle in SQL, the queue, the runner and handlers.

registry.py    JOB_TYPES: name -> queue, params model, handler
state.py       states, transitions and the compare-and-set SQL that moves one job
submit.py      validate, commit, enqueue (the only way work is queued)
queue.py       the Celery app both sides share (only job ids travel)
runner.py      claim, lease, run a handler, commit its outputs with the final state
context.py     what a handler sees (JobContext) and returns (Outcome)
reconciler.py  requeue jobs of dead workers, re-send lost messages
fanout.py      a job's child jobs (corpus parts): spawn, run or wait, fail/cancel together
handlers/      one module per job type
"""

from cadenza.jobs.reconciler import reconcile
from cadenza.jobs.registry import JOB_TYPES, JobType, job_type
from cadenza.jobs.state import (
    TERMINAL,
    TRANSITIONS,
    InvalidTransition,
    JobState,
    add_event,
    can_transition,
    check_transition,
    claim,
    create_job,
    finish,
    renew_lease,
    request_cancel,
    set_progress,
)
from cadenza.jobs.submit import submit

__all__ = [
    "JOB_TYPES",
    "TERMINAL",
    "TRANSITIONS",
    "InvalidTransition",
    "JobState",
    "JobType",
    "add_event",
    "can_transition",
    "check_transition",
    "claim",
    "create_job",
    "finish",
    "job_type",
    "reconcile",
    "renew_lease",
    "request_cancel",
    "set_progress",
    "submit",
]
