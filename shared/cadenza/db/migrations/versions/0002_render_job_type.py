"""render jobs have their own type

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-04 10:40:00

Rendering used to be an `audio` job with `operation: render`; it is now the `render` job type.
Rows written before this release are re-typed (and their params reduced to the render job's
`targets`) so a queued one still runs and the render-job lookup finds a running one.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_jobs = sa.table(
    "jobs",
    sa.column("id", sa.String),
    sa.column("type", sa.String),
    sa.column("params", sa.JSON),
)


def upgrade() -> None:
    conn = op.get_bind()
    rows = conn.execute(sa.select(_jobs.c.id, _jobs.c.params).where(_jobs.c.type == "audio"))
    for job_id, params in list(rows):
        if isinstance(params, dict) and params.get("operation") == "render":
            conn.execute(
                _jobs.update()
                .where(_jobs.c.id == job_id)
                .values(type="render", params={"targets": params.get("targets", [])})
            )


def downgrade() -> None:
    conn = op.get_bind()
    rows = conn.execute(sa.select(_jobs.c.id, _jobs.c.params).where(_jobs.c.type == "render"))
    for job_id, params in list(rows):
        conn.execute(
            _jobs.update()
            .where(_jobs.c.id == job_id)
            .values(type="audio", params={"operation": "render", **(params or {})})
        )
