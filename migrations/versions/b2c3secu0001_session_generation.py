"""user.session_generation: logout, a password change or `logout-user` ends every session

Revision ID: b2c3secu0001
Revises: 98a3925e0f6f
Create Date: 2026-11-28 21:20:00

"""
from alembic import op
import sqlalchemy as sa


revision = 'b2c3secu0001'
down_revision = '98a3925e0f6f'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('user', schema=None) as batch_op:
        batch_op.add_column(sa.Column('session_generation', sa.Integer(), nullable=False, server_default='0'))


def downgrade():
    with op.batch_alter_table('user', schema=None) as batch_op:
        batch_op.drop_column('session_generation')
