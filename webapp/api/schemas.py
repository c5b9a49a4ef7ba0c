"""Request and response models of the JSON API: one source for validation, the responses and
/api/v1/openapi.json (generated from these models by spectree, see spec.py).

To add a field to a response, add it to its model here: responses are checked against these
models (extra fields are refused), so a field the document does not list cannot be returned.
To add a route, declare it with `spec.endpoint(...)` and give it models from this module.
"""
from datetime import datetime
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, create_model
from pydantic_core import PydanticCustomError

from ..automation.config_schema import ConfigUpdate  # noqa: F401  (the update_config body)
from ..notify.webhooks import WEBHOOK_EVENTS
from ..team import EXPIRY_PATTERN
from ..validation import (DOMAIN_MAX, DOMAIN_PATTERN, EMAIL_MAX, MAX_ID, NAME_MAX, NOTE_MAX, PASSWORD_MAX,
                          REASON_MAX, is_ascii_digits)
from ..writer.review import CONTENT_STATUSES, MAX_BULK

RUN_STATUSES = ("queued", "running", "paused", "completed", "failed", "cancelled")
# Rules the services check with their own messages, stated in the document only (pydantic keeps
# the type and length checks): the service's words reach the caller, the document says the rule.
DOMAIN_DOC = {"pattern": f"^$|{DOMAIN_PATTERN}", "description": "a host name such as blog.example.com; "
              "empty or null: none"}
# Not an enum of the ~600 zones: several spell one constant name (GMT0, GMT-0, GMT+0; Etc/GMT+1
# and Etc/GMT-1), which makes client generators refuse the document.
ZONE_DOC = {"pattern": r"^[A-Za-z][A-Za-z0-9_+-]*(/[A-Za-z0-9_+-]+)*$",
            "description": "an IANA zone name, e.g. Europe/Berlin (one the server's tz database knows; "
                           "an unknown one is a 400 naming `timezone`)"}
NOT_BLANK = r"^[^\x00]*\S[^\x00]*$"  # at least one non-space character (and no NUL, as everywhere)
TRIGGER_TYPES = ("manual", "scheduled", "api", "retry")


def _query_int(value):
    # Query strings arrive as text: plain ASCII digits only ("1e3", " 7", "٣" are not ids), the
    # security rule of webapp/validation.py; the bounds are the Field's (and the document's).
    if isinstance(value, str):
        if value == "":
            raise PydanticCustomError("empty", "must not be empty")
        if not is_ascii_digits(value) or len(value) > 12:
            raise PydanticCustomError("id_format", "must be an integer (digits 0-9 only)")
        return int(value)
    return value


def QueryInt(ge, le, description=None):
    return Annotated[int, Field(strict=True, ge=ge, le=le, description=description), BeforeValidator(_query_int)]


Id = QueryInt(1, MAX_ID)
Timestamp = Optional[datetime]


class Model(BaseModel):
    """Response objects: every field listed, nothing else allowed out."""
    model_config = ConfigDict(extra="forbid")


class Query(BaseModel):
    # Unknown query parameters are ignored (caches and browsers add their own).
    model_config = ConfigDict(extra="ignore")


# -- envelope ------------------------------------------------------------------------------
class Error(Model):
    success: Literal[False]
    error: str = Field(description="what went wrong, naming the fields at fault")
    errors: Optional[dict[str, str]] = Field(None, description="{field: message} for every field at fault")


def ok(name, data_model, doc=None):
    """The success envelope {success: true, data: <data_model>} as a named model."""
    return create_model(name, __base__=Model, __doc__=doc or f"Success envelope of {data_model.__name__}",
                        success=(Literal[True], ...), data=(data_model, ...))


# -- query parameters ------------------------------------------------------------------------
class SiteQuery(Query):
    site_id: Id


class RunQuery(Query):
    run_id: Id


class SiteRunQuery(Query):
    site_id: Id
    run_id: Id


class LogsQuery(Query):
    """`before` and `after` cannot be given together (a 400 naming both)."""
    run_id: Id
    lines: QueryInt(1, 5000, "how many lines (default 100)") = 100
    before: QueryInt(1, MAX_ID, "the lines just above this line number") = None
    after: QueryInt(0, MAX_ID, "the lines following this line number") = None


