"""a sample records the sample it continues

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04 18:20:00

`samples.parent_sample_id`: the sample whose MIDI was the primer (`primer_sample_id`), null
otherwise and for every existing row. A foreign key to `samples.id` with ON DELETE SET NULL:
deleting a parent keeps its children, only without the link. Indexed, so that delete finds the
children without scanning the table.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# PostgreSQL's default name for such a constraint; on SQLite the constraint has no name of its
# own, and this naming convention lets batch mode find it by its column on the way down.
FK = "samples_parent_sample_id_fkey"
INDEX = "ix_samples_parent_sample_id"
SQLITE_NAMES = {"fk": "samples_%(column_0_name)s_fkey"}


def upgrade() -> None:
    # Batch mode: SQLite cannot add a foreign key to a table in place, so it copies the table
    # (env.py turns foreign keys off first, so the copy cascades nothing); PostgreSQL alters.
    with op.batch_alter_table("samples", naming_convention=SQLITE_NAMES) as b:
        b.add_column(sa.Column("parent_sample_id", sa.String(length=32), nullable=True))
        b.create_foreign_key(FK, "samples", ["parent_sample_id"], ["id"], ondelete="SET NULL")
        b.create_index(INDEX, ["parent_sample_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("samples", naming_convention=SQLITE_NAMES) as b:
        b.drop_index(INDEX)
        b.drop_constraint(FK, type_="foreignkey")
        b.drop_column("parent_sample_id")
