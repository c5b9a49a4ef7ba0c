"""incremental ideas (keyword.ideas_generated), article versions (content.version, previous_versions)

Revision ID: credw30001
Revises: webaw30001
Create Date: 2026-12-01 21:30:00

"""
from alembic import op
import sqlalchemy as sa


revision = 'credw30001'
down_revision = 'webaw30001'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('keyword', schema=None) as batch_op:
        batch_op.add_column(sa.Column('ideas_generated', sa.Boolean(), nullable=False, server_default=sa.false()))
    with op.batch_alter_table('content', schema=None) as batch_op:
        batch_op.add_column(sa.Column('version', sa.Integer(), nullable=False, server_default='1'))
        batch_op.add_column(sa.Column('previous_versions', sa.JSON(), nullable=True))
    # A keyword is covered when an idea of its cluster was written after it existed; the
    # keywords that joined a cluster after its ideas (the bug this fixes) stay uncovered and
    # their clusters become pending at stage 2 again, so the next run writes about them.
    op.execute(sa.text(
        "UPDATE keyword SET ideas_generated = :t WHERE cluster_id IS NOT NULL AND EXISTS ("
        "SELECT 1 FROM content_idea i WHERE i.cluster_id = keyword.cluster_id AND i.created_at >= keyword.created_at)"
    ).bindparams(t=True))
    op.execute(sa.text(
        "UPDATE cluster SET ideas_generated = :f WHERE ideas_generated = :t AND EXISTS ("
        "SELECT 1 FROM keyword k WHERE k.cluster_id = cluster.id AND k.ideas_generated = :f)"
    ).bindparams(t=True, f=False))
    op.create_index('ix_keyword_cluster_ideas', 'keyword', ['cluster_id', 'ideas_generated'])


def downgrade():
    op.drop_index('ix_keyword_cluster_ideas', table_name='keyword')
    with op.batch_alter_table('content', schema=None) as batch_op:
        batch_op.drop_column('previous_versions')
        batch_op.drop_column('version')
    with op.batch_alter_table('keyword', schema=None) as batch_op:
        batch_op.drop_column('ideas_generated')
