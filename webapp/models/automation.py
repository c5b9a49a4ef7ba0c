from sqlalchemy import text

from ..extensions import db
from .base import TenantMixin, iso, utcnow

ACTIVE_STATUSES = ("queued", "running", "paused")  # queued: waiting for a slot of its account's limit
FINISHED_STATUSES = ("completed", "failed", "cancelled")
STAGE_COUNT = 7
# A queued run holds its site like a running one (one active run per site, SPEC §3).
_ACTIVE_SQL = text("status IN ('queued', 'running', 'paused')")


class AutomationConfig(TenantMixin, db.Model):
    __tablename__ = "automation_config"
    id = db.Column(db.Integer, primary_key=True)
    site_id = db.Column(db.Integer, db.ForeignKey("site.id", ondelete="CASCADE"), nullable=False, unique=True)
    is_enabled = db.Column(db.Boolean, nullable=False, default=False)
    frequency = db.Column(db.String(16), nullable=False, default="daily")
    scheduled_time = db.Column(db.String(5), nullable=False, default="02:00")
    scheduled_day = db.Column(db.Integer)  # weekly: 0=Mon..6; monthly: 1..31; None = from enable date
    stage_1_batch_size = db.Column(db.Integer, nullable=False, default=20)
    stage_2_batch_size = db.Column(db.Integer, nullable=False, default=5)
    stage_3_batch_size = db.Column(db.Integer, nullable=False, default=20)
    stage_4_batch_size = db.Column(db.Integer, nullable=False, default=5)
    stage_5_batch_size = db.Column(db.Integer, nullable=False, default=10)
    stage_6_batch_size = db.Column(db.Integer, nullable=False, default=10)
    within_stage_delay = db.Column(db.Integer, nullable=False, default=3)
    between_stage_delay = db.Column(db.Integer, nullable=False, default=5)
    # AI calls of the current stage in flight at once for this site's runs (1-32).
    ai_concurrency = db.Column(db.Integer, nullable=False, default=4, server_default="4")
    last_run_at = db.Column(db.DateTime)
    next_run_at = db.Column(db.DateTime)
    updated_at = db.Column(db.DateTime, nullable=False, default=utcnow, onupdate=utcnow)
    # The scheduler's one query: enabled configs due now.
    __table_args__ = (db.Index("ix_config_enabled_next", "is_enabled", "next_run_at"),)

    def batch_size(self, stage):
        return getattr(self, f"stage_{stage}_batch_size", None) or 1

    def to_dict(self):
        d = {"site_id": self.site_id, "is_enabled": self.is_enabled, "frequency": self.frequency,
             "scheduled_time": self.scheduled_time, "scheduled_day": self.scheduled_day}
        for n in range(1, 7):
            d[f"stage_{n}_batch_size"] = getattr(self, f"stage_{n}_batch_size")
        d.update(within_stage_delay=self.within_stage_delay, between_stage_delay=self.between_stage_delay,
                 ai_concurrency=self.ai_concurrency,
                 last_run_at=iso(self.last_run_at), next_run_at=iso(self.next_run_at))
        return d


class AutomationRun(TenantMixin, db.Model):
    __tablename__ = "automation_run"
    id = db.Column(db.Integer, primary_key=True)
    status = db.Column(db.String(16), nullable=False, default="running")
    trigger_type = db.Column(db.String(16), nullable=False, default="manual")  # manual | scheduled | api | retry
    current_stage = db.Column(db.Integer, nullable=False, default=1)
    started_at = db.Column(db.DateTime, nullable=False, default=utcnow)
    paused_at = db.Column(db.DateTime)
    resumed_at = db.Column(db.DateTime)
    cancelled_at = db.Column(db.DateTime)
    completed_at = db.Column(db.DateTime)
    ended_at = db.Column(db.DateTime)  # set when the run completes, fails or is cancelled
    total_credits_used = db.Column(db.Integer, nullable=False, default=0)
    # Credits reserved when the run started (1.2 x estimate). What is still held is
    # max(0, credits_hold - total_credits_used) while the run is active, 0 once it ended:
    # derived, so every way a run can end releases its hold (see billing.held_credits).
    credits_hold = db.Column(db.Integer, nullable=False, default=0, server_default="0")
    stage_1_result = db.Column(db.JSON)
    stage_2_result = db.Column(db.JSON)
    stage_3_result = db.Column(db.JSON)
    stage_4_result = db.Column(db.JSON)
    stage_5_result = db.Column(db.JSON)
    stage_6_result = db.Column(db.JSON)
    stage_7_result = db.Column(db.JSON)
    error_message = db.Column(db.Text)
    pause_reason = db.Column(db.String(255))
    heartbeat_at = db.Column(db.DateTime)
    recovery_attempts = db.Column(db.Integer, nullable=False, default=0)
    started_by = db.Column(db.String(255))
    # The chain of RQ jobs allowed to work on this run; a resume or a recovery issues a new
    # token, so any older job still queued exits instead of forking a second chain.
    job_token = db.Column(db.String(32))
    # A retry run (trigger_type "retry") processes only this run's failed items (see scope.py).
    retry_of_run_id = db.Column(db.Integer, db.ForeignKey("automation_run.id", ondelete="SET NULL"))
    # A run beyond its account's limit waits as `queued` (holding its site and its credits);
    # the queue is ordered by this time (webapp/automation/fairness.py).
    queued_at = db.Column(db.DateTime)
    # When retention deleted the run's log and images from the store (webapp/automation/retention.py).
    files_pruned_at = db.Column(db.DateTime)
    __table_args__ = (
        # At most one active run per site, enforced by the database (SPEC §3).
        db.Index("uq_run_one_active_per_site", "site_id", unique=True,
                 sqlite_where=_ACTIVE_SQL, postgresql_where=_ACTIVE_SQL),
        db.Index("ix_run_site_started", "site_id", "id"),
        db.Index("ix_run_status_heartbeat", "status", "heartbeat_at"),
        db.Index("ix_run_account_status", "account_id", "status"),
    )

    @property
    def is_active(self):
        return self.status in ACTIVE_STATUSES

    def stage_result(self, n):
        return getattr(self, f"stage_{n}_result")

    def summary(self):
        return {"run_id": self.id, "status": self.status, "trigger_type": self.trigger_type,
                "current_stage": self.current_stage, "started_at": iso(self.started_at),
                "completed_at": iso(self.completed_at), "ended_at": iso(self.ended_at),
                "total_credits_used": self.total_credits_used}

    def to_dict(self):
        d = self.summary()
        d.update(paused_at=iso(self.paused_at), resumed_at=iso(self.resumed_at),
                 cancelled_at=iso(self.cancelled_at), error_message=self.error_message,
                 pause_reason=self.pause_reason, started_by=self.started_by, site_id=self.site_id)
        for n in range(1, STAGE_COUNT + 1):
            d[f"stage_{n}_result"] = self.stage_result(n)
        return d


