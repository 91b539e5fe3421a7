"""jobs.eval and jobs.base_eval_score: a job's graded evaluation (grader and items) and the score
of the model it started from

Revision ID: 0012
Revises: 0011
"""

from alembic import op
import sqlalchemy as sa


revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('jobs') as batch:
        batch.add_column(sa.Column('eval', sa.JSON(), nullable=True))
        batch.add_column(sa.Column('base_eval_score', sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('jobs') as batch:
        batch.drop_column('base_eval_score')
        batch.drop_column('eval')
