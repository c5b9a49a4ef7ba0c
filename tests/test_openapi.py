"""The OpenAPI document against the live API: schemathesis (property-based) on a real
HTTP server of the app, bounded in examples so the suite stays fast."""
import os
import subprocess
import sys
from pathlib import Path


from conftest import drain


def test_openapi_document_shape(client):
    spec = client.get("/api/v1/openapi.json").json
    assert spec["openapi"].startswith("3.")
    for action in ("config", "update_config", "run_now", "current_run", "history", "logs", "estimate",
                   "pipeline_overview", "current_processing", "pause", "resume", "cancel"):
        assert f"/automation/{action}/" in spec["paths"], action
    body = spec["paths"]["/automation/update_config/"]["put"]["requestBody"]["content"]["application/json"]["schema"]
    assert body["additionalProperties"] is False and "stage_6_batch_size" in body["properties"]
    assert client.get("/api/v1/docs").status_code == 200




def test_schemathesis_no_500_and_responses_match_schema(app, factory, live_server, tmp_path):
    acc, user = factory.account(credits=100_000)
    site = factory.site(acc, keywords=8)
    factory.fast_config(site)
    token = factory.token(user)
    from webapp.automation.service import AutomationService
    AutomationService(acc.id).start(site.id)
    drain(app, max_jobs=2)
    st = Path(sys.executable).parent / "st"
    cmd = [str(st), "run", f"{live_server}/api/v1/openapi.json", "--url", f"{live_server}/api/v1",
           "-H", f"Authorization: Bearer {token}", "--max-examples", "12", "--workers", "1",
           "--checks", "not_a_server_error,status_code_conformance,response_schema_conformance,content_type_conformance",
           "--phases", "examples,coverage,fuzzing", "--no-color", "--seed", "1"]
    env = dict(os.environ, SCHEMATHESIS_HOOKS="", HYPOTHESIS_STORAGE_DIRECTORY=str(tmp_path / "hyp"))
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    (tmp_path.parent / "st-output.txt").write_text(proc.stdout + proc.stderr)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]


HOSTILE_NUMBERS = ["1_0", "+2", "\u0662", " 2", "0x2", "2.0", "", "99999999999999999999"]
HOSTILE_TEXT = ["\ud800", "a\x00b"]


def _deep(n):
    value = []
    for _ in range(n):
        value = [value]
    return value


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
    base = f"{live_server}/api/v1"
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
