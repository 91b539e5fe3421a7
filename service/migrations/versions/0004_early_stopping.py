"""early stopping outcome (why a job stopped before its last epoch, which epoch it kept) and
eval samples (each epoch checkpoint's greedy answers to a few prompts)

Revision ID: 0004
Revises: 0003
"""

from alembic import op
import sqlalchemy as sa


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('early_stopping', sa.JSON(), nullable=True))
    with op.batch_alter_table('checkpoints', schema=None) as batch_op:
        batch_op.add_column(sa.Column('samples', sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('checkpoints', schema=None) as batch_op:
        batch_op.drop_column('samples')
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_column('early_stopping')
