from ..extensions import db
from .base import TenantMixin, utcnow


class Task(TenantMixin, db.Model):
    id = db.Column(db.Integer, primary_key=True)
    # unique: stage 3 can never create two tasks for one idea, even after a crash.
    idea_id = db.Column(db.Integer, db.ForeignKey("content_idea.id", ondelete="CASCADE"), nullable=False, unique=True)
    title = db.Column(db.String(255), nullable=False)
    status = db.Column(db.String(16), nullable=False, default="queued")  # queued | completed
    created_at = db.Column(db.DateTime, nullable=False, default=utcnow)
    idea = db.relationship("ContentIdea")
    __table_args__ = (db.Index("ix_task_site_status", "site_id", "status", "id"),)


class Content(TenantMixin, db.Model):
    id = db.Column(db.Integer, primary_key=True)
    task_id = db.Column(db.Integer, db.ForeignKey("task.id", ondelete="CASCADE"), nullable=False, unique=True)
    title = db.Column(db.String(255), nullable=False)
    body = db.Column(db.Text, nullable=False)
    word_count = db.Column(db.Integer, nullable=False, default=0)
    status = db.Column(db.String(16), nullable=False, default="draft")  # draft | review | approved | rejected
    prompts_generated = db.Column(db.Boolean, nullable=False, default=False)
    created_at = db.Column(db.DateTime, nullable=False, default=utcnow)
    # The review decision (webapp/writer/review.py): who, when, and the note (required to reject).
    review_note = db.Column(db.Text)
    reviewed_by = db.Column(db.String(255))
    reviewed_at = db.Column(db.DateTime)
    # Reject and rewrite: each rewrite keeps the earlier text and its review here, newest last.
    version = db.Column(db.Integer, nullable=False, default=1, server_default="1")
    previous_versions = db.Column(db.JSON)
    task = db.relationship("Task")
    images = db.relationship("Image", backref="content", order_by="Image.position")
    __table_args__ = (
        db.Index("ix_content_site_status_prompts", "site_id", "status", "prompts_generated", "id"),
    )


class Image(TenantMixin, db.Model):
    id = db.Column(db.Integer, primary_key=True)
    content_id = db.Column(db.Integer, db.ForeignKey("content.id", ondelete="CASCADE"), nullable=False)
    position = db.Column(db.Integer, nullable=False, default=0)  # 0 = featured
    kind = db.Column(db.String(16), nullable=False, default="in_article")  # featured | in_article
    prompt = db.Column(db.Text, nullable=False)
    file_path = db.Column(db.String(255))  # relative to MEDIA_DIR, built from ids only
    status = db.Column(db.String(16), nullable=False, default="pending")  # pending | generated
    created_at = db.Column(db.DateTime, nullable=False, default=utcnow)
    __table_args__ = (
        db.UniqueConstraint("content_id", "position", name="uq_image_content_position"),
        db.Index("ix_image_site_status", "site_id", "status", "id"),
    )