class AITaskLog(TenantMixin, db.Model):
    """One row per AI call; written in the same transaction as its output and its debit."""
    __tablename__ = "ai_task_log"
    id = db.Column(db.Integer, primary_key=True)
    run_id = db.Column(db.Integer, db.ForeignKey("automation_run.id", ondelete="SET NULL"), index=True)
    stage = db.Column(db.Integer, nullable=False)
    function = db.Column(db.String(64), nullable=False)
    item_type = db.Column(db.String(32), nullable=False)
    item_id = db.Column(db.Integer, nullable=False)
    credits = db.Column(db.Integer, nullable=False)
    tokens = db.Column(db.Integer, nullable=False, default=0)
    model = db.Column(db.String(64), nullable=False)
    created_at = db.Column(db.DateTime, nullable=False, default=utcnow)
    # The same item can never be charged twice for the same function in one run.
    __table_args__ = (db.UniqueConstraint("run_id", "function", "item_id", name="uq_ai_log_run_function_item"),
                      # The cost report: one account's month, every grouping covered (budgw30001).
                      db.Index("ix_ai_log_account_time", "account_id", "created_at", "site_id", "stage", "model",
                               "run_id", "credits", "tokens"))


class CreditTransaction(db.Model):
    __tablename__ = "credit_transaction"
    id = db.Column(db.Integer, primary_key=True)
    account_id = db.Column(db.Integer, db.ForeignKey("account.id", ondelete="CASCADE"), nullable=False, index=True)
    amount = db.Column(db.Integer, nullable=False)  # negative = debit
    balance_after = db.Column(db.Integer, nullable=False)
    reason = db.Column(db.String(255), nullable=False)
    run_id = db.Column(db.Integer, db.ForeignKey("automation_run.id", ondelete="SET NULL"), index=True)
    ai_task_log_id = db.Column(db.Integer, db.ForeignKey("ai_task_log.id", ondelete="SET NULL"), unique=True)
    created_at = db.Column(db.DateTime, nullable=False, default=utcnow)
    # Lets one flush insert the AI log row and its ledger row in order (no flush for the id).
    ai_task_log = db.relationship("AITaskLog", lazy="select")
    __table_args__ = (db.Index("ix_credit_tx_account_time", "account_id", "created_at", "amount", "ai_task_log_id"),)


class RunEvent(TenantMixin, db.Model):
    """Audit trail: who started/paused/resumed/cancelled a run, when and why."""
    __tablename__ = "run_event"
    id = db.Column(db.Integer, primary_key=True)
    run_id = db.Column(db.Integer, db.ForeignKey("automation_run.id", ondelete="CASCADE"), index=True)
    action = db.Column(db.String(32), nullable=False)
    actor = db.Column(db.String(255), nullable=False)  # "user:a@b", "token:3", "scheduler", "system"
    reason = db.Column(db.String(500))
    created_at = db.Column(db.DateTime, nullable=False, default=utcnow)

    def to_dict(self):
        return {"action": self.action, "actor": self.actor, "reason": self.reason, "at": iso(self.created_at)}


class RunItemFailure(TenantMixin, db.Model):
    """An item that failed after its retries in a run: excluded from that run's pending set."""
    __tablename__ = "run_item_failure"
    id = db.Column(db.Integer, primary_key=True)
    run_id = db.Column(db.Integer, db.ForeignKey("automation_run.id", ondelete="CASCADE"), nullable=False)
    stage = db.Column(db.Integer, nullable=False)
    item_id = db.Column(db.Integer, nullable=False)
    reason = db.Column(db.Text, nullable=False)
    attempts = db.Column(db.Integer, nullable=False, default=1, server_default="3")
    created_at = db.Column(db.DateTime, nullable=False, default=utcnow)
    __table_args__ = (db.UniqueConstraint("run_id", "stage", "item_id", name="uq_failure_run_stage_item"),)
