"""GET /api/v1/openapi.json — the OpenAPI 3 document of the API, built from the same
tables the routes use (config fields from the pydantic model), and checked against the
live server by the schemathesis test."""
from flask import current_app, render_template_string

from ..automation.config_schema import ConfigUpdate
from . import bp

NULL_STR = {"type": ["string", "null"]}
NULL_INT = {"type": ["integer", "null"]}
TS = {"type": ["string", "null"], "format": "date-time"}
ID = {"type": "integer", "minimum": 1, "maximum": 2**31 - 1}


def _err(desc):
    return {"description": desc, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def _ok(schema, desc="OK"):
    return {"description": desc, "content": {"application/json": {"schema": {
        "type": "object", "required": ["success", "data"], "additionalProperties": False,
        "properties": {"success": {"const": True}, "data": schema}}}}}


def _param(name, required=True, schema=None, where="query"):
    return {"name": name, "in": where, "required": required, "schema": schema or ID}


def _obj(props, required=None):
    return {"type": "object", "properties": props, "required": list(required if required is not None else props)}


STAGE_RESULT = {"type": ["object", "null"]}
RUN_SUMMARY = _obj({"run_id": {"type": "integer"}, "status": {"enum": ["running", "paused", "completed", "failed", "cancelled"]},
                    "trigger_type": {"type": "string"}, "current_stage": {"type": "integer"}, "started_at": TS,
                    "completed_at": TS, "total_credits_used": {"type": "integer"},
                    "active_seconds": {"type": "number"}, "paused_seconds": {"type": "number"}})
RUN = {"allOf": [RUN_SUMMARY, _obj({
    "paused_at": TS, "resumed_at": TS, "cancelled_at": TS, "error_message": NULL_STR,
    "eta_seconds": NULL_INT, "retry_of_run_id": NULL_INT,
    **{f"stage_{n}_result": STAGE_RESULT for n in range(1, 8)}})]}
CONFIG = _obj({"site_id": {"type": "integer"}, "is_enabled": {"type": "boolean"},
               "frequency": {"enum": ["daily", "weekly", "monthly"]}, "scheduled_time": {"type": "string"},
               **{f"stage_{n}_batch_size": {"type": "integer"} for n in range(1, 7)},
               "within_stage_delay": {"type": "integer"}, "between_stage_delay": {"type": "integer"},
               "ai_concurrency": {"type": "integer", "minimum": 1, "maximum": 32,
                                  "description": "AI calls of the current stage in flight at once (default 4)"},
               "last_run_at": TS, "next_run_at": TS, "next_runs": {"type": "array", "items": {"type": "string"}}})
PROCESSING = {"type": ["object", "null"], "properties": {
    "stage_number": {"type": "integer"}, "stage_name": {"type": "string"},
    "status": {"enum": ["starting", "processing"]}, "total_items": {"type": "integer"},
    "processed_items": {"type": "integer"}, "failed_items": {"type": "integer"}, "percentage": {"type": "number"},
    "currently_processing": {"type": "array"}, "up_next": {"type": "array"}, "remaining_count": {"type": "integer"}}}
RUN_STATUS = _obj({"run_id": {"type": "integer"}, "status": {"type": "string"}})
IMPORT = _obj({"created": {"type": "integer"}, "duplicates": {"type": "integer"}, "errors": {"type": "array"},
               "rows": {"type": "integer"}})
PAGE = _obj({"items": {"type": "array", "items": {"type": "object"}}, "page": {"type": "integer"},
             "per_page": {"type": "integer"}, "total": {"type": "integer"}})

COMMON_ERRORS = {"400": _err("Invalid parameter (the message names it)"), "401": _err("Not authenticated"),
                 "404": _err("Not found, or another account's"), "405": _err("Method not allowed"),
                 "429": _err("Too many requests (API_RATE_LIMIT per token; Retry-After says when)")}


def _op(summary, params, ok_schema, status="200", body=None, extra=None):
    op = {"summary": summary, "parameters": params, "responses": {status: _ok(ok_schema), **COMMON_ERRORS, **(extra or {})},
          "security": [{"bearer": []}]}
    if body:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
        op["responses"]["415"] = _err("Wrong content type")
    return op


def _config_body():
    schema = ConfigUpdate.model_json_schema()
    schema.pop("title", None)
    for prop in schema.get("properties", {}).values():
        prop.pop("title", None)
        prop.pop("default", None)
    return schema


def build_spec():
    site, run = _param("site_id"), _param("run_id")
    paths = {
        "/automation/config/": {"get": _op("Get (or create) the site's automation config", [site], CONFIG)},
        "/automation/update_config/": {"put": _op("Update config fields", [site], CONFIG, body=_config_body())},
        "/automation/run_now/": {"post": _op("Start a run now", [site], RUN_STATUS, status="201",
                                             extra={"503": _err("Redis unavailable")})},
        "/automation/current_run/": {"get": _op("The active run, or null", [site], _obj({"run": {"oneOf": [{"type": "null"}, RUN]}}))},
        "/automation/history/": {"get": _op("Last 20 runs, newest first", [site], _obj({"runs": {"type": "array", "items": RUN_SUMMARY}}))},
        "/automation/logs/": {"get": _op(
            "Log lines of a run: the last N; with before=L the N lines above line L (page backwards); "
            "with after=L the lines following line L (poll the tail)",
            [run, _param("lines", False, {"type": "integer", "minimum": 1, "maximum": 5000}),
             _param("before", False, {"type": "integer", "minimum": 1}),
             _param("after", False, {"type": "integer", "minimum": 0})],
            _obj({"run_id": {"type": "integer"}, "lines": {"type": "array", "items": {"type": "string"}},
                  "first_line": {"type": "integer"}, "total_lines": {"type": "integer"}}))},
        "/automation/estimate/": {"get": _op("Credit estimate", [site], _obj({
            "estimated_credits": {"type": "integer"}, "required_credits": {"type": "integer"},
            "current_balance": {"type": "integer"}, "sufficient": {"type": "boolean"},
            "held": {"type": "integer", "description": "credits reserved by this account's active runs"},
            "available": {"type": "integer", "description": "current_balance - held: what a new run may reserve"}}))},
        "/automation/pipeline_overview/": {"get": _op("Pending items per stage", [site], _obj({"stages": {
            "type": "array", "minItems": 7, "maxItems": 7, "items": _obj({"number": {"type": "integer"}, "name": {"type": "string"},
                                                                         "pending": {"type": "integer"}}, ["number", "name", "pending"])}}))},
        "/automation/current_processing/": {"get": _op("Live processing state", [site, run], _obj({"state": PROCESSING}))},
        "/automation/run/": {"get": _op("One run with its audit events", [run], _obj({"run": RUN}))},
        "/automation/retry_failed/": {"post": _op("Start a run (trigger_type retry) that processes exactly this run's "
                                                  "failed items again", [run], RUN_STATUS, status="201",
                                                  extra={"503": _err("Redis unavailable")})},
        "/automation/failed_items/": {"get": _op("A run's failed items, paged", [
            run, _param("page", False, {"type": "integer", "minimum": 1, "maximum": 100_000}),
            _param("limit", False, {"type": "integer", "minimum": 1, "maximum": 200})], _obj({
                "run_id": {"type": "integer"}, "page": {"type": "integer"}, "limit": {"type": "integer"},
                "total": {"type": "integer"}, "items": {"type": "array", "items": _obj({
                    "stage": {"type": "integer"}, "stage_name": {"type": "string"}, "item_type": {"type": "string"},
                    "item_id": {"type": "integer"}, "label": {"type": "string"}, "reason": {"type": "string"},
                    "attempts": {"type": "integer"}, "failed_at": TS})}}))},
        "/sites/": {"get": _op("List sites", [], _obj({"sites": {"type": "array"}})),
                    "post": _op("Create a site", [], _obj({"site": {"type": "object"}}), status="201", body={
                        "type": "object", "required": ["name"], "additionalProperties": False,
                        "properties": {"name": {"type": "string", "minLength": 1, "maxLength": 120},
                                       "domain": {"type": "string", "maxLength": 255}, "timezone": {"type": "string"}}})},
        "/planner/keywords/bulk/": {"post": _op("Import keywords (JSON or CSV); 200 when nothing new", [site], IMPORT,
                                                status="201", body={"type": "object", "required": ["keywords"], "properties": {
                "keywords": {"type": "array", "items": {"type": "object", "required": ["keyword"], "properties": {
                    "keyword": {"type": "string"}, "volume": {"type": "integer"}, "difficulty": {"type": "integer"}}}}}},
            extra={"409": _err("Concurrent import"), "200": _ok(IMPORT, "Nothing new imported")})},
    }
    for action in ("pause", "resume", "cancel"):
        paths[f"/automation/{action}/"] = {"post": _op(f"{action.title()} a run (optional JSON body: reason)",
                                                       [run], RUN_STATUS)}
    paging = [site, _param("page", False, {"type": "integer", "minimum": 1, "maximum": 1_000_000}), _param("per_page", False, {"type": "integer", "minimum": 1, "maximum": 200})]
    for path in ("/planner/keywords/", "/planner/clusters/", "/planner/ideas/", "/writer/tasks/", "/writer/content/",
                 "/writer/images/"):
        paths[path] = {"get": _op(f"List {path.strip('/').split('/')[-1]}", paging, PAGE)}
    paths["/writer/content/{content_id}/"] = {"get": _op("One article with body and images",
                                                         [_param("content_id", where="path")], _obj({"content": {"type": "object"}}))}
    paths["/ping"] = {"get": _op("Authenticated no-op (health of the API path)", [], _obj({"pong": {"type": "boolean"}}))}
    paths["/auth/token/"] = {"post": {"summary": "Exchange email + password for an API token", "security": [],
                                      "requestBody": {"required": True, "content": {"application/json": {"schema": {
                                          "type": "object", "required": ["email", "password"],
                                          "properties": {"email": {"type": "string"}, "password": {"type": "string"}}}}}},
                                      "responses": {"201": _ok(_obj({"token": {"type": "string"}, "token_id": {"type": "integer"}})),
                                                    "400": _err("Missing field"), "401": _err("Invalid email or password"),
                                                    "429": _err("Too many failed logins for this email or address "
                                                                "(Retry-After says when)")}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "Automation Console API", "version": "1.0.0",
                 "description": "Envelope: {success: true, data} or {success: false, error}. Every route also "
                                "answers without the trailing slash."},
        "servers": [{"url": "/api/v1"}],
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {"Error": {"type": "object", "required": ["success", "error"], "additionalProperties": False,
                                  "properties": {"success": {"const": False}, "error": {"type": "string"},
                                                 # present when fields are at fault: {field: message}
                                                 "errors": {"type": "object",
                                                            "additionalProperties": {"type": "string"}}}}},
        },
    }


