"""budgets and the cost report: monthly spend counters, budget alerts (once per threshold),
indexes for the cost report and the month's ledger

Revision ID: budgw30001
Revises: storw30001
Create Date: 2026-12-01 21:40:00

"""
from datetime import datetime, timezone

from alembic import op
import sqlalchemy as sa


revision = 'budgw30001'
down_revision = 'storw30001'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        'monthly_spend',
        sa.Column('account_id', sa.Integer(), sa.ForeignKey('account.id', ondelete='CASCADE'), nullable=False),
        sa.Column('site_id', sa.Integer(), nullable=False),
        sa.Column('month', sa.String(length=7), nullable=False),
        sa.Column('credits', sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint('account_id', 'site_id', 'month'),
    )
    op.create_table(
        'budget_alert',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('account_id', sa.Integer(), sa.ForeignKey('account.id', ondelete='CASCADE'), nullable=False),
        sa.Column('site_id', sa.Integer(), nullable=False),
        sa.Column('month', sa.String(length=7), nullable=False),
        sa.Column('threshold', sa.Integer(), nullable=False),
        sa.Column('spent', sa.Integer(), nullable=False),
        sa.Column('budget', sa.Integer(), nullable=False),
        sa.Column('trigger_site_id', sa.Integer(), nullable=True),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.Column('dispatched_at', sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('account_id', 'site_id', 'month', 'threshold', name='uq_budget_alert_once'),
    )
    # The cost report reads one account's month of AI calls: this index covers every grouping
    # (site, stage, model, day, run) without touching the table.
    op.create_index('ix_ai_log_account_time', 'ai_task_log',
                    ['account_id', 'created_at', 'site_id', 'stage', 'model', 'run_id', 'credits', 'tokens'])
    # A month of the ledger (spent_this_month, the report's balance change, debits whose AI log
    # went with a deleted site).
    op.create_index('ix_credit_tx_account_time', 'credit_transaction',
                    ['account_id', 'created_at', 'amount', 'ai_task_log_id'])
    _backfill_this_month()


def _backfill_this_month():
    """Counters for the current month from the ledger, so budgets set right after the upgrade
    see what was already spent (earlier months are history: the report reads the ledger)."""
    bind = op.get_bind()
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    start = datetime(now.year, now.month, 1)
    month = f"{now.year:04d}-{now.month:02d}"
    rows = bind.execute(sa.text(
        "SELECT account_id, site_id, SUM(credits) FROM ai_task_log WHERE created_at >= :start "
        "GROUP BY account_id, site_id"), {"start": start}).all()
    per_account = {}
    values = []
    for account_id, site_id, credits in rows:
        per_account[account_id] = per_account.get(account_id, 0) + int(credits or 0)
        values.append({"a": account_id, "s": site_id, "m": month, "c": int(credits or 0)})
    values += [{"a": a, "s": 0, "m": month, "c": c} for a, c in per_account.items()]
    if values:
        bind.execute(sa.text("INSERT INTO monthly_spend (account_id, site_id, month, credits) "
                             "VALUES (:a, :s, :m, :c)"), values)


def downgrade():
    op.drop_index('ix_credit_tx_account_time', table_name='credit_transaction')
    op.drop_index('ix_ai_log_account_time', table_name='ai_task_log')
    op.drop_table('budget_alert')
    op.drop_table('monthly_spend')
