"""statuses enforced by the database: jobs, deployments, deployment_replicas, exports

Revision ID: 0010
Revises: 0009

Postgres gets CHECK constraints. SQLite cannot add one to an existing table without rebuilding
it, and rebuilding `jobs` (dropping the old table) with foreign keys on would cascade-delete every
event and checkpoint, so SQLite gets BEFORE INSERT/UPDATE triggers that refuse the same values.
The lists are this revision's snapshot of the status enums in service/contracts/schema.py;
tests/integration/test_status_constraints.py fails when an enum gains a value no migration allows.
"""

from alembic import op


revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None

STATUSES = {
    'jobs': ('validating_files', 'queued', 'running', 'paused', 'succeeded', 'failed', 'cancelled'),
    'deployments': ('pending', 'loading', 'loaded', 'failed', 'unloaded'),
    'deployment_replicas': ('pending', 'loading', 'loaded', 'failed', 'unloaded'),
    'exports': ('queued', 'running', 'succeeded', 'failed'),
}


def _allowed(values: tuple[str, ...]) -> str:
    return ', '.join(f"'{v}'" for v in values)


def upgrade() -> None:
    sqlite = op.get_bind().dialect.name == 'sqlite'
    for table, values in STATUSES.items():
        if not sqlite:
            op.execute(f"ALTER TABLE {table} ADD CONSTRAINT ck_{table}_status CHECK (status IN ({_allowed(values)}))")
            continue
        for when in ('INSERT', 'UPDATE OF status'):
            name = f"ck_{table}_status_{when.split()[0].lower()}"
            op.execute(f"CREATE TRIGGER {name} BEFORE {when} ON {table} "
                       f"WHEN NEW.status NOT IN ({_allowed(values)}) "
                       f"BEGIN SELECT RAISE(ABORT, 'ck_{table}_status: not a {table} status'); END")


def downgrade() -> None:
    sqlite = op.get_bind().dialect.name == 'sqlite'
    for table in STATUSES:
        if not sqlite:
            op.execute(f"ALTER TABLE {table} DROP CONSTRAINT ck_{table}_status")
            continue
        for kind in ('insert', 'update'):
            op.execute(f"DROP TRIGGER ck_{table}_status_{kind}")
