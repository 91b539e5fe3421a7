"""resume points (the latest mid-epoch checkpoint a job can resume from) and pause requests

Revision ID: 0003
Revises: 0002
"""

from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('resume_point', sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column('pause_requested', sa.Boolean(), nullable=False,
                                      server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_column('pause_requested')
        batch_op.drop_column('resume_point')
