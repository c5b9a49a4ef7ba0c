"""ai_concurrency per site config; credits held by a run from its start

Revision ID: c3d4engi0001
Revises: c9d0team0001
Create Date: 2026-11-28 21:30:00

"""
from alembic import op
import sqlalchemy as sa


revision = 'c3d4engi0001'
down_revision = 'c9d0team0001'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('automation_config', schema=None) as batch_op:
        batch_op.add_column(sa.Column('ai_concurrency', sa.Integer(), nullable=False, server_default='4'))
    with op.batch_alter_table('automation_run', schema=None) as batch_op:
        batch_op.add_column(sa.Column('credits_hold', sa.Integer(), nullable=False, server_default='0'))
        # The start's hold check sums an account's active runs.
        batch_op.create_index('ix_run_account_status', ['account_id', 'status'], unique=False)


def downgrade():
    with op.batch_alter_table('automation_run', schema=None) as batch_op:
        batch_op.drop_index('ix_run_account_status')
        batch_op.drop_column('credits_hold')
    with op.batch_alter_table('automation_config', schema=None) as batch_op:
        batch_op.drop_column('ai_concurrency')