class HistoryQuery(Query):
    site_id: Id
    page: QueryInt(1, 1_000_000, "1-based page, newest runs first") = 1
    limit: QueryInt(1, 100, "runs per page (default 20)") = 20
    status: Optional[Literal[RUN_STATUSES]] = None
    trigger_type: Optional[Literal[TRIGGER_TYPES]] = None


class PageQuery(Query):
    site_id: Id
    page: QueryInt(1, 1_000_000, "1-based page") = 1
    per_page: QueryInt(1, 200, "items per page (default 50)") = 50


class ContentPageQuery(PageQuery):
    status: Literal[CONTENT_STATUSES] = Field(None, description="only articles in this state (review: the queue)")


class IdempotencyHeaders(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)
    idempotency_key: Optional[Annotated[str, Field(min_length=1, max_length=255, pattern=r"^[\x21-\x7e]+$")]] = Field(
        None, alias="Idempotency-Key",
        description="A retry with the same key (within 24 h, same route and parameters) gets the first "
                    "answer again instead of acting twice")


# -- request bodies ----------------------------------------------------------------------------
class ReasonBody(BaseModel):
    """Optional body (JSON or form) of run_now, pause, resume and cancel."""
    model_config = ConfigDict(extra="forbid")
    reason: Optional[Annotated[str, Field(max_length=REASON_MAX)]] = Field(None, description="recorded in the run's events")


class SiteCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Annotated[str, Field(min_length=1, max_length=NAME_MAX, pattern=r"\S", json_schema_extra={"pattern": NOT_BLANK})]
    domain: Optional[Annotated[str, Field(max_length=DOMAIN_MAX, json_schema_extra=DOMAIN_DOC)]] = None
    timezone: Annotated[str, Field(min_length=1, max_length=64, json_schema_extra=ZONE_DOC)] = "UTC"


class TokenRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    email: Annotated[str, Field(min_length=1, max_length=EMAIL_MAX)]
    password: Annotated[str, Field(min_length=1, max_length=PASSWORD_MAX)]
    name: Optional[Annotated[str, Field(max_length=NAME_MAX)]] = Field(None, description="label of the token")


class KeywordsBulk(BaseModel):
    """Keywords to import. Rows are checked one by one: a bad row is reported in `errors` (by
    row number), not refused, so a row may be any JSON value."""
    model_config = ConfigDict(extra="forbid")
    keywords: Annotated[list[Any], Field(max_length=50_000, description=(
        "objects {keyword, volume? (0-10^9), difficulty? (0-100)} or plain strings; no text at any depth "
        "may hold a NUL (a 400 naming the row)"))]


# -- automation responses ----------------------------------------------------------------------
class ConfigOut(Model):
    site_id: int
    is_enabled: bool
    frequency: Literal["daily", "weekly", "monthly"]
    scheduled_time: str = Field(description="HH:MM in the site's time zone")
    scheduled_day: Optional[int]
    stage_1_batch_size: int
    stage_2_batch_size: int
    stage_3_batch_size: int
    stage_4_batch_size: int
    stage_5_batch_size: int
    stage_6_batch_size: int
    within_stage_delay: int
    between_stage_delay: int
    ai_concurrency: int = Field(description="AI calls in flight per run (1-32)")
    last_run_at: Timestamp
    next_run_at: Timestamp
    timezone: str = Field(description="the site's IANA time zone")
    next_runs: list[datetime] = Field(description="the next 5 scheduled starts (UTC); empty when disabled")


class Failure(Model):
    item_id: int
    reason: str


class StageResult(Model):
    status: Literal["running", "completed", "skipped", "cancelled", "failed"]
    items_total: int
    items_processed: int
    items_created: int
    items_failed: int
    credits_used: int
    started_at: Timestamp
    finished_at: Timestamp
    failures: list[Failure] = Field(default_factory=list, description="the last 20 failed items")
    duration_seconds: Optional[float] = Field(None, description="time spent in the stage, pauses excluded")


