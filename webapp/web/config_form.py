"""The site configuration form: every field parsed, every invalid one reported at once (next
to the field and in a summary at the top), with the same rules as the API (config_schema).

The day is chosen with two pickers that cannot be left empty — a weekday for weekly schedules,
a day of the month for monthly ones — and the one matching the chosen frequency is used.
"""
from ..automation.config_schema import day_error, field_errors
from ..automation.stages import STAGES

INT_FIELDS = [f"stage_{n}_batch_size" for n in range(1, 7)] + ["within_stage_delay", "between_stage_delay"]
WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
DAY_FIELD = {"weekly": "scheduled_weekday", "monthly": "scheduled_monthday"}


def labels():
    """Field -> the label the form shows (the error summary names fields the same way)."""
    out = {"is_enabled": "Run automatically", "frequency": "Frequency", "scheduled_time": "Time",
           "scheduled_day": "Day", "ai_concurrency": "AI calls at once"}
    for n in range(1, 7):
        out[f"stage_{n}_batch_size"] = f"Stage {n} · {STAGES[n].name}"
    out.update(within_stage_delay="Delay between batches", between_stage_delay="Delay between stages")
    return out


def anchor(field, frequency):
    """The id of the input an error about `field` points at."""
    if field == "scheduled_day":
        return DAY_FIELD.get(frequency, "frequency")
    return field


def parse(form):
    """(data for AutomationService.update_config, {field: message}) from a submitted form."""
    data, errors = {}, {}
    for name in INT_FIELDS:
        try:
            data[name] = int((form.get(name) or "").strip())
        except ValueError:
            errors[name] = "must be a whole number"
    if "ai_concurrency" in form:  # a form without the field leaves it as it is
        try:
            data["ai_concurrency"] = int((form.get("ai_concurrency") or "").strip())
        except ValueError:
            errors["ai_concurrency"] = "must be a whole number"
    data["is_enabled"] = form.get("is_enabled") == "on"
    data["frequency"] = form.get("frequency", "")
    data["scheduled_time"] = (form.get("scheduled_time") or "").strip()
    # The picker for the chosen frequency; a plain `scheduled_day` (older forms, scripts) wins.
    raw_day = form.get("scheduled_day")
    if raw_day is None:
        raw_day = form.get(DAY_FIELD.get(data["frequency"], ""), "")
    raw_day = (raw_day or "").strip()
    if data["frequency"] == "daily" and "scheduled_day" not in form:
        data["scheduled_day"] = None
    elif raw_day:
        try:
            data["scheduled_day"] = int(raw_day)
        except ValueError:
            errors["scheduled_day"] = "must be a whole number"
    elif data["frequency"] in DAY_FIELD:
        errors["scheduled_day"] = "choose a day"
    else:
        data["scheduled_day"] = None
    _, more = field_errors({k: v for k, v in data.items() if k not in errors})
    for k, v in more.items():
        errors.setdefault(k, v)
    if "scheduled_day" not in errors and "frequency" not in errors:
        problem = day_error(data["frequency"], data.get("scheduled_day"))
        if problem:
            errors["scheduled_day"] = problem
    order = list(labels())  # the summary lists them in the form's order
    return data, dict(sorted(errors.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order)))


def default_day(frequency, tz):
    """What the picker shows before a day was chosen: today in the site's zone (the day the
    service would keep)."""
    from ..automation.schedule import default_day as today
    from ..models.base import utcnow
    return today(frequency, utcnow(), tz)


def init_app(app):
    app.jinja_env.globals.update(config_labels=labels, config_anchor=anchor, weekdays=WEEKDAYS,
                                 default_day=default_day)