@bp.get("/openapi.json")
def openapi_json():
    from flask import jsonify
    spec = current_app.extensions.get("openapi_spec")
    if spec is None:
        spec = current_app.extensions["openapi_spec"] = build_spec()
    return jsonify(spec)


DOCS = """<!doctype html><html><head><meta charset="utf-8"><title>API · Automation Console</title>
<link rel="stylesheet" href="/static/css/app.css"></head><body><main>
<h1>Automation Console API</h1><p>Machine-readable: <a href="/api/v1/openapi.json">/api/v1/openapi.json</a>.
Authenticate with <code>Authorization: Bearer &lt;token&gt;</code> (get one from <code>POST /api/v1/auth/token</code>).</p>
<table class="table"><thead><tr><th>Method</th><th>Path</th><th>Summary</th><th>Parameters</th></tr></thead><tbody>
{% for path, ops in spec.paths.items() %}{% for method, op in ops.items() %}
<tr><td><code>{{ method|upper }}</code></td><td><code>/api/v1{{ path }}</code></td><td>{{ op.summary }}</td>
<td>{% for p in op.parameters %}<code>{{ p.name }}</code>{% if p.required %}*{% endif %} {% endfor %}</td></tr>
{% endfor %}{% endfor %}</tbody></table></main></body></html>"""


@bp.get("/docs")
@bp.get("/docs/")
def docs():
    return render_template_string(DOCS, spec=build_spec())
