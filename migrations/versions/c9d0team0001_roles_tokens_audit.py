"""Roles, invitations, token expiry and scope, the account audit log

Revision ID: c9d0team0001
Revises: a7b8noti0001
Create Date: 2026-11-28 21:30:00

Existing users become owners: in wave 1 every user could do everything, and nobody should
lose access by upgrading.
"""
from alembic import op
import sqlalchemy as sa


revision = 'c9d0team0001'
down_revision = 'a7b8noti0001'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('user', schema=None) as batch_op:
        batch_op.add_column(sa.Column('role', sa.String(length=16), nullable=False, server_default='owner'))
        batch_op.add_column(sa.Column('invite_hash', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('invite_expires_at', sa.DateTime(), nullable=True))
        batch_op.create_unique_constraint('uq_user_invite_hash', ['invite_hash'])
    with op.batch_alter_table('api_token', schema=None) as batch_op:
        batch_op.add_column(sa.Column('expires_at', sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column('scope', sa.String(length=8), nullable=False, server_default='full'))
    op.create_table(
        'audit_entry',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('account_id', sa.Integer(), nullable=False),
        sa.Column('site_id', sa.Integer(), nullable=True),
        sa.Column('run_id', sa.Integer(), nullable=True),
        sa.Column('actor', sa.String(length=255), nullable=False),
        sa.Column('action', sa.String(length=64), nullable=False),
        sa.Column('details', sa.JSON(), nullable=True),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(['account_id'], ['account.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_audit_account_id', 'audit_entry', ['account_id', 'id'])


def downgrade():
    op.drop_index('ix_audit_account_id', table_name='audit_entry')
    op.drop_table('audit_entry')
    with op.batch_alter_table('api_token', schema=None) as batch_op:
        batch_op.drop_column('scope')
        batch_op.drop_column('expires_at')
    with op.batch_alter_table('user', schema=None) as batch_op:
        batch_op.drop_constraint('uq_user_invite_hash', type_='unique')
        batch_op.drop_column('invite_expires_at')
        batch_op.drop_column('invite_hash')
        batch_op.drop_column('role')