class RunSummary(Model):
    run_id: int
    status: Literal[RUN_STATUSES]
    trigger_type: str
    current_stage: int
    started_at: Timestamp
    completed_at: Timestamp
    ended_at: Timestamp = Field(description="when the run completed, failed or was cancelled; null while active")
    total_credits_used: int
    active_seconds: float = Field(description="running time, pauses and interruptions excluded")
    paused_seconds: float
    interrupted_seconds: float = Field(0, description="time no worker held the running run (a stopped app, a lost worker)")


class Run(RunSummary):
    paused_at: Timestamp
    resumed_at: Timestamp
    cancelled_at: Timestamp
    error_message: Optional[str]
    pause_reason: Optional[str]
    started_by: Optional[str]
    site_id: int
    stage_1_result: Optional[StageResult]
    stage_2_result: Optional[StageResult]
    stage_3_result: Optional[StageResult]
    stage_4_result: Optional[StageResult]
    stage_5_result: Optional[StageResult]
    stage_6_result: Optional[StageResult]
    stage_7_result: Optional[StageResult]
    eta_seconds: Optional[float] = Field(description="estimated seconds to the end (running runs; null until known)")
    retry_of_run_id: Optional[int] = Field(description="the run whose failed items this retry run processes")
    queue_position: Optional[int] = Field(None, description="place in line, 1 = next: a queued run among its "
                                                            "account's queued runs, a running run whose next job "
                                                            "waits for a free worker; null otherwise")
    queued_reason: Optional[str] = Field(None, description="why it waits, e.g. \"account limit: 2 of 2 runs active\" "
                                                           "or \"waiting for a worker: 3 runs of other accounts ahead\"")


class RunEventOut(Model):
    action: str = Field(description="start, pause, resume, cancel, ...")
    actor: str = Field(description='"user:<email>", "token:<id> (<email>)", "scheduler" or "system"')
    reason: Optional[str]
    at: Timestamp


class RunWithEvents(Run):
    events: list[RunEventOut]
    failed_items_count: int


class FailedItemsQuery(Query):
    run_id: Id
    page: QueryInt(1, 100_000, "1-based page") = 1
    limit: QueryInt(1, 200, "items per page (default 50)") = 50


class FailedItem(Model):
    stage: int
    stage_name: str
    item_type: str
    item_id: int
    label: str
    reason: str
    attempts: int
    failed_at: Timestamp


class FailedItems(Model):
    run_id: int
    page: int
    limit: int
    total: int
    items: list[FailedItem]


class RunStatusOut(Model):
    # Not "RunStatus": client generators name Run.status's enum RunStatus (and then drop Run).
    run_id: int
    status: Literal[RUN_STATUSES]


RunStatus = RunStatusOut  # the old Python name (the component is RunStatusOut)


class RetryStarted(RunStatusOut):
    trigger_type: Literal["retry"]
    retry_of_run_id: int


class CurrentRun(Model):
    run: Optional[Run]


class RunDetail(Model):
    run: RunWithEvents


class History(Model):
    runs: list[RunSummary] = Field(description="newest first")
    page: int
    limit: int
    total: int = Field(description="runs matching the filters")


class Logs(Model):
    run_id: int
    lines: list[str]
    first_line: int = Field(description="the line number of lines[0]")
    total_lines: int


class EstimateStage(Model):
    stage: int
    item_type: str = Field(description="what the stage's items are")
    items: int = Field(description="items the stage will process: pending now plus those the stages before make")
    credits: int


class BudgetLeft(Model):
    scope: Literal["account", "site"]
    site_id: Optional[int]
    name: str = Field(description="'account', or the site's name")
    budget: int = Field(description="credits per calendar month (UTC)")
    spent: int = Field(description="ledger debits this month")
    held: int = Field(description="credits reserved by active runs (counted against the budget)")
    left: int = Field(description="budget - spent - held (0 at least)")


class Estimate(Model):
    estimated_credits: int
    required_credits: int = Field(description="estimate x 1.2: what a start needs")
    current_balance: int
    held: int = Field(description="credits reserved by active runs")
    available: int = Field(description="current_balance minus held")
    sufficient: bool = Field(description="available >= required_credits")
    stages: list[EstimateStage] = Field(description="the estimate per stage; their credits add up to estimated_credits")
    budgets: list[BudgetLeft] = Field(description="the monthly budgets that apply (only those set)")
    within_budgets: bool = Field(description="required_credits fits in what is left of every budget")


