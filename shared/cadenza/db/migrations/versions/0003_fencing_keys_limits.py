"""fencing tokens, key scopes and expiry, per-owner limits, rate buckets, pending deletes

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04 12:20:00

- jobs: `claim_token` (each claim gets a fresh one; every write of a running job names it),
  `interruptions` (requeues that are not the job's fault) and `resends` (lost-message re-sends).
- checkpoints (model, step), metrics (model, step, split) and samples (job, index) are unique,
  so a second writer cannot add duplicate rows. Duplicates already present are removed first
  (the newest row of each group is kept).
- api_keys: `name`, `scopes` (existing keys get read, write and train), `expires_at`,
  `last_used_at`. owners: `limits` (per-owner budget overrides).
- rate_buckets (the embedded rate limiter's token buckets) and pending_deletes (object keys
  whose rows are gone, for the sweep).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

DEFAULT_SCOPES = ["read", "write", "train"]


def _dedupe(table: str, columns: Sequence[str], order: str) -> None:
    """Delete all but one row (the greatest `order`) of each group of `columns`."""
    t = sa.table(table, sa.column(order), *(sa.column(c) for c in columns))
    conn = op.get_bind()
    groups = conn.execute(
        sa.select(*(t.c[c] for c in columns), sa.func.max(t.c[order]), sa.func.count())
        .group_by(*(t.c[c] for c in columns))
        .having(sa.func.count() > 1)
    ).all()
    for row in groups:
        values, newest = row[: len(columns)], row[len(columns)]
        cond = sa.and_(*(t.c[c] == v for c, v in zip(columns, values, strict=True)))
        conn.execute(t.delete().where(cond, t.c[order] != newest))


def upgrade() -> None:
    with op.batch_alter_table("jobs") as b:
        b.add_column(sa.Column("claim_token", sa.String(length=32), nullable=True))
        b.add_column(sa.Column("interruptions", sa.Integer(), nullable=False, server_default="0"))
        b.add_column(sa.Column("resends", sa.Integer(), nullable=False, server_default="0"))

    _dedupe("checkpoints", ("model_id", "step"), "id")
    _dedupe("model_metrics", ("model_id", "step", "split"), "id")
    _dedupe("samples", ("job_id", "index"), "id")
    with op.batch_alter_table("checkpoints") as b:
        b.create_unique_constraint("uq_checkpoints_model_step", ["model_id", "step"])
    with op.batch_alter_table("model_metrics") as b:
        b.create_unique_constraint(
            "uq_model_metrics_model_step_split", ["model_id", "step", "split"]
        )
    with op.batch_alter_table("samples") as b:
        b.create_unique_constraint("uq_samples_job_index", ["job_id", "index"])

    with op.batch_alter_table("api_keys") as b:
        b.add_column(sa.Column("name", sa.String(length=200), nullable=False, server_default=""))
        b.add_column(sa.Column("scopes", sa.JSON(), nullable=True))
        b.add_column(sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))
        b.add_column(sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True))
    keys = sa.table("api_keys", sa.column("scopes", sa.JSON))
    op.get_bind().execute(keys.update().values(scopes=DEFAULT_SCOPES))
    with op.batch_alter_table("api_keys") as b:
        b.alter_column("scopes", existing_type=sa.JSON(), nullable=False)

    with op.batch_alter_table("owners") as b:
        b.add_column(sa.Column("limits", sa.JSON(), nullable=True))
    owners = sa.table("owners", sa.column("limits", sa.JSON))
    op.get_bind().execute(owners.update().values(limits={}))
    with op.batch_alter_table("owners") as b:
        b.alter_column("limits", existing_type=sa.JSON(), nullable=False)

    op.create_table(
        "rate_buckets",
        sa.Column("key", sa.String(length=200), nullable=False),
        sa.Column("tokens", sa.Float(), nullable=False),
        sa.Column("updated", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("key"),
    )
    op.create_table(
        "pending_deletes",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("object_key", sa.String(length=300), nullable=False),
        sa.Column("is_prefix", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )


def downgrade() -> None:
    op.drop_table("pending_deletes")
    op.drop_table("rate_buckets")
    with op.batch_alter_table("owners") as b:
        b.drop_column("limits")
    with op.batch_alter_table("api_keys") as b:
        b.drop_column("last_used_at")
        b.drop_column("expires_at")
        b.drop_column("scopes")
        b.drop_column("name")
    with op.batch_alter_table("samples") as b:
        b.drop_constraint("uq_samples_job_index", type_="unique")
    with op.batch_alter_table("model_metrics") as b:
        b.drop_constraint("uq_model_metrics_model_step_split", type_="unique")
    with op.batch_alter_table("checkpoints") as b:
        b.drop_constraint("uq_checkpoints_model_step", type_="unique")
    with op.batch_alter_table("jobs") as b:
        b.drop_column("resends")
        b.drop_column("interruptions")
        b.drop_column("claim_token")
