"""shared base models and LoRA adapters

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04 18:40:00

`models.visibility` ("private" for every existing model), `models.base_model_id` and
`models.adapter` (an adapter model's base and LoRA options) and `corpora.base_model_id` (a corpus
tokenized with another model's tokenizer). All additive: no existing row changes meaning.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("models") as b:
        b.add_column(
            sa.Column("visibility", sa.String(length=16), nullable=False, server_default="private")
        )
        b.add_column(sa.Column("base_model_id", sa.String(length=32), nullable=True))
        b.add_column(sa.Column("adapter", sa.JSON(), nullable=True))
        b.create_index("ix_models_base_model_id", ["base_model_id"])
    with op.batch_alter_table("corpora") as b:
        b.add_column(sa.Column("base_model_id", sa.String(length=32), nullable=True))


def downgrade() -> None:
    adapters = (
        op.get_bind()
        .execute(sa.text("SELECT count(*) FROM models WHERE adapter IS NOT NULL"))
        .scalar_one()
    )
    if adapters:
        raise RuntimeError(
            f"{adapters} adapter models exist; 0005 cannot hold them (delete them, or stay on 0006)"
        )
    with op.batch_alter_table("corpora") as b:
        b.drop_column("base_model_id")
    with op.batch_alter_table("models") as b:
        b.drop_index("ix_models_base_model_id")
        b.drop_column("adapter")
        b.drop_column("base_model_id")
        b.drop_column("visibility")