class OverviewStage(Model):
    number: int
    name: str
    pending: int
    uses_ai: bool
    item_type: str
    awaiting_review: Optional[int] = Field(None, description="stage 7 only")


class Overview(Model):
    stages: list[OverviewStage] = Field(min_length=7, max_length=7)
    awaiting_review: int = Field(description="articles waiting for a reviewer's decision")


class Processing(Model):
    stage_number: int
    stage_name: str
    status: Literal["starting", "processing"] = Field(description="starting until the stage has counted its items")
    total_items: int
    processed_items: int
    failed_items: int
    percentage: float
    currently_processing: list[str] = Field(description="labels of the items in flight")
    up_next: list[str]
    remaining_count: int


class ProcessingOut(Model):
    state: Optional[Processing] = Field(description="null when the run is not running")


# -- sites, auth, planner, writer ------------------------------------------------------------
class SiteOut(Model):
    id: int
    name: str
    domain: Optional[str]
    timezone: str
    monthly_budget: Optional[int] = Field(None, description="credits the site may spend per calendar month (UTC); null = no budget")


class Sites(Model):
    sites: list[SiteOut]


class SiteCreated(Model):
    site: SiteOut


class Token(Model):
    token: str = Field(description="shown once; send as 'Authorization: Bearer <token>'")
    token_id: int


class Pong(Model):
    pong: bool


class RowError(Model):
    row: int
    error: str


class ImportReport(Model):
    created: int
    duplicates: int
    errors: list[RowError]
    rows: int


class ImportProgress(Model):
    id: int
    status: Literal["queued", "running", "completed", "failed"]
    total: int = Field(description="rows in the file (an estimate until the job has parsed it)")
    done: int = Field(description="rows handled so far")


class ImportQueued(Model):
    import_: ImportProgress = Field(alias="import")
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class ImportDetail(ImportProgress):
    site_id: int
    created: int
    duplicates: int
    invalid: int
    errors: list[RowError] = Field(description="the first 100 invalid rows")
    error: Optional[str] = Field(description="why a failed import failed")
    created_at: str
    finished_at: Optional[str]


class ImportStatus(Model):
    import_: ImportDetail = Field(alias="import")
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class KeywordOut(Model):
    id: int
    keyword: str
    volume: Optional[int]
    difficulty: Optional[int]
    cluster_id: Optional[int]


class ClusterOut(Model):
    id: int
    name: str
    ideas_generated: bool
    keyword_count: int


class IdeaOut(Model):
    id: int
    cluster_id: int
    title: str
    outline: str
    keywords: str = Field(description="comma-separated target keywords")
    status: str


class TaskOut(Model):
    id: int
    idea_id: int
    title: str
    status: str


class ImageOut(Model):
    id: int
    content_id: int
    position: int
    kind: str
    prompt: str
    status: str
    url: Optional[str]


class PreviousVersion(Model):
    """An earlier version of a rewritten article, with the review that sent it back."""
    version: int
    title: str
    body: str
    word_count: int
    review_note: Optional[str]
    reviewed_by: Optional[str]
    reviewed_at: Timestamp


class ContentOut(Model):
    id: int
    task_id: int
    title: str
    status: Literal[CONTENT_STATUSES]
    word_count: int
    created_at: Timestamp
    review_note: Optional[str]
    reviewed_by: Optional[str]
    reviewed_at: Timestamp
    version: int = Field(description="1, then 2, 3, … after each reject and rewrite")
    previous_versions: list[PreviousVersion] = Field(description="the earlier versions with their review, oldest first")


class ContentFull(ContentOut):
    body: str
    images: list[ImageOut]


class ContentDetail(Model):
    content: ContentFull


def page_of(name, item_model):
    return create_model(name, __base__=Model, items=(list[item_model], ...), page=(int, ...),
                        per_page=(int, ...), total=(int, ...))


KeywordPage = page_of("KeywordPage", KeywordOut)
ClusterPage = page_of("ClusterPage", ClusterOut)
IdeaPage = page_of("IdeaPage", IdeaOut)
TaskPage = page_of("TaskPage", TaskOut)
ContentPage = page_of("ContentPage", ContentOut)
ImagePage = page_of("ImagePage", ImageOut)


