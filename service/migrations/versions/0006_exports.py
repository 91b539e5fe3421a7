"""exports: a job's adapter merged into its base (16-bit safetensors) or converted to GGUF

Revision ID: 0006
Revises: 0005
"""

from alembic import op
import sqlalchemy as sa


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'exports',
        sa.Column('id', sa.String(length=40), nullable=False),
        sa.Column('tenant', sa.String(length=128), nullable=False),
        sa.Column('job_id', sa.String(length=40), nullable=False),
        sa.Column('model', sa.String(length=256), nullable=False),
        sa.Column('format', sa.String(length=32), nullable=False),
        sa.Column('checkpoint', sa.Integer(), nullable=True),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('stage', sa.String(length=32), nullable=True),
        sa.Column('attempt', sa.Integer(), nullable=False),
        sa.Column('lease_owner', sa.String(length=128), nullable=True),
        sa.Column('lease_expires_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('bucket', sa.String(length=255), nullable=True),
        sa.Column('key', sa.String(length=1024), nullable=True),
        sa.Column('filename', sa.String(length=256), nullable=True),
        sa.Column('bytes', sa.BigInteger(), nullable=True),
        sa.Column('sha256', sa.String(length=64), nullable=True),
        sa.Column('seconds', sa.Float(), nullable=True),
        sa.Column('modelfile', sa.Text(), nullable=True),
        sa.Column('checks', sa.JSON(), nullable=True),
        sa.Column('error', sa.JSON(), nullable=True),
        sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_exports_job_id', 'exports', ['job_id'])
    op.create_index('ix_exports_status_created', 'exports', ['status', 'created_at'])


def downgrade() -> None:
    op.drop_index('ix_exports_status_created', table_name='exports')
    op.drop_index('ix_exports_job_id', table_name='exports')
    op.drop_table('exports')
