"""Validation of AutomationConfig updates (pydantic): one rule set for the API and the form."""
from typing import Annotated, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..errors import BadRequest

BatchSize = Annotated[int, Field(strict=True, ge=1, le=1000)]
Delay = Annotated[int, Field(strict=True, ge=0, le=3600)]
READ_ONLY = {"site_id", "last_run_at", "next_run_at", "next_runs", "id", "account_id", "updated_at"}


class ConfigUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    is_enabled: Optional[Annotated[bool, Field(strict=True)]] = None
    frequency: Optional[Literal["daily", "weekly", "monthly"]] = None
    scheduled_time: Optional[Annotated[str, Field(pattern=r"^([01]\d|2[0-3]):[0-5]\d$")]] = None
    scheduled_day: Optional[Annotated[int, Field(strict=True, ge=0, le=31)]] = None
    stage_1_batch_size: Optional[BatchSize] = None
    stage_2_batch_size: Optional[BatchSize] = None
    stage_3_batch_size: Optional[BatchSize] = None
    stage_4_batch_size: Optional[BatchSize] = None
    stage_5_batch_size: Optional[BatchSize] = None
    stage_6_batch_size: Optional[BatchSize] = None
    within_stage_delay: Optional[Delay] = None
    between_stage_delay: Optional[Delay] = None
    ai_concurrency: Optional[Annotated[int, Field(strict=True, ge=1, le=32)]] = None

    @model_validator(mode="after")
    def _no_nulls(self):
        for name in self.model_fields_set:
            if getattr(self, name) is None and name != "scheduled_day":
                raise ValueError(f"{name}: must not be null")
        return self


_FRIENDLY = {
    "frequency": "must be one of daily, weekly, monthly",
    "scheduled_time": "must be HH:MM (24-hour, e.g. 02:30)",
    "is_enabled": "must be true or false",
}


def field_errors(data):
    """Validate `data`; return (clean dict of the fields given, {field: message})."""
    data = {k: v for k, v in data.items() if k not in READ_ONLY}
    try:
        model = ConfigUpdate.model_validate(data)
    except ValidationError as e:
        errors = {}
        for err in e.errors():
            loc = str(err["loc"][0]) if err["loc"] else "body"
            if err["type"] == "extra_forbidden":
                errors[loc] = "unknown field"
            elif loc == "body" or err["type"] == "value_error":
                msg = err["msg"].removeprefix("Value error, ")
                name, _, rest = msg.partition(": ")
                errors[name if rest else "body"] = rest or msg
            else:
                errors[loc] = _FRIENDLY.get(loc) or _bounds_message(err)
        return None, errors
    return model.model_dump(exclude_unset=True), {}


def _bounds_message(err):
    ctx = err.get("ctx") or {}
    if err["type"] in ("greater_than_equal", "less_than_equal"):
        return {"greater_than_equal": f"must be >= {ctx.get('ge')}", "less_than_equal": f"must be <= {ctx.get('le')}"}[err["type"]]
    if err["type"].startswith("int"):
        return "must be an integer"
    return err["msg"]


def day_error(frequency, day):
    """The message for a scheduled_day that does not fit its frequency, else None."""
    if day is not None and frequency == "weekly" and not 0 <= day <= 6:
        return "must be 0 (Monday) to 6 (Sunday) for a weekly schedule"
    if day is not None and frequency == "monthly" and not 1 <= day <= 31:
        return "must be 1 to 31 for a monthly schedule"
    return None


def validate_update(data):
    clean, errors = field_errors(data)
    if errors:
        name, msg = next(iter(errors.items()))
        raise BadRequest(f"'{name}' {msg}." if name != "body" else msg, 400)
    return clean
