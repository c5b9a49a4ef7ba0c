"""An OpenAI-compatible stub server for tests and benchmarks (127.0.0.1 only).

Chat completions answer the JSON the provider asks for (clusters, ideas, article, prompts);
`images/generations` answers a tiny PNG as b64_json. Optional, like a real provider:
- `latency`: seconds per request;
- `max_in_flight`: more concurrent requests than this get 429 + Retry-After;
- `rpm`: more than this many accepted requests in any 60 s get 429 + Retry-After (the
  time until the oldest leaves the window);
- `refuse_first`: the first N requests get 429 (Retry-After `retry_after`);
- `always_429`: every request gets 429.

    python bench/ai_stub.py --port 8901 --latency-ms 500 [--rpm 600] [--max-in-flight 8]
"""
import argparse
import base64
import io
import json
import math
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def _png():
    from PIL import Image
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


class StubState:
    def __init__(self, latency=0.0, max_in_flight=None, rpm=None, refuse_first=0, retry_after=0.2,
                 always_429=False, send_retry_after=True):
        self.latency, self.max_in_flight, self.rpm = latency, max_in_flight, rpm
        self.refuse_first, self.retry_after, self.always_429 = refuse_first, retry_after, always_429
        self.send_retry_after = send_retry_after
        self.fail_5xx = None      # callable(path, body) -> True: answer 500 (a provider outage for that call)
        self.failed_5xx = 0
        self.lock = threading.Lock()
        self.in_flight = self.peak_in_flight = 0
        self.requests = self.limited = 0
        self.accepted = deque()   # monotonic times of accepted requests (rpm window)
        self.ok_times = []        # monotonic times of answered (200) requests
        self.starts = []          # (monotonic time, path) of every request admitted
        self.busy = 0.0           # integral of requests in flight over time (average = busy / span)
        self.timeline = []        # (wall time, requests in flight) at every change
        self._changed = None
        self.png = _png()

    def admit(self, path=""):
        """None to serve the request, or the Retry-After seconds of a 429."""
        with self.lock:
            self.requests += 1
            now = time.monotonic()
            if self.always_429 or self.requests <= self.refuse_first:
                self.limited += 1
                return self.retry_after
            if self.max_in_flight is not None and self.in_flight >= self.max_in_flight:
                self.limited += 1
                return self.retry_after
            if self.rpm:
                while self.accepted and self.accepted[0] <= now - 60:
                    self.accepted.popleft()
                if len(self.accepted) >= self.rpm:
                    self.limited += 1
                    return max(0.01, self.accepted[0] + 60 - now)
                self.accepted.append(now)
            self._tick(now)
            self.in_flight += 1
            self.timeline.append((time.time(), self.in_flight))
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
            self.starts.append((now, path))
            return None

    def _tick(self, now):
        if self._changed is not None:
            self.busy += self.in_flight * (now - self._changed)
        self._changed = now

    def time_at_levels(self, start, end):
        """{requests in flight: seconds at that level} between two wall times."""
        with self.lock:
            points = list(self.timeline)
        out, level, last = {}, 0, start
        for t, n in points:
            if t > start:
                out[level] = out.get(level, 0.0) + (min(t, end) - last)
                last = min(t, end)
            if t >= end:
                break
            level = n
        out[level] = out.get(level, 0.0) + max(0.0, end - last)
        return {k: round(v, 2) for k, v in sorted(out.items())}

    def average_in_flight(self, start, end):
        """Requests in flight on average between two wall times (time.time())."""
        with self.lock:
            points = list(self.timeline)
        total, level, last = 0.0, 0, start
        for t, n in points:  # n: in flight from t on
            if t > start:
                total += level * (min(t, end) - last)
                last = min(t, end)
            if t >= end:
                break
            level = n
        total += level * max(0.0, end - last)
        return total / max(1e-9, end - start)

    def done(self):
        with self.lock:
            now = time.monotonic()
            self._tick(now)
            self.in_flight -= 1
            self.timeline.append((time.time(), self.in_flight))
            self.ok_times.append(now)


def make_handler(state):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers and body go out as separate writes: without TCP_NODELAY, Nagle's algorithm and
        # the client's delayed ACK add ~40 ms to every keep-alive request.
        disable_nagle_algorithm = True

        def log_message(self, *a):
            pass

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
            if state.fail_5xx is not None and state.fail_5xx(self.path, body):
                with state.lock:
                    state.failed_5xx += 1
                return self._json({"error": {"message": "upstream failure", "type": "server_error"}}, 500)
            wait = state.admit(self.path)
            if wait is not None:
                headers = {}
                if state.send_retry_after:
                    headers = {"Retry-After": str(math.ceil(wait)), "retry-after-ms": str(int(wait * 1000))}
                return self._json({"error": {"message": "rate limited", "type": "rate_limit"}}, 429, headers)
            try:
                if state.latency:
                    time.sleep(state.latency)
                if self.path.endswith("/chat/completions"):
                    self._json({"model": "stub-chat", "choices": [{"message": {"role": "assistant",
                                "content": json.dumps(self._answer(body))}, "index": 0, "finish_reason": "stop"}],
                                "usage": {"total_tokens": 1000}})
                elif self.path.endswith("/images/generations"):
                    self._json({"created": 0, "data": [{"b64_json": state.png}]})
                else:
                    self._json({"error": {"message": "not found"}}, 404)
            finally:
                state.done()

        @staticmethod
        def _answer(body):
            system = body["messages"][0]["content"]
            user = json.loads(body["messages"][1]["content"])
            if "clusters" in system:
                groups = {}
                for k in user["keywords"]:
                    groups.setdefault(k.split()[-1].title(), []).append(k)
                return {"clusters": [{"name": f"Topic {n}", "keywords": ks} for n, ks in groups.items()]}
            if "ideas" in system:
                # One idea per two keywords, like the local provider (and most real prompts).
                ks = user["keywords"]
                return {"ideas": [{"title": f"Idea about {ks[i]}", "outline": "## One\n## Two",
                                   "keywords": ks[i:i + 2]} for i in range(0, len(ks), 2)][:5]}
            if "prompts" in system:
                return {"prompts": [f"featured {user['title']}", "inline one", "inline two"]}
            return {"body": f"# {user['title']}\n\n" + "word " * 200}

        def _json(self, obj, status=200, headers=None):
            data = json.dumps(obj).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

    return Handler


def serve(state, port=0):
    """Start the stub in a thread: (server, base_url). Stop with server.shutdown()."""
    server = ThreadingHTTPServer(("127.0.0.1", port), make_handler(state))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_port}/v1"


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, default=8901)
    p.add_argument("--latency-ms", type=int, default=0)
    p.add_argument("--max-in-flight", type=int)
    p.add_argument("--rpm", type=int)
    a = p.parse_args()
    state = StubState(a.latency_ms / 1000, a.max_in_flight, a.rpm)
    server, url = serve(state, a.port)
    print(url, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.shutdown()


if __name__ == "__main__":
    main()
