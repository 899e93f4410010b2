"""a corpus outlives its dataset

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04 12:40:00

`corpora.dataset_id` becomes nullable with ON DELETE SET NULL (it was NOT NULL with ON DELETE
CASCADE): a corpus holds its own tokenizer and token arrays, so deleting the dataset it was
made from no longer deletes the corpus, and with it every model trained on it.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# PostgreSQL's name for the constraint 0001 created without one; on SQLite the constraint has
# no name, and this naming convention lets batch mode find it by its columns.
FK = "corpora_dataset_id_fkey"
SQLITE_NAMES = {"fk": "corpora_%(column_0_name)s_fkey"}


def _replace_fk(*, nullable: bool, ondelete: str) -> None:
    if op.get_bind().dialect.name == "sqlite":
        with op.batch_alter_table("corpora", naming_convention=SQLITE_NAMES) as b:
            b.drop_constraint(FK, type_="foreignkey")
            b.alter_column("dataset_id", existing_type=sa.String(length=32), nullable=nullable)
            b.create_foreign_key(FK, "datasets", ["dataset_id"], ["id"], ondelete=ondelete)
        return
    op.drop_constraint(FK, "corpora", type_="foreignkey")
    op.alter_column("corpora", "dataset_id", existing_type=sa.String(length=32), nullable=nullable)
    op.create_foreign_key(FK, "corpora", "datasets", ["dataset_id"], ["id"], ondelete=ondelete)


def upgrade() -> None:
    _replace_fk(nullable=True, ondelete="SET NULL")


def downgrade() -> None:
    corpora = sa.table("corpora", sa.column("dataset_id"))
    orphans = (
        op.get_bind()
        .execute(
            sa.select(sa.func.count()).select_from(corpora).where(corpora.c.dataset_id.is_(None))
        )
        .scalar_one()
    )
    if orphans:
        raise RuntimeError(
            f"{orphans} corpora outlived their datasets; 0003 cannot hold them "
            "(delete them, or stay on 0004)"
        )
    _replace_fk(nullable=False, ondelete="CASCADE")