# -- review -------------------------------------------------------------------------------------
Note = Annotated[str, Field(max_length=NOTE_MAX)]


class ApproveBody(BaseModel):
    """Optional body of approve."""
    model_config = ConfigDict(extra="forbid")
    note: Note = None


class RejectBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    note: Note = Field(description="required: say what to change (not blank)", min_length=1,
                       json_schema_extra={"pattern": NOT_BLANK})
    regenerate: bool = Field(False, description="true: the next run rewrites the article with the note "
                                                "(charged as an article); it returns to review as its next version")


class BulkReviewBody(BaseModel):
    # A rejection needs a note that is not blank: said in the schema with if/then.
    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "if": {"properties": {"action": {"const": "reject"}}, "required": ["action"]},
        "then": {"required": ["note"], "properties": {"note": {"type": "string", "pattern": NOT_BLANK}}}})
    ids: Annotated[list[Annotated[int, Field(ge=1, le=MAX_ID)]], Field(min_length=1, max_length=MAX_BULK)]
    action: Literal["approve", "reject"]
    note: Note = Field(None, description="required to reject")
    regenerate: bool = Field(False, description="with reject: the next run rewrites the articles with the note")


class ContentReviewed(Model):
    content: ContentOut


class BulkReviewed(Model):
    updated: int
    status: Optional[Literal[CONTENT_STATUSES]]
    items: list[ContentOut]


# -- webhooks -----------------------------------------------------------------------------------
class WebhookCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: Annotated[str, Field(min_length=1, max_length=2000, json_schema_extra={
        "pattern": r"^[Hh][Tt][Tt][Pp][Ss]?://[^\s/?#@:\x00]+(:[0-9]{1,5})?([/?#][^\s\x00]*)?$",
        "description": "http(s) URL of a public host: no credentials in it; loopback, private, link-local and "
                       "metadata addresses are refused (unless the server allows private targets)"})]
    events: Annotated[list[Literal[WEBHOOK_EVENTS]], Field(min_length=1, description="default: the run events (budget.threshold is asked for by name)")] = None


class WebhookOut(Model):
    id: int
    site_id: int
    url: str
    events: list[Literal[WEBHOOK_EVENTS]]
    secret_hint: str
    created_by: Optional[str]
    created_at: Timestamp


class WebhookWithSecret(WebhookOut):
    secret: str = Field(description="shown once: verify X-Automation-Signature with it")


class Webhooks(Model):
    webhooks: list[WebhookOut]


class WebhookCreated(Model):
    webhook: WebhookWithSecret


class WebhookDeleted(Model):
    deleted: int


class DeliveryAttempt(Model):
    number: int
    at: Timestamp
    duration_ms: Optional[int]
    status_code: Optional[int]
    ok: bool
    error: Optional[str]


class Delivery(Model):
    id: int
    delivery_id: str
    webhook_id: int
    event: str
    run_id: Optional[int]
    status: str
    attempt_count: int
    next_attempt_at: Timestamp
    last_error: Optional[str]
    created_at: Timestamp
    delivered_at: Timestamp
    attempts: list[DeliveryAttempt]


class Deliveries(Model):
    deliveries: list[Delivery]
    page: int
    limit: int
    total: int


class DeliveryQuery(Query):
    page: QueryInt(1, 1_000_000, "1-based page, newest first") = 1
    limit: QueryInt(1, 100, "deliveries per page (default 20)") = 20


class DeliveryQueued(Model):
    delivery: Delivery


# -- team: tokens, sites, audit ---------------------------------------------------------------
class TokenCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Annotated[str, Field(min_length=1, max_length=NAME_MAX)] = "api"
    expires_at: Optional[Annotated[str, Field(max_length=40, json_schema_extra={
        "pattern": EXPIRY_PATTERN},
        description="ISO 8601 date or date and time (naive: UTC), in the future (up to 9998); null or "
                    "empty: never")]] = None
    scope: Literal["full", "read"] = "full"


class TokenOut(Model):
    id: int
    name: str
    scope: Literal["full", "read"]
    created_at: Timestamp
    last_used_at: Timestamp
    expires_at: Timestamp
    revoked_at: Timestamp
    user: Optional[str]


class TokenCreated(TokenOut):
    token: str = Field(description="shown once; send as 'Authorization: Bearer <token>'")


