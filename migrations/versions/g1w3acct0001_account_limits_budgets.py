"""wave 3 foundation: account limits and weight, monthly budgets, queued runs

Revision ID: g1w3acct0001
Revises: e5f6apic0001
Create Date: 2026-12-01 21:20:00

"""
from alembic import op
import sqlalchemy as sa


revision = 'g1w3acct0001'
down_revision = 'e5f6apic0001'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('account', schema=None) as batch_op:
        batch_op.add_column(sa.Column('max_active_runs', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('max_keywords_per_site', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('weight', sa.Float(), nullable=False, server_default='1'))
        batch_op.add_column(sa.Column('monthly_budget', sa.Integer(), nullable=True))
    with op.batch_alter_table('site', schema=None) as batch_op:
        batch_op.add_column(sa.Column('monthly_budget', sa.Integer(), nullable=True))
    with op.batch_alter_table('automation_run', schema=None) as batch_op:
        batch_op.add_column(sa.Column('queued_at', sa.DateTime(), nullable=True))
    # A queued run holds its site: the one-active-run index covers `queued` too.
    op.drop_index('uq_run_one_active_per_site', table_name='automation_run')
    where = sa.text("status IN ('queued', 'running', 'paused')")
    op.create_index('uq_run_one_active_per_site', 'automation_run', ['site_id'], unique=True,
                    sqlite_where=where, postgresql_where=where)


def downgrade():
    op.drop_index('uq_run_one_active_per_site', table_name='automation_run')
    where = sa.text("status IN ('running', 'paused')")
    op.create_index('uq_run_one_active_per_site', 'automation_run', ['site_id'], unique=True,
                    sqlite_where=where, postgresql_where=where)
    with op.batch_alter_table('automation_run', schema=None) as batch_op:
        batch_op.drop_column('queued_at')
    with op.batch_alter_table('site', schema=None) as batch_op:
        batch_op.drop_column('monthly_budget')
    with op.batch_alter_table('account', schema=None) as batch_op:
        batch_op.drop_column('monthly_budget')
        batch_op.drop_column('weight')
        batch_op.drop_column('max_keywords_per_site')
        batch_op.drop_column('max_active_runs')
