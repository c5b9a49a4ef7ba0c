"""The OpenAPI document is generated from the route declarations (spectree over
webapp/api/schemas.py) and checked against the live server by schemathesis, with every check
and the stateful phase, bounded in examples so the suite stays fast."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import drain

V1 = "/api/v1"


def test_document_lists_every_route_field_and_status(client, app):
    spec = client.get(f"{V1}/openapi.json").json
    assert spec["openapi"].startswith("3.1")
    paths = spec["paths"]
    for action in ("config", "update_config", "run_now", "current_run", "history", "logs", "estimate",
                   "pipeline_overview", "current_processing", "pause", "resume", "cancel", "run"):
        assert f"{V1}/automation/{action}/" in paths, action
    # Every API route of the app is in the document (nothing hand-listed, nothing forgotten).
    rules = {re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", r.rule) for r in app.url_map.iter_rules()
             if r.rule.startswith(V1) and not r.rule.endswith(("openapi.json", "/docs", "/docs/"))}
    assert rules == set(paths), rules ^ set(paths)
    schemas = spec["components"]["schemas"]
    # update_config: fields optional but never null (scheduled_day excepted), unknown fields refused
    body = schemas["ConfigUpdate"]
    assert body["additionalProperties"] is False and "stage_6_batch_size" in body["properties"]
    assert body["properties"]["frequency"] == {"enum": ["daily", "weekly", "monthly"], "type": "string"}
    assert {"type": "null"} in body["properties"]["scheduled_day"]["anyOf"]
    # returned fields the hand-written document used to miss
    assert {"scheduled_day", "timezone", "next_runs"} <= set(schemas["ConfigOut"]["required"])
    assert {"pause_reason", "started_by", "site_id", "ended_at"} <= set(schemas["Run"]["properties"])
    assert {"uses_ai", "item_type"} <= set(schemas["OverviewStage"]["required"])
    assert schemas["StageResult"]["properties"]["status"]["enum"] == [
        "running", "completed", "skipped", "cancelled", "failed"]
    assert "currently_processing" in schemas["Processing"]["required"]
    # statuses: optional reason body, CSV upload, 413/414/500, Idempotency-Key
    run_now = paths[f"{V1}/automation/run_now/"]["post"]
    assert run_now["requestBody"]["required"] is False
    assert "reason" in schemas["ReasonBody"]["properties"]
    assert {"201", "400", "401", "404", "409", "413", "414", "415", "500", "503"} <= set(run_now["responses"])
    assert any(p["name"] == "Idempotency-Key" and p["in"] == "header" for p in run_now["parameters"])
    # One media type per body (generated clients break on two); the alternatives are described.
    bulk_op = paths[f"{V1}/planner/keywords/bulk/"]["post"]
    assert set(bulk_op["requestBody"]["content"]) == {"application/json"}
    assert "text/csv" in bulk_op["description"] and "`file`" in bulk_op["description"]
    for path, item in paths.items():
        for method, op in item.items():
            assert len((op.get("requestBody") or {}).get("content", {"x": 1})) == 1, (path, method)
            for param in op.get("parameters", []):  # absent means "no value", never `default: null`
                assert param["schema"].get("default", 0) is not None, (path, method, param["name"])
            assert op["responses"]["414"]["content"]["application/json"]["schema"]["$ref"].endswith("/Error")
    # component names no generator re-derives for an inline enum of another model (RunStatus was
    # the name openapi-python-client gives Run.status, and it then dropped Run)
    for name, comp in schemas.items():
        for prop in (comp.get("properties") or {}):
            derived = name + "".join(w.capitalize() for w in prop.split("_"))
            assert derived not in schemas or derived == name, (name, prop, derived)
    # rules the server enforces, in the schema
    assert {"if", "then"} <= set(body["allOf"][0]) and body["allOf"][0]["then"]["properties"]["scheduled_day"]
    assert "not both" in paths[f"{V1}/automation/logs/"]["get"]["description"] or \
        "together" in paths[f"{V1}/automation/logs/"]["get"]["description"]
    assert schemas["SiteCreate"]["properties"]["timezone"]["pattern"]
    assert "pattern" in schemas["SiteCreate"]["properties"]["domain"]["anyOf"][0]
    assert schemas["TokenRequest"]["properties"]["email"]["pattern"] == "^[^\\x00]*$"
    assert "409" in paths[f"{V1}/sites/"]["post"]["responses"]
    assert "errors" in schemas["Error"]["properties"]
    hist = {p["name"] for p in paths[f"{V1}/automation/history/"]["get"]["parameters"]}
    assert {"site_id", "page", "limit", "status", "trigger_type"} <= hist


def test_docs_page_is_vendored_swagger_ui(client):
    page = client.get("/api/docs")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "/static/vendor/swagger-ui/swagger-ui-bundle.js" in html and "/api/v1/openapi.json" in html
    assert "http" not in html.split("<body>")[0].replace("http-equiv", "")  # nothing from elsewhere
    for asset in ("vendor/swagger-ui/swagger-ui-bundle.js", "vendor/swagger-ui/swagger-ui.css", "js/api_docs.js"):
        assert client.get(f"/static/{asset}").status_code == 200, asset
    assert client.get(f"{V1}/docs").headers["Location"].endswith("/api/docs")


@pytest.mark.processes
def test_schemathesis_all_checks_and_stateful_phase(app, factory, live_server, tmp_path):
    acc, user = factory.account(credits=100_000)
    site = factory.site(acc, keywords=8)
    factory.fast_config(site)
    token = factory.token(user)
    app.config["API_RATE_LIMIT"] = "100000 per minute"  # schemathesis sends ~1,500 requests
    from webapp.automation.service import AutomationService
    AutomationService(acc.id).start(site.id)
    drain(app, max_jobs=2)
    st = Path(sys.executable).parent / "st"
    # Input the schema allows is accepted (no 400) everywhere except where a 400 depends on state
    # or on a rule only the description can state: SPEC §5's refusals of a run's state ("a run is
    # already active", "cannot be paused"), config checked merged with the saved one, `before` with
    # `after`, zones the tz database lacks, private webhook targets, past expiry dates, articles no
    # longer in review, the delete confirmation, a NUL deep inside an imported row (a row may be any
    # JSON value; "no NUL at any depth" needs a recursive schema that client generators cannot
    # read). The token route throttles failed logins (429).
    stateful = ["run_now", "pause", "resume", "cancel", "retry_failed", "update_config", "logs", "create",
                "update_site", "delete_site", "create_webhook", "create_token", "approve", "reject", "bulk_review",
                "keywords_bulk"]
    toml = 'checks.positive_data_acceptance.expected-statuses = ["2xx", "401", "404", "409", "429"]\n'
    for op_id in stateful:
        toml += (f'\n[[operations]]\ninclude-operation-id = "{op_id}"\n'
                 'checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "404", "409", "429"]\n')
    (tmp_path / "schemathesis.toml").write_text(toml)
    cmd = [str(st), "run", f"{live_server}{V1}/openapi.json", "--url", live_server,
           "-H", f"Authorization: Bearer {token}", "--max-examples", os.environ.get("ST_MAX_EXAMPLES", "6"), "--workers", "1",
           "--checks", "all", "--phases", "examples,coverage,fuzzing,stateful", "--no-color", "--seed", "1",
           "--generation-database", "none",
           # Revoking its own token (DELETE /auth/tokens/1) would turn the rest of the run into
           # 401s; token revocation is tested in test_team.py.
           "--exclude-operation-id", "delete_token"]
    env = dict(os.environ, SCHEMATHESIS_HOOKS="")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    (tmp_path.parent / "st-output.txt").write_text(proc.stdout + proc.stderr)
    assert proc.returncode == 0, proc.stdout[-8000:] + proc.stderr[-2000:]
    assert "Stateful" in proc.stdout


HOSTILE_NUMBERS = ["1_0", "+2", "\u0662", " 2", "0x2", "2.0", "", "99999999999999999999"]
HOSTILE_TEXT = ["\ud800", "a\x00b"]


def _deep(n):
    value = []
    for _ in range(n):
        value = [value]
    return value


@pytest.mark.processes
def test_schemathesis_hostile_cases(app, factory, live_server):
    """The hostile input of the security review, as schemathesis cases for every operation in the
    document: malformed numbers in each integer parameter → 400, NUL or a lone surrogate in any
    parameter or body field → 400, a JSON body nested past the limit → 400; every answer passes
    the same checks as the generated run (no 500, documented status, schema, content type)."""
    import schemathesis
    from schemathesis.checks import CHECKS
    acc, user = factory.account(credits=100_000)
    site = factory.site(acc, keywords=4)
    token = factory.token(user)
    app.config["API_RATE_LIMIT"] = "100000 per minute"  # this test sends a few hundred requests
    from webapp.automation.service import AutomationService
    run = AutomationService(acc.id).start(site.id)
    schema = schemathesis.openapi.from_url(f"{live_server}/api/v1/openapi.json")
    names = {"not_a_server_error", "status_code_conformance", "content_type_conformance", "response_schema_conformance"}
    checks = [c for c in CHECKS.get_all() if c.__name__ in names]
    valid = {"site_id": site.id, "run_id": run.id, "content_id": 1}
    base = live_server  # the document's paths carry /api/v1
    # lowercase scheme accepted (RFC 7235: the scheme is case-insensitive)
    headers = {"Authorization": f"bearer {token}"}
    sent = 0

    def check(op, expect=None, **kw):
        nonlocal sent
        case = op.Case(**kw)
        response = case.call(base_url=base, headers=headers)
        sent += 1
        assert response.status_code != 500, (op.label, kw, response.text[:300])
        case.validate_response(response, checks=checks)
        if expect is not None:
            assert response.status_code == expect, (op.label, kw, response.status_code, response.text[:300])
        return response

    for result in schema.get_all_operations():
        op = result.ok()
        query = {p.name: valid.get(p.name, 1) for p in op.query if p.is_required}
        path = {p.name: valid.get(p.name, 1) for p in op.path_parameters}
        json_body = any(b.media_type == "application/json" for b in op.body)
        for p in op.query:
            is_int = p.definition.get("schema", {}).get("type") == "integer"
            for bad in (HOSTILE_NUMBERS if is_int else []):
                check(op, expect=400, query={**query, p.name: bad}, path_parameters=path)
            check(op, expect=400, query={**query, p.name: "a\x00b"}, path_parameters=path)
            # a surrogate's UTF-8-style bytes in a URL decode to U+FFFD: harmless, but never a 500
            check(op, query={**query, p.name: b"\xed\xa0\x80"}, path_parameters=path)
        if json_body and op.method.upper() in ("POST", "PUT", "PATCH"):
            check(op, expect=400, query=query, path_parameters=path, body=_deep(100), media_type="application/json")
            props = {}
            for b in op.body:
                props = b.definition.get("schema", {}).get("properties", {}) or {"keywords": {}}
            for field in props:
                for bad in HOSTILE_TEXT:
                    check(op, expect=400, query=query, path_parameters=path, body={field: bad},
                          media_type="application/json")
    assert sent > 100