class Tokens(Model):
    tokens: list[TokenOut]


class SiteUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Annotated[str, Field(min_length=1, max_length=NAME_MAX, json_schema_extra={"pattern": NOT_BLANK})] = None
    domain: Optional[Annotated[str, Field(max_length=DOMAIN_MAX, json_schema_extra=DOMAIN_DOC)]] = None
    timezone: Annotated[str, Field(min_length=1, max_length=64, json_schema_extra=ZONE_DOC)] = None
    monthly_budget: Optional[Annotated[int, Field(ge=0, le=2**31 - 1)]] = Field(
        None, description="credits per calendar month (UTC); null = no budget")


class DeleteSiteQuery(Query):
    confirm: Annotated[str, Field(max_length=255, description="the site's name")] = None


class SiteDeleted(Model):
    deleted: int
    name: str


class AuditQuery(Query):
    page: QueryInt(1, 1_000_000, "1-based page, newest first") = 1
    limit: QueryInt(1, 200, "entries per page (default 50)") = 50
    site_id: QueryInt(1, MAX_ID, "only this site's entries") = None
    actor: Annotated[str, Field(max_length=255, description="entries whose actor contains this")] = None
    action: Annotated[str, Field(max_length=64, description="e.g. run.pause, config.update")] = None


class AuditEntryOut(Model):
    id: int
    at: Timestamp
    actor: str
    action: str
    site_id: Optional[int]
    run_id: Optional[int]
    details: dict[str, Any]


class AuditLog(Model):
    entries: list[AuditEntryOut]
    total: int
    page: int
    limit: int


# -- account and costs ----------------------------------------------------------------------------
class AccountLimits(Model):
    max_active_runs: Optional[int] = Field(description="the account's own limit (null = the default)")
    max_keywords_per_site: Optional[int] = Field(description="the account's own limit (null = the default)")
    weight: float = Field(description="share of the workers when accounts compete")
    effective_max_active_runs: Optional[int] = Field(description="what applies: the account's, else ACCOUNT_MAX_ACTIVE_RUNS (null = no limit)")
    effective_max_keywords_per_site: int = Field(description="what applies: the account's, else MAX_KEYWORDS_PER_SITE")


class AccountOut(Model):
    id: int
    name: str
    balance: int
    held: int = Field(description="credits reserved by active runs")
    available: int = Field(description="balance minus held")
    limits: AccountLimits
    monthly_budget: Optional[int] = Field(description="credits per calendar month (UTC); null = no budget")
    month: str = Field(description="this month, YYYY-MM (UTC)")
    spent_this_month: int = Field(description="ledger debits this month")
    budget_left: Optional[int] = Field(description="budget - spent - held (null without a budget)")


class AccountUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    monthly_budget: Optional[Annotated[int, Field(ge=0, le=2**31 - 1)]] = Field(
        description="credits per calendar month (UTC); null removes the budget")


class CostQuery(Query):
    month: Annotated[str, Field(pattern=r"^2[0-9]{3}-(0[1-9]|1[0-2])$",
                                description="YYYY-MM (calendar month in UTC; default: this month)")] = None
    group_by: Literal["site", "stage", "model", "day", "run"] = Field(None, description="default site")
    format: Literal["json", "csv"] = Field(None, description="json (default) or csv (text/csv, streamed)")


class CostRow(Model):
    key: Union[int, str, None] = Field(description="site id, stage number, model name, day (YYYY-MM-DD) or run id "
                                                   "(null: a deleted run)")
    label: str
    credits: int
    calls: int
    tokens: int


class CostLedger(Model):
    debits: int = Field(description="credits debited this month (equals the rows' credits)")
    top_ups: int
    balance_change: int = Field(description="top_ups - debits")
    balance_start: int
    balance_end: int = Field(description="balance_start + balance_change")


class CostTotals(Model):
    month: str
    credits: int
    calls: int
    tokens: int
    ledger: CostLedger


class CostReport(Model):
    month: str
    group_by: Literal["site", "stage", "model", "day", "run"]
    rows: list[CostRow]
    totals: CostTotals
    forecast: int = Field(description="month-end credits at the pace of the month so far")
    monthly_budget: Optional[int]
