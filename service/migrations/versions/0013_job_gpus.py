"""jobs.gpus and jobs.devices: the devices a job asks to train on (a count, or "auto"), one
data-parallel rank each, and how many its latest attempt took

Revision ID: 0013
Revises: 0012
"""

from alembic import op
import sqlalchemy as sa


revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('jobs') as batch:
        batch.add_column(sa.Column('gpus', sa.String(length=8), nullable=False, server_default='1'))
        batch.add_column(sa.Column('devices', sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('jobs') as batch:
        batch.drop_column('devices')
        batch.drop_column('gpus')
