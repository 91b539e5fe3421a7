"""continued training (the parent model and lineage of a job), duration estimates (the
estimate on each job, and the throughput table runners calibrate it from), and the training
method (supervised or dpo)

Revision ID: 0005
Revises: 0004
"""

from alembic import op
import sqlalchemy as sa


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('continued_from', sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column('estimate', sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column('method', sa.JSON(), nullable=True))
    op.create_table(
        'throughput',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('device', sa.String(length=128), nullable=False),
        sa.Column('shape', sa.String(length=128), nullable=False),
        sa.Column('backend', sa.String(length=32), nullable=False),
        sa.Column('available_bytes', sa.BigInteger(), nullable=True),
        sa.Column('job_id', sa.String(length=40), nullable=False),
        sa.Column('tokens', sa.BigInteger(), nullable=False),
        sa.Column('train_seconds', sa.Float(), nullable=False),
        sa.Column('startup_seconds', sa.Float(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_throughput_shape_device', 'throughput', ['shape', 'device', 'created_at'])


def downgrade() -> None:
    op.drop_index('ix_throughput_shape_device', table_name='throughput')
    op.drop_table('throughput')
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_column('method')
        batch_op.drop_column('estimate')
        batch_op.drop_column('continued_from')
