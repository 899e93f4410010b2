"""Run one queued training job, alone or across processes under `torchrun` (DDP).

    cadenza train-job JOB_ID                                        # one process (k8s GPU Job)
    torchrun --nproc_per_node=4 -m cadenza.jobs.train_job JOB_ID     # 4 GPUs, one job

Rank 0 claims the job row (compare-and-set, lease) exactly as a Celery worker would, and
only rank 0 writes metrics, checkpoints and the final commit; the other ranks read the same
job and corpus and take part in every step. If rank 0 cannot claim the job (already taken
or finished), every rank exits without training.
"""

from __future__ import annotations

import logging
import signal
import sys
from typing import Any

import torch.distributed as dist

from cadenza.config import get_settings
from cadenza.jobs import heartbeat
from cadenza.jobs.runner import claim_context, execute, follower_context, load_handler
from cadenza.train.distributed import cleanup_distributed, init_distributed

log = logging.getLogger("cadenza.jobs.train_job")


def run(job_id: str) -> str | None:
    """Train job `job_id` in this process group; every rank returns rank 0's final state
    (None: not claimed).

    SIGTERM (a pod evicted) sets the drain flag: training stops at the next step with a
    checkpoint, and the job is requeued without using up an attempt.
    """
    settings = get_settings()
    signal.signal(signal.SIGTERM, _drain)
    info = init_distributed()
    try:
        if not info.is_distributed:
            ctx = claim_context(job_id, settings)
            return execute(ctx) if ctx is not None else None
        claimed = [False]
        if info.is_main:
            ctx = claim_context(job_id, settings)
            claimed = [ctx is not None]
        dist.broadcast_object_list(claimed, src=0)
        if not claimed[0]:
            return None
        state: str | None = None
        if info.is_main:
            assert ctx is not None
            state = execute(ctx)
        else:
            follower = follower_context(job_id, settings)
            if follower.type != "train":
                raise SystemExit(f"job {job_id} is a {follower.type} job, not a training job")
            load_handler("train")(follower)  # outputs are rank 0's to commit
        return _final_state(state, info.is_main)
    finally:
        cleanup_distributed()


def _final_state(state: str | None, is_main: bool) -> str | None:
    """Rank 0's final state, on every rank.

    So that every process, on every node, exits non-zero when the run did not succeed (e.g.
    drained and requeued): a Kubernetes Indexed Job then retries all its pods, which meet
    again and resume from the checkpoint, instead of counting the other nodes as complete and
    leaving the retried one waiting alone at the rendezvous.
    """
    final = [state]
    try:
        dist.broadcast_object_list(final, src=0)
    except Exception:  # a peer is gone: rank 0 knows its own state, the others do not
        log.warning("could not learn the final state of the run from rank 0", exc_info=True)
        return state if is_main else "unknown"
    return final[0]


def _drain(*_: Any) -> None:
    heartbeat.DRAIN.set()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m cadenza.jobs.train_job JOB_ID", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO)
    state = run(args[0])
    return 0 if state in ("succeeded", None) else 1


if __name__ == "__main__":
    raise SystemExit(main())
