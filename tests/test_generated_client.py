"""A client generated from /api/v1/openapi.json by openapi-python-client (a consumer nobody here
wrote) imports, and drives one whole run against the real server (gunicorn, as `make run` starts
it) and a real worker: token → site → config → keyword import → run_now → current_run until the
run is over. What broke it before: a component name the generator also gives an inline enum
(it then dropped `Run`), operations offering one body as JSON and as a form (`NameError: Unset`,
JSON sent as multipart), and gunicorn's HTML 414."""
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import start_worker, stop_process, wait_for

BIN = Path(sys.executable).parent


pytestmark = pytest.mark.processes  # every test here starts processes of its own

@pytest.fixture
def generated(client, tmp_path, monkeypatch):
    """The client package, generated into tmp_path and importable (its modules, by name)."""
    pytest.importorskip("openapi_python_client", reason="openapi-python-client is not installed")
    doc = tmp_path / "openapi.json"
    doc.write_text(json.dumps(client.get("/api/v1/openapi.json").json))
    out = tmp_path / "acclient"
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")  # its ruff post-hook
    proc = subprocess.run([str(BIN / "openapi-python-client"), "generate", "--path", str(doc), "--meta", "none",
                           "--output-path", str(out)], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    # Every warning means a piece of the document the generator could not use (a dropped model, a
    # skipped body): none allowed.
    said = proc.stdout + proc.stderr
    assert "Warning" not in said and "WARNING" not in said and "Unable to" not in said, said[-4000:]
    # --meta none writes the package itself at the output path
    package = out if (out / "__init__.py").exists() else next(p for p in out.iterdir() if (p / "__init__.py").exists())
    monkeypatch.syspath_prepend(str(package.parent))
    name = package.name
    for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
        del sys.modules[key]
    return name, package


def test_every_operation_module_imports(generated, client):
    name, package = generated
    ops = sorted(package.glob("api/*/*.py"))
    ops = [p for p in ops if p.name != "__init__.py"]
    doc = client.get("/api/v1/openapi.json").json
    n_ops = sum(len(item) for item in doc["paths"].values())
    assert len(ops) == n_ops, (len(ops), n_ops)
    for path in ops:
        module = importlib.import_module(f"{name}.api.{path.parent.name}.{path.stem}")
        assert callable(module.sync_detailed), path
    models = importlib.import_module(f"{name}.models")
    # every component schema became a model (the generator drops the ones it cannot name)
    for component in ("Run", "RunStatusOut", "CurrentRun", "ConfigUpdate", "TokenRequest", "Error"):
        assert hasattr(models, component), component


def test_a_whole_run_through_the_generated_client(generated, app, app_env, factory, gunicorn_web):
    name, _package = generated
    mod = lambda path: importlib.import_module(f"{name}.{path}")  # noqa: E731
    models = mod("models")
    factory.account(credits=100_000)  # acme@example.com / password123
    host = gunicorn_web(AI_LOCAL_LATENCY_MS=0)
    base = f"http://{host}"
    Client, AuthenticatedClient = mod("client").Client, mod("client").AuthenticatedClient

    anon = Client(base_url=base, raise_on_unexpected_status=True, timeout=30)
    tok = mod("api.auth.issue_token").sync(client=anon, body=models.TokenRequest(
        email="acme@example.com", password="password123", name="generated"))
    assert isinstance(tok, models.TokenResponse) and tok.success, tok
    api = AuthenticatedClient(base_url=base, token=tok.data.token, raise_on_unexpected_status=True, timeout=30)

    # a wrong password is an Error model (the JSON body the generator expects), not None
    bad = mod("api.auth.issue_token").sync(client=anon, body=models.TokenRequest(
        email="acme@example.com", password="wrong"))
    assert isinstance(bad, models.Error) and bad.success is False

    created = mod("api.sites.create").sync(client=api, body=models.SiteCreate(name="Generated", domain="example.org"))
    site_id = created.data.site.id
    cfg = mod("api.automation.update_config").sync(client=api, site_id=site_id, body=models.ConfigUpdate(
        within_stage_delay=0, between_stage_delay=0))
    assert cfg.success and cfg.data.within_stage_delay == 0, cfg
    from webapp.demo import demo_keywords
    body_cls = next(getattr(models, n) for n in dir(models) if n.startswith("KeywordsBulk"))
    report = mod("api.planner.keywords_bulk").sync(client=api, site_id=site_id,
                                                   body=body_cls(keywords=demo_keywords(4)))
    assert report.data.created == 4, report

    worker = start_worker(app_env, extra_env={"AI_LOCAL_LATENCY_MS": "0"})
    try:
        started = mod("api.runs.run_now").sync(client=api, site_id=site_id,
                                               body=models.ReasonBody(reason="generated client"))
        assert started.data.status in ("running", "completed"), started
        run_id = started.data.run_id
        current_run = mod("api.runs.current_run")
        seen = []

        def finished():
            answer = current_run.sync(client=api, site_id=site_id)
            assert answer.success, answer
            run = answer.data.run
            if run is not None:  # the Run model the generator used to drop
                assert isinstance(run, models.Run) and run.run_id == run_id
                seen.append(str(run.status))
            return run is None
        wait_for(finished, timeout=180, interval=0.5, message="the run to end")
    finally:
        stop_process(worker)
    detail = mod("api.runs.run_detail").sync(client=api, run_id=run_id)
    run = detail.data.run
    assert str(run.status) == "completed", (run.status, run.error_message)
    assert [e.action for e in run.events][0] == "start" and run.events[0].reason == "generated client"
    assert run.stage_1_result.items_processed == 4

    # An over-long URL is the app's JSON 414 (gunicorn lets it through), which the client parses.
    audit = mod("api.audit.audit_log").sync_detailed(client=api, actor="x" * 5000)
    assert audit.status_code == 414 and isinstance(audit.parsed, models.Error), (audit.status_code, audit.content[:200])
    # and an over-long header the app's JSON 431
    big = api.get_httpx_client().get("/api/v1/ping/", headers={"X-Big": "y" * 9000})
    assert big.status_code == 431 and big.json()["success"] is False, big.text[:200]
