"""retention: when a run's log and images were deleted from the store

Revision ID: storw30001
Revises: credw30001
Create Date: 2026-12-01 21:40:00

"""
from alembic import op
import sqlalchemy as sa


revision = 'storw30001'
down_revision = 'credw30001'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('automation_run', schema=None) as batch_op:
        batch_op.add_column(sa.Column('files_pruned_at', sa.DateTime(), nullable=True))


def downgrade():
    with op.batch_alter_table('automation_run', schema=None) as batch_op:
        batch_op.drop_column('files_pruned_at')
