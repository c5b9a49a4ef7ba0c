"""The data model of SPEC §3. Every tenant row carries account_id (and site_id)."""
from .accounts import Account, ApiToken, AuditEntry, User  # noqa: F401
from .sites import Site  # noqa: F401
from .planner import Cluster, ContentIdea, Keyword, KeywordImport  # noqa: F401
from .writer import Content, Image, Task  # noqa: F401
from .automation import (  # noqa: F401
    ACTIVE_STATUSES, AITaskLog, AutomationConfig, AutomationRun, CreditTransaction,
    RunEvent, RunItemFailure,
)
from .notify import (  # noqa: F401
    MailDelivery, NotificationPreference, Webhook, WebhookAttempt, WebhookDelivery,
)
from .budgets import ACCOUNT_SCOPE, BudgetAlert, MonthlySpend  # noqa: F401
