"""run insights: attempts per failed item, retry runs point at the run they retry

Revision ID: f6a7insi0001
Revises: b2c3secu0001
Create Date: 2026-11-28 21:30:00

"""
from alembic import op
import sqlalchemy as sa


revision = 'f6a7insi0001'
down_revision = 'b2c3secu0001'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('run_item_failure', schema=None) as batch_op:
        # Rows written before this column existed were recorded after the default 3 tries.
        batch_op.add_column(sa.Column('attempts', sa.Integer(), nullable=False, server_default='3'))
    with op.batch_alter_table('automation_run', schema=None) as batch_op:
        batch_op.add_column(sa.Column('retry_of_run_id', sa.Integer(), nullable=True))
        batch_op.create_foreign_key(batch_op.f('fk_automation_run_retry_of_run_id_automation_run'),
                                    'automation_run', ['retry_of_run_id'], ['id'], ondelete='SET NULL')


def downgrade():
    with op.batch_alter_table('automation_run', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('fk_automation_run_retry_of_run_id_automation_run'), type_='foreignkey')
        batch_op.drop_column('retry_of_run_id')
    with op.batch_alter_table('run_item_failure', schema=None) as batch_op:
        batch_op.drop_column('attempts')
