"""Run log tail, and the OpenAI-compatible provider against a stub HTTP server on 127.0.0.1."""
import base64
import io
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from sqlalchemy import func, select

from webapp.automation.logger import tail
from webapp.automation.service import AutomationService
from webapp.extensions import db
from webapp.models import AITaskLog, AutomationRun, Content, Image

from conftest import drain


def test_tail_last_lines_of_multi_mb_file(tmp_path):
    p = tmp_path / "big.log"
    with open(p, "w", encoding="utf-8") as fh:
        for i in range(120_000):
            fh.write(f"2026-01-01T00:00:00Z [stage 4] line {i} ünïcødé ✓\n")
    assert p.stat().st_size > 5_000_000
    last = tail(p, 3)
    assert last == [f"2026-01-01T00:00:00Z [stage 4] line {i} ünïcødé ✓" for i in (119_997, 119_998, 119_999)]
    assert len(tail(p, 5000)) == 5000 and tail(p, 5000)[0].split()[-3] == "115000"
    assert tail(p, 1) == [last[-1]]


def test_tail_partial_last_line_short_file_and_missing(tmp_path):
    p = tmp_path / "x.log"
    p.write_bytes("a\nb\nhalf-written ✓".encode())
    assert tail(p, 2) == ["b", "half-written ✓"]
    assert tail(p, 10) == ["a", "b", "half-written ✓"]
    assert tail(tmp_path / "none.log", 5) == []
    # A multi-byte character cut by the block boundary still decodes.
    q = tmp_path / "y.log"
    q.write_text("é" * 40000 + "\nlast\n", encoding="utf-8")
    assert tail(q, 1) == ["last"]
    assert tail(q, 2)[0] == "é" * 40000


def test_tail_reads_only_the_end_of_a_huge_file(tmp_path):
    """A 64 GiB sparse file: reading it whole would exhaust memory; the tail reads a block."""
    p = tmp_path / "huge.log"
    with open(p, "wb") as fh:
        fh.truncate(64 * 1024 ** 3)
        fh.seek(0, 2)
        fh.write(b"\nfirst\nsecond\nthird\n")
    assert tail(p, 2) == ["second", "third"]


class StubAI(BaseHTTPRequestHandler):
    """A minimal OpenAI-compatible server: chat completions (JSON mode) and image generation."""
    mode = "ok"
    calls = []

    def log_message(self, *a):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        StubAI.calls.append((self.path, self.headers.get("Authorization")))
        if StubAI.mode == "down":
            self.send_response(503)
            self.end_headers()
            return
        if self.path.endswith("/chat/completions"):
            system = body["messages"][0]["content"]
            user = json.loads(body["messages"][1]["content"])
            if "clusters" in system:
                out = {"clusters": [{"name": "Topic " + k.split()[-1].title(), "keywords": [k]} for k in user["keywords"]]}
            elif "ideas" in system:
                out = {"ideas": [{"title": f"Idea about {k}", "outline": "## One\n## Two", "keywords": [k]}
                                 for k in user["keywords"][:2]]}
            elif "article" in system and "prompts" not in system:
                out = {"body": f"# {user['title']}\n\n" + "word " * 200}
            else:
                out = {"prompts": ["featured", "inline one", "inline two"]}
            self._json({"model": "stub-chat", "choices": [{"message": {"content": json.dumps(out)}}],
                        "usage": {"total_tokens": 3000}})
        elif self.path.endswith("/images/generations"):
            from PIL import Image as PILImage
            buf = io.BytesIO()
            PILImage.new("RGB", (8, 8), (1, 2, 3)).save(buf, format="PNG")
            self._json({"data": [{"b64_json": base64.b64encode(buf.getvalue()).decode()}]})
        else:
            self.send_response(404)
            self.end_headers()

    def _json(self, obj):
        data = json.dumps(obj).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def stub_ai(app):
    server = ThreadingHTTPServer(("127.0.0.1", 0), StubAI)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    StubAI.mode, StubAI.calls = "ok", []
    app.config.update(AI_PROVIDER="openai", OPENAI_BASE_URL=f"http://127.0.0.1:{server.server_port}/v1",
                      OPENAI_API_KEY="sk-test", ITEM_MAX_ATTEMPTS=2)
    yield StubAI
    server.shutdown()


def test_openai_provider_full_run_charges_tokens(app, factory, stub_ai):
    acc, _ = factory.account(credits=100_000)
    site = factory.site(acc, keywords=4)
    factory.fast_config(site)
    acc_id, site_id = acc.id, site.id
    run_id = AutomationService(acc_id).start(site_id).id
    drain(app)
    run = db.session.get(AutomationRun, run_id)
    assert run.status == "completed", run.error_message
    assert all(auth == "Bearer sk-test" for _, auth in stub_ai.calls)
    # 3000 tokens at 2 credits/1k = 6 credits for ideas/content/prompts (more than the flat price).
    rows = db.session.execute(select(AITaskLog.function, AITaskLog.credits, AITaskLog.tokens, AITaskLog.model)
                              .where(AITaskLog.run_id == run_id)).all()
    by_fn = {fn: (c, t, m) for fn, c, t, m in rows}
    assert by_fn["generate_content"] == (6, 3000, "stub-chat")
    assert by_fn["auto_cluster"][0] == 4  # 4 keywords flat beats 3000 tokens x 1/1k = 3
    assert run.total_credits_used == sum(r[1] for r in rows)
    assert db.session.execute(select(func.count()).select_from(Image).where(
        Image.site_id == site_id, Image.status == "generated")).scalar() == 3 * db.session.execute(
        select(func.count()).select_from(Content).where(Content.site_id == site_id)).scalar()


def test_provider_down_pauses_run_with_reason(app, factory, stub_ai):
    acc, _ = factory.account(credits=100_000)
    site = factory.site(acc, keywords=4)
    factory.fast_config(site)
    acc_id, site_id = acc.id, site.id
    stub_ai.mode = "down"
    run_id = AutomationService(acc_id).start(site_id).id
    drain(app)
    run = db.session.get(AutomationRun, run_id)
    assert run.status == "paused" and run.pause_reason == "AI provider unavailable"
    assert "HTTP 503" in run.error_message
    assert run.total_credits_used == 0
    stub_ai.mode = "ok"
    AutomationService(acc_id).resume(run_id)
    drain(app)
    assert db.session.get(AutomationRun, run_id).status == "completed"
