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
