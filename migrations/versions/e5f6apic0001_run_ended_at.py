"""automation_run.ended_at: when a run completed, failed or was cancelled

Revision ID: e5f6apic0001
Revises: c3d4engi0001
Create Date: 2026-11-28 21:50:00

"""
from alembic import op
import sqlalchemy as sa


revision = 'e5f6apic0001'
down_revision = 'c3d4engi0001'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('automation_run', schema=None) as batch_op:
        batch_op.add_column(sa.Column('ended_at', sa.DateTime(), nullable=True))
    # Runs that ended before this column: their best known end (cancelled runs had none).
    op.execute("UPDATE automation_run SET ended_at = COALESCE(cancelled_at, completed_at, heartbeat_at, started_at) "
               "WHERE status IN ('completed', 'failed', 'cancelled')")


def downgrade():
    with op.batch_alter_table('automation_run', schema=None) as batch_op:
        batch_op.drop_column('ended_at')
