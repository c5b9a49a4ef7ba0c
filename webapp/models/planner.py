from ..extensions import db
from .base import TenantMixin, utcnow


class Keyword(TenantMixin, db.Model):
    id = db.Column(db.Integer, primary_key=True)
    keyword = db.Column(db.String(255), nullable=False)
    volume = db.Column(db.Integer)
    difficulty = db.Column(db.Integer)
    cluster_id = db.Column(db.Integer, db.ForeignKey("cluster.id", ondelete="SET NULL"))
    # True once an idea was generated for this keyword (stage 2): a keyword that joins a
    # cluster whose ideas exist makes that cluster pending again, for this keyword only.
    ideas_generated = db.Column(db.Boolean, nullable=False, default=False, server_default=db.false())
    created_at = db.Column(db.DateTime, nullable=False, default=utcnow)
    __table_args__ = (
        db.UniqueConstraint("site_id", "keyword", name="uq_keyword_site_keyword"),
        # Stage 1 pending = (site, cluster_id IS NULL): one index answers it at 1M rows.
        db.Index("ix_keyword_site_cluster", "site_id", "cluster_id", "id"),
        db.Index("ix_keyword_cluster_ideas", "cluster_id", "ideas_generated"),
    )


class Cluster(TenantMixin, db.Model):
    id = db.Column(db.Integer, primary_key=True)
    name = db.Column(db.String(255), nullable=False)
    terms = db.Column(db.String(255), nullable=False, default="")  # space-separated key terms
    # False while any of its keywords has no idea yet (stage 2 pending).
    ideas_generated = db.Column(db.Boolean, nullable=False, default=False)
    created_at = db.Column(db.DateTime, nullable=False, default=utcnow)
    keywords = db.relationship(Keyword, backref="cluster", order_by=Keyword.id)
    __table_args__ = (
        db.UniqueConstraint("site_id", "name", name="uq_cluster_site_name"),
        db.Index("ix_cluster_site_ideas", "site_id", "ideas_generated", "id"),
    )


class ContentIdea(TenantMixin, db.Model):
    __tablename__ = "content_idea"
    id = db.Column(db.Integer, primary_key=True)
    cluster_id = db.Column(db.Integer, db.ForeignKey("cluster.id", ondelete="CASCADE"), nullable=False, index=True)
    title = db.Column(db.String(255), nullable=False)
    outline = db.Column(db.Text, nullable=False, default="")
    keywords = db.Column(db.Text, nullable=False, default="")  # comma-separated target keywords
    status = db.Column(db.String(16), nullable=False, default="new")  # new | queued
    created_at = db.Column(db.DateTime, nullable=False, default=utcnow)
    cluster = db.relationship(Cluster)
    __table_args__ = (
        db.UniqueConstraint("cluster_id", "title", name="uq_idea_cluster_title"),
        db.Index("ix_idea_site_status", "site_id", "status", "id"),
    )


class KeywordImport(TenantMixin, db.Model):
    """A keyword import too big to run inside a web request (webapp/imports.py): queued,
    running, completed or failed, with its progress (`done` of `total` rows)."""
    __tablename__ = "keyword_import"
    id = db.Column(db.Integer, primary_key=True)
    status = db.Column(db.String(16), nullable=False, default="queued")  # queued | running | completed | failed
    total = db.Column(db.Integer, nullable=False, default=0)
    done = db.Column(db.Integer, nullable=False, default=0)
    created = db.Column(db.Integer, nullable=False, default=0)
    duplicates = db.Column(db.Integer, nullable=False, default=0)
    invalid = db.Column(db.Integer, nullable=False, default=0)
    errors = db.Column(db.Text, nullable=False, default="[]")  # JSON: the first row errors
    error = db.Column(db.Text)  # why it failed
    created_by = db.Column(db.String(255), nullable=False, default="system")
    created_at = db.Column(db.DateTime, nullable=False, default=utcnow)
    updated_at = db.Column(db.DateTime, nullable=False, default=utcnow)
    finished_at = db.Column(db.DateTime)
    __table_args__ = (db.Index("ix_keyword_import_site_status", "site_id", "status"),)
