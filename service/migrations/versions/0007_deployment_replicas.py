"""deployment_replicas: each serving replica's own state of a deployment

Revision ID: 0007
Revises: 0006
"""

from alembic import op
import sqlalchemy as sa


revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'deployment_replicas',
        sa.Column('name', sa.String(length=256), nullable=False),
        sa.Column('replica', sa.String(length=256), nullable=False),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('error', sa.Text(), nullable=True),
        sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['name'], ['deployments.name'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('name', 'replica'),
    )


def downgrade() -> None:
    op.drop_table('deployment_replicas')
