"""Validation of AutomationConfig updates (pydantic): one rule set for the API, the form and
the OpenAPI document (the model below is the `update_config` request body).

Fields are optional to send but never null (except `scheduled_day`, whose null means "the
default day"), so the document says exactly that. Every bad field is reported at once, and
rules that span fields (frequency vs scheduled_day) are checked on the merged result but
blamed on the fields the caller sent."""
from typing import Annotated, Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError

from ..errors import BadRequest

BatchSize = Annotated[int, Field(strict=True, ge=1, le=1000)]
Delay = Annotated[int, Field(strict=True, ge=0, le=3600)]
# What `config` returns but nobody sets: accepted (a client may send back what it read) and ignored.
READ_ONLY = ("site_id", "last_run_at", "next_run_at", "next_runs", "timezone")
_IGNORED = Field(None, description="read-only (returned by config); ignored when sent")


def _document(schema, cls):
    # "not sent" is the default, not a value a caller can send: keep defaults out of the doc.
    for prop in schema.get("properties", {}).values():
        prop.pop("default", None)
    # The cross-field rule of `day_error`, as JSON Schema can say it for one body (the saved
    # frequency also counts: see the operation's description).
    schema["allOf"] = [
        {"if": {"properties": {"frequency": {"const": "weekly"}}, "required": ["frequency"]},
         "then": {"properties": {"scheduled_day": {"anyOf": [{"type": "null"}, {"type": "integer", "maximum": 6}]}}}},
        {"if": {"properties": {"frequency": {"const": "monthly"}}, "required": ["frequency"]},
         "then": {"properties": {"scheduled_day": {"anyOf": [{"type": "null"}, {"type": "integer", "minimum": 1}]}}}},
    ]


class ConfigUpdate(BaseModel):
    """Fields to change (all optional; read-only fields such as `site_id` are ignored)."""
    model_config = ConfigDict(extra="forbid", json_schema_extra=_document)
    is_enabled: StrictBool = None
    frequency: Literal["daily", "weekly", "monthly"] = None
    scheduled_time: Annotated[str, Field(pattern=r"^([01]\d|2[0-3]):[0-5]\d$",
                                         description="HH:MM, 24-hour, in the site's time zone")] = None
    scheduled_day: Optional[Annotated[int, Field(strict=True, ge=0, le=31)]] = Field(
        None, description="weekly: 0 (Monday) to 6; monthly: 1 to 31 (short months: their last day); "
                          "null: the day schedules are enabled")
    stage_1_batch_size: BatchSize = None
    stage_2_batch_size: BatchSize = None
    stage_3_batch_size: BatchSize = None
    stage_4_batch_size: BatchSize = None
    stage_5_batch_size: BatchSize = None
    stage_6_batch_size: BatchSize = None
    within_stage_delay: Delay = Field(None, description="seconds between batches")
    between_stage_delay: Delay = Field(None, description="seconds between stages")
    ai_concurrency: Annotated[int, Field(strict=True, ge=1, le=32, description="AI calls in flight per run")] = None
    site_id: Any = _IGNORED
    last_run_at: Any = _IGNORED
    next_run_at: Any = _IGNORED
    next_runs: Any = _IGNORED
    timezone: Any = _IGNORED


_FRIENDLY = {
    "frequency": "must be one of daily, weekly, monthly",
    "scheduled_time": "must be HH:MM (24-hour, e.g. 02:30)",
    "is_enabled": "must be true or false",
}


def pydantic_errors(exc, friendly=None):
    """{field: message} for every error of a pydantic ValidationError, in our words."""
    errors = {}
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "body"
        if loc in errors:
            continue
        if err["type"] == "extra_forbidden":
            errors[loc] = "is not a known field"
        elif friendly and loc in friendly and err["type"] != "missing":
            errors[loc] = friendly[loc]
        else:
            errors[loc] = message_for(err)
    return errors


def message_for(err):
    ctx, kind = err.get("ctx") or {}, err["type"]
    if kind in ("missing", "required"):
        return "is required"
    if kind == "greater_than_equal":
        return f"must be >= {ctx.get('ge')}"
    if kind == "less_than_equal":
        return "is out of range" if ctx.get("le") == 2**31 - 1 else f"must be <= {ctx.get('le')}"
    if kind.startswith("int") or kind == "id_format":
        return "must be an integer"
    if kind.startswith("bool"):
        return "must be true or false"
    if kind == "string_too_short":
        return "must not be empty" if ctx.get("min_length") == 1 else f"must be at least {ctx.get('min_length')} characters"
    if kind == "string_too_long":
        return f"must be at most {ctx.get('max_length')} characters"
    if kind in ("string_type", "string_sub_type"):
        return "must be a string"
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected')}"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return "must be an object"
    if kind == "list_type":
        return "must be a list"
    if kind == "too_long":
        return f"must have at most {ctx.get('max_length')} items"
    return err["msg"].removeprefix("Value error, ")


def field_errors(data):
    """Validate `data`; return (clean dict of the fields given, {field: message})."""
    if not isinstance(data, dict):
        return None, {"body": "JSON body must be an object"}
    data = {k: v for k, v in data.items() if k not in READ_ONLY}
    try:
        model = ConfigUpdate.model_validate(data)
    except ValidationError as e:
        return None, pydantic_errors(e, _FRIENDLY)
    return model.model_dump(exclude_unset=True, exclude=set(READ_ONLY)), {}


def merged_errors(current, sent):
    """Rules that span fields, checked on `current` updated with `sent`, blamed on what was sent."""
    freq = sent.get("frequency", current.get("frequency"))
    day = sent.get("scheduled_day", current.get("scheduled_day"))
    problem = day_error(freq, day)
    if problem is None:
        return {}
    if "scheduled_day" in sent:
        return {"scheduled_day": problem}
    # Only the frequency was sent: it is what made the saved day wrong.
    return {"frequency": f"needs a different scheduled_day: the saved one ({day}) {problem}; send "
                         f"scheduled_day with it (null for the default day)"}


def day_error(frequency, day):
    """The message for a scheduled_day that does not fit its frequency, else None."""
    if day is not None and frequency == "weekly" and not 0 <= day <= 6:
        return "must be 0 (Monday) to 6 (Sunday) for a weekly schedule"
    if day is not None and frequency == "monthly" and not 1 <= day <= 31:
        return "must be 1 to 31 for a monthly schedule"
    return None


def validate_update(data, current=None):
    """The clean fields to apply, or BadRequest naming every field at fault."""
    clean, errors = field_errors(data)
    if not errors and current is not None:
        errors = merged_errors(current, clean)
    if errors:
        raise BadRequest(errors=errors)
    return clean
