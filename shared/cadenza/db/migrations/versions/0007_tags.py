"""style tags on datasets and files

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04 18:40:00

`datasets.tags` and `files.tags`: JSON lists of free style tags (validated by the API: at most
16, each 1-40 characters of a-z, 0-9, - and _). A corpus built with `learn_tags` learns a
file's tags together with its dataset's as conditioning tokens. Existing rows get `[]`.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ("datasets", "files")


# Plain ALTER TABLE ADD/DROP COLUMN (SQLite ≥ 3.35 has both), not batch mode: a batch copy of
# `files` would have to drop the table that samples and derived files reference.


def upgrade() -> None:
    for table in TABLES:
        op.add_column(table, sa.Column("tags", sa.JSON(), nullable=False, server_default="[]"))


def downgrade() -> None:
    for table in TABLES:
        op.drop_column(table, "tags")
