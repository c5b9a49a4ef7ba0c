"""Security, second red team (issue 23, the security half): each finding reproduced and shown
fixed. Real app, real database, real Redis; the log and stdout findings start the real
processes (gunicorn, scripts/run.py)."""
import hashlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests

from webapp.extensions import db
from webapp.models import User

from conftest import ROOT, csrf_from, drain, stop_process, wait_for


@pytest.fixture(autouse=True)
def fresh_user_per_request(app):
    """Test-client requests share the test's app context: drop Flask-Login's and Flask-WTF's
    per-context caches before each request, as a real request's own context would."""
    from flask import g

    def _forget():
        g.pop("_login_user", None)
        g.pop("csrf_token", None)
    app.before_request_funcs.setdefault(None, []).insert(0, _forget)


def _token_login(client, email="acme@example.com", password="wrong-password", addr="198.51.100.20", **kw):
    return client.post("/api/v1/auth/token", json={"email": email, "password": password},
                       environ_base={"REMOTE_ADDR": addr}, **kw)


def _form_login(client, email="acme@example.com", password="password123", addr="198.51.100.20", host=None):
    env, kw = {"REMOTE_ADDR": addr}, ({"base_url": f"http://{host}"} if host else {})  # cookies are per host
    token = csrf_from(client.get("/login", environ_base=env, **kw).get_data(as_text=True))
    return client.post("/login", data={"email": email, "password": password, "csrf_token": token}, environ_base=env,
                       **kw)


# -- throttling without lock-outs ------------------------------------------------------------------
def test_an_attacker_elsewhere_cannot_lock_the_victim_out(app, client, factory):
    """Reproduces the finding (10 wrong passwords from anywhere locked the right one out for 15
    minutes): the attacker's address is refused, the victim's own address is not; the email's
    failures across addresses only slow its attempts down."""
    app.config.update(TRUSTED_PROXIES=(), LOGIN_SLOWDOWN_SECONDS=0.4)
    factory.account()
    attacker = "203.0.113.66"
    codes = [_token_login(client, email="ACME@example.com " if i % 2 else "acme@example.com", addr=attacker).status_code
             for i in range(12)]
    assert codes[:10] == [401] * 10 and codes[10:] == [429, 429], codes
    # the attacker, even with the right password now, is refused from its address (form too)
    assert _token_login(client, password="password123", addr=attacker).status_code == 429
    assert _form_login(client, addr=attacker).status_code == 429

    # the victim, from an address that has not failed: in, by the API and by the form
    started = time.monotonic()
    r = _token_login(client, password="password123", addr="198.51.100.20")
    assert r.status_code == 201, r.get_data(as_text=True)
    # ...after the slow-down the email's failures earned (a lower bound: holds under any load)
    assert time.monotonic() - started >= 0.4
    r = client.post("/api/v1/auth/token/", json={"email": "acme@example.com", "password": "password123"},
                    environ_base={"REMOTE_ADDR": "198.51.100.21"})
    assert r.status_code == 201
    r = _form_login(client, addr="198.51.100.20")
    assert r.status_code == 302 and r.headers["Location"].endswith("/")
    # a wrong password from a fresh address is a plain 401, not a refusal
    assert _token_login(client, addr="192.0.2.44").status_code == 401


def test_failures_spread_over_many_addresses_slow_down_without_refusing(app, client, factory):
    app.config.update(TRUSTED_PROXIES=(), LOGIN_SLOWDOWN_EMAIL="5 per minute", LOGIN_SLOWDOWN_SECONDS=0.5)
    factory.account()
    factory.account(name="Other")
    # below the ceiling: no wait at all is imposed (an upper bound would be a wall-time
    # assertion; what is checked is that the wait starts only past the ceiling)
    for i in range(5):
        assert _token_login(client, addr=f"192.0.2.{i + 1}").status_code == 401
    started = time.monotonic()
    assert _token_login(client, addr="192.0.2.100").status_code == 401  # never 429
    assert time.monotonic() - started >= 0.5
    started = time.monotonic()
    assert _token_login(client, password="password123", addr="192.0.2.101").status_code == 201
    assert time.monotonic() - started >= 0.5
    # another email is not slowed by this one's failures (its counter stays empty)
    from limits import parse
    from webapp.security import SLOWDOWN_SCOPE, limiter
    other = hashlib.sha256(b"other@example.com").hexdigest()[:32]
    assert limiter.limiter.test(parse("1 per minute"), limiter._key_prefix, SLOWDOWN_SCOPE, other)
    assert _token_login(client, email="other@example.com", password="password123", addr="192.0.2.1").status_code == 201


def test_per_address_limit_still_refuses_a_guessing_address(app, client, factory):
    app.config.update(TRUSTED_PROXIES=(), LOGIN_RATE_LIMIT_IP="4 per minute", LOGIN_SLOWDOWN_SECONDS=0)
    factory.account()
    for i in range(4):
        assert _token_login(client, email=f"guess{i}@example.com", addr="203.0.113.9").status_code == 401
    assert _token_login(client, password="password123", addr="203.0.113.9").status_code == 429
    assert _token_login(client, password="password123", addr="203.0.113.10").status_code == 201


# -- the API bucket is the parsed token --------------------------------------------------------------
def test_api_bucket_keys_the_parsed_token_not_the_raw_header(app, client, factory):
    app.config.update(API_RATE_LIMIT="4 per minute")
    _acc, user = factory.account()
    tok = factory.token(user)
    spellings = [f"Bearer {tok}", f"bearer {tok}", f"BEARER {tok}", f"Bearer  {tok}"]
    for header in spellings:
        r = client.get("/api/v1/sites/", headers={"Authorization": header})
        assert r.status_code == 200, (header, r.status_code)
    for header in spellings:  # one bucket: every spelling is over it now
        r = client.get("/api/v1/sites/", headers={"Authorization": header})
        assert r.status_code == 429, header
    # a garbage header does not buy a fresh bucket per variation: it is counted per address
    codes = [client.get("/api/v1/sites/", headers={"Authorization": f"Basic x{i}"},
                        environ_base={"REMOTE_ADDR": "192.0.2.9"}).status_code for i in range(6)]
    assert codes[:4] == [401] * 4 and codes[4:] == [429, 429], codes


# -- webhook targets: every encoding of an inward address ------------------------------------------
INWARD = ["http://[2002:7f00:1::]:8089/",          # 6to4 of 127.0.0.1 (the finding)
          "http://[2002:a00:1::1]/",               # 6to4 of 10.0.0.1
          "http://[64:ff9b::7f00:1]/",             # NAT64 of 127.0.0.1
          "http://[64:ff9b::a9fe:a9fe]/",          # NAT64 of the metadata service
          "http://[64:ff9b:1::a00:1]/",            # local-use NAT64
          "http://[2001:0:4136:e378:8000:63bf:80ff:fffe]/",  # Teredo
          "http://[::127.0.0.1]/",                 # IPv4-compatible
          "http://[::ffff:10.0.0.1]/",             # IPv4-mapped
          "http://[::ffff:0:7f00:1]/",             # IPv4-translated
          "http://[fec0::1]/",                     # site-local
          "http://127.1/", "http://0x7f000001/", "http://2130706433/", "http://017700000001/",  # inet_aton forms
          "http://localhost./", "http://10.0.0.1./"]


def _hooks_api(client, token, site_id, url):
    return client.post(f"/api/v1/sites/{site_id}/webhooks/", json={"url": url},
                       headers={"Authorization": f"Bearer {token}"})


@pytest.mark.parametrize("url", INWARD)
def test_inward_encodings_refused_when_saved(client, factory, url):
    acc, user = factory.account()
    site = factory.site(acc)
    r = _hooks_api(client, factory.token(user), site.id, url)
    assert r.status_code == 400 and "url" in r.json["errors"], r.json


def test_public_forms_still_accepted(client, factory):
    acc, user = factory.account()
    site = factory.site(acc)
    token = factory.token(user)
    for url in ("https://8.8.8.8/hook", "https://[2606:4700:4700::1111]/hook", "https://[64:ff9b::808:808]/",
                "https://hooks.example.com/x"):
        assert _hooks_api(client, token, site.id, url).status_code == 201, url


def _deliver_test_event(app, client, token, site_id, hook_id):
    h = {"Authorization": f"Bearer {token}"}
    assert client.post(f"/api/v1/sites/{site_id}/webhooks/{hook_id}/test/", headers=h).status_code in (200, 201, 202)
    drain(app)
    r = client.get(f"/api/v1/sites/{site_id}/webhooks/{hook_id}/deliveries/", headers=h)
    return r.json["data"]["deliveries"][0]


@pytest.mark.parametrize("url", ["http://[2002:7f00:1::]:8089/", "http://[64:ff9b::7f00:1]/", "http://localhost:9/"])
def test_inward_targets_refused_at_delivery_without_showing_addresses(app, client, factory, url):
    """Saved while private targets were allowed (or a name that later resolves inward): the
    delivery checks again, and the attempt's error names the kind, not the DNS answer."""
    app.config["WEBHOOK_ALLOW_PRIVATE"] = True
    acc, user = factory.account()
    site = factory.site(acc)
    token = factory.token(user)
    r = _hooks_api(client, token, site.id, url)
    assert r.status_code == 201, r.json
    app.config["WEBHOOK_ALLOW_PRIVATE"] = False
    d = _deliver_test_event(app, client, token, site.id, r.json["data"]["webhook"]["id"])
    error = d["attempts"][0]["error"]
    assert d["status"] == "failed" and "refused" in error and d["attempts"][0]["status_code"] is None, d
    rest = error.replace(urlsplit(url).hostname, "<host>")  # the URL's own host may be named
    for address in ("127.0.0.1", "::1", "7f00"):
        assert address not in rest, error


def test_connection_errors_do_not_show_the_address_connected_to(app, client, factory):
    """`localhost` resolves to 127.0.0.1 (and maybe ::1); nothing listens on the port: the
    error says the connection failed, not where it went."""
    app.config["WEBHOOK_ALLOW_PRIVATE"] = True
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    acc, user = factory.account()
    site = factory.site(acc)
    token = factory.token(user)
    r = _hooks_api(client, token, site.id, f"http://localhost:{port}/hook")
    d = _deliver_test_event(app, client, token, site.id, r.json["data"]["webhook"]["id"])
    error = d["attempts"][0]["error"]
    assert "connection failed" in error.lower(), error
    assert "127.0.0.1" not in error and "::1" not in error and "HTTPConnection" not in error, error


# -- secrets out of logs and stdout (real processes) -------------------------------------------------
GUNICORN = str(Path(sys.executable).parent / "gunicorn")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_gunicorn(app_env, tmp_path, name, extra_env=None, args=()):
    """gunicorn as production runs it (gunicorn.conf.py from the working directory: the gevent
    worker, our logger class), writing its access log to a file of this test."""
    port = _free_port()
    env = {**os.environ, **app_env, **(extra_env or {})}
    log = tmp_path / f"{name}-access.log"
    proc = subprocess.Popen([GUNICORN, "--config", "gunicorn.conf.py", "--bind", f"127.0.0.1:{port}",
                             "--workers", "1", "--access-logfile", str(log), *args, "wsgi:app"],
                            cwd=ROOT, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=open(tmp_path / f"{name}-error.log", "wb"))

    def up():
        try:
            return requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
        except requests.RequestException:
            return proc.poll() is not None  # exited: stop waiting, the caller sees it
    wait_for(up, timeout=60, message=f"gunicorn {name} up")
    assert proc.poll() is None, (tmp_path / f"{name}-error.log").read_text()[-2000:]
    return proc, f"http://127.0.0.1:{port}", log


def test_invitation_token_never_in_the_access_log(app, app_env, client, factory, tmp_path):
    """The finding: `GET /invite/<one-time token>` sat in the access log. New links carry the
    token in the fragment (never sent) and accept it by POST; an old-style link's path, and the
    Referer its page's assets send, are scrubbed."""
    from webapp.team import invite
    _acc, owner = factory.account()
    _user, old_style = invite(owner, "old@example.com", "viewer")
    _user, new_style = invite(owner, "new@example.com", "viewer")
    # Every request logged (polling and static files are left out by default): the scrubbing is what is tested.
    proc, base, log = _start_gunicorn(app_env, tmp_path, "web", extra_env={"ACCESS_LOG": "1"})
    try:
        s = requests.Session()
        page = s.get(f"{base}/invite/{old_style}", headers={"Referer": f"{base}/invite/{old_style}"}, timeout=30)
        assert page.status_code == 200 and "old@example.com" in page.text
        s.get(f"{base}/static/js/app.js", headers={"Referer": f"{base}/invite/{old_style}"}, timeout=30)
        # the new form: GET /invite (no token anywhere in the URL), the token in the POST body
        form = s.get(f"{base}/invite", timeout=30)
        assert form.status_code == 200 and 'id="invite-token"' in form.text
        r = s.post(f"{base}/invite", data={"csrf_token": csrf_from(form.text), "token": new_style,
                                           "password": "a-good-password", "password_again": "a-good-password"},
                   allow_redirects=False, timeout=30)
        assert r.status_code == 302, r.text[:500]

        def logged():
            text = log.read_text() if log.exists() else ""
            return text if text.count("/invite") >= 4 and "app.js" in text else None
        text = wait_for(logged, timeout=30, message="access log lines")
    finally:
        stop_process(proc)
    text = log.read_text()
    assert old_style not in text and new_style not in text, text
    assert "/invite/[redacted]" in text
    db.session.remove()
    assert db.session.execute(db.select(User).where(User.email == "new@example.com")).scalar_one() \
        .check_password("a-good-password")


def test_control_socket_one_per_instance_or_none(app_env, tmp_path):
    """Two instances on one machine used to share gunicorn's default control socket path."""
    runtime = tmp_path / "xdg"
    runtime.mkdir(mode=0o700)
    env = {"XDG_RUNTIME_DIR": str(runtime), "HOME": str(tmp_path)}
    a = b = c = None
    try:
        a, _, _ = _start_gunicorn(app_env, tmp_path, "a", env)
        b, _, _ = _start_gunicorn(app_env, tmp_path, "b", env)
        assert not (runtime / "gunicorn.ctl").exists() and not (tmp_path / ".gunicorn").exists()
        own = tmp_path / "c.ctl"
        c, _, _ = _start_gunicorn(app_env, tmp_path, "c", {**env, "GUNICORN_CONTROL_SOCKET": str(own)})
        wait_for(own.exists, timeout=30, message="the instance's own control socket")
        assert not (runtime / "gunicorn.ctl").exists()
    finally:
        for p in (a, b, c):
            if p is not None:
                stop_process(p)


def test_make_run_prints_no_redis_password(tmp_path):
    """`make run` printed the embedded Redis URL, password included, on stdout."""
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "SECRET_KEY")}
    instance = tmp_path / "instance"
    port = _free_port()
    env.update(INSTANCE_PATH=str(instance), PORT=str(port))
    proc = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "run.py")], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True, text=True)
    out = []
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            line = proc.stdout.readline()
            out.append(line)
            if "Press Ctrl-C" in line or proc.poll() is not None:
                break
        url = (instance / "redis.url").read_text().strip()
        password = re.match(r"redis://:([^@]+)@", url).group(1)
        # let the children start and log (they share this stdout), then stop as Ctrl-C does
        def web_up():
            try:
                return requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
            except requests.RequestException:
                return proc.poll() is not None
        wait_for(web_up, timeout=60, message="the web server of make run")
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            rest, _ = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            rest, _ = proc.communicate()
    text = "".join(out) + rest
    assert "embedded Redis at redis://:***@127.0.0.1:" in text, text[-3000:]
    assert password not in text, "the Redis password was printed"


def _create_app_stderr(tmp_path, redis_url):
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "SECRET_KEY")}
    env.update(INSTANCE_PATH=str(tmp_path / "inst"), REDIS_URL=redis_url, SECRET_KEY="x")
    r = subprocess.run([sys.executable, "-c", "from webapp import create_app; create_app()"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stderr


def test_warning_for_a_redis_without_password_elsewhere(tmp_path):
    err = _create_app_stderr(tmp_path, "redis://192.0.2.10:6379/0")
    assert "WARNING" in err and "REDIS_URL redis://192.0.2.10:6379/0 has no password" in err, err
    assert "has no password" not in _create_app_stderr(tmp_path, "redis://:s3cret@192.0.2.10:6379/0")
    assert "has no password" not in _create_app_stderr(tmp_path, "redis://127.0.0.1:6379/0")
    assert "has no password" not in _create_app_stderr(tmp_path, "redis://[::1]:6379/0")


# -- the invite form does not reveal accounts elsewhere; links from PUBLIC_URL ------------------------
def _invite(client, email, host=None):
    kw = {"base_url": f"http://{host}"} if host else {}  # the Host header the request carries
    csrf = csrf_from(client.get("/users", **kw).get_data(as_text=True))
    return client.post("/users/invite", data={"csrf_token": csrf, "email": email, "role": "viewer"}, **kw)


def test_invite_form_does_not_say_an_email_exists_elsewhere(app, client, factory):
    factory.account()
    factory.account(name="Elsewhere", email="taken@example.com")
    assert _form_login(client).status_code == 302
    r = _invite(client, "TAKEN@example.com")
    page = r.get_data(as_text=True)
    assert r.status_code == 400 and "cannot be invited" in page
    for hint in ("already exists", "Elsewhere", "another account", "already a member"):
        assert hint not in page, hint
    assert db.session.execute(db.select(User).where(User.email == "taken@example.com")).scalar_one().account.name \
        == "Elsewhere"  # untouched
    # within one's own account it may say so
    r = _invite(client, "acme@example.com")
    assert r.status_code == 400 and "already a member of this account" in r.get_data(as_text=True)


def test_invitation_links_come_from_public_url_never_the_host_header(app, client, factory):
    app.config["PUBLIC_URL"] = "https://console.example.com"
    factory.account()
    assert _form_login(client, host="evil.example").status_code == 302
    r = _invite(client, "fresh@example.com", host="evil.example")
    link = re.search(r'id="invite-link">([^<]+)<', r.get_data(as_text=True)).group(1)
    assert r.status_code == 201 and link.startswith("https://console.example.com/invite#"), link
    assert "evil.example" not in r.get_data(as_text=True)


def test_mail_links_use_public_url(app, factory):
    from webapp.notify.mail import compose
    app.config["PUBLIC_URL"] = "https://console.example.com/"[:-1]
    acc, _user = factory.account()
    site = factory.site(acc)
    _subject, body = compose("run.completed", {"run_id": 7, "status": "completed"}, None, site.id)
    assert "https://console.example.com/runs/7" in body


def test_trusted_hosts_from_public_url(app_env, monkeypatch, factory):
    from webapp import create_app
    for k, v in app_env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("PUBLIC_URL", "https://console.example.com")
    app = create_app({"TESTING": True})
    assert app.config["TRUSTED_HOSTS"] == ["console.example.com", "localhost", "127.0.0.1"]
    c = app.test_client()
    assert c.get("/login", headers={"Host": "console.example.com"}).status_code == 200
    assert c.get("/healthz", headers={"Host": "127.0.0.1:5000"}).status_code == 200
    assert c.get("/login", headers={"Host": "evil.example"}).status_code == 400
    # an explicit list wins; unset PUBLIC_URL checks nothing (development)
    monkeypatch.setenv("TRUSTED_HOSTS", "a.example, .b.example")
    assert create_app({"TESTING": True}).config["TRUSTED_HOSTS"] == ["a.example", ".b.example"]
    monkeypatch.delenv("TRUSTED_HOSTS")
    monkeypatch.delenv("PUBLIC_URL")
    app = create_app({"TESTING": True})
    assert app.config["TRUSTED_HOSTS"] is None and app.config["PUBLIC_URL"].startswith("http://localhost:")


@pytest.mark.parametrize("bad", ["console.example.com", "ftp://x.example", "https://x.example/?a=1",
                                 "https://u:p@x.example"])
def test_public_url_checked_at_start(bad):
    from webapp.config import _public_url
    with pytest.raises(SystemExit, match="PUBLIC_URL"):
        _public_url({"PUBLIC_URL": bad})


# -- changing a password ------------------------------------------------------------------------------
def test_set_password_cli(app, runner, client, factory):
    _acc, user = factory.account()
    assert _form_login(client).status_code == 302
    assert client.get("/").status_code == 200
    r = runner.invoke(args=["set-password", "ACME@example.com", "--password", "a-brand-new-one"])
    assert r.exit_code == 0 and "sessions were ended" in r.output, r.output
    assert client.get("/").status_code == 302  # the open session ended
    db.session.remove()
    assert db.session.get(User, user.id).check_password("a-brand-new-one")
    for args, says in ((["set-password", "ghost@example.com", "--password", "long-enough"], "unknown user"),
                       (["set-password", "acme@example.com", "--password", "short"], "8-255"),
                       (["set-password", "acme@example.com", "--password", "nul\x00in-it"], "NUL")):
        r = runner.invoke(args=args)
        lines = [ln for ln in r.output.splitlines() if ln.strip()]
        assert r.exit_code == 1 and len(lines) == 1 and lines[0].startswith("Error: ") and says in lines[0], r.output
    db.session.remove()
    assert db.session.get(User, user.id).check_password("a-brand-new-one")  # nothing half-applied


def test_set_password_cli_prompts_or_reads_stdin(app, runner, factory):
    """Without --password the password is not on the command line: asked twice, hidden, or one
    line of stdin (--password-stdin). Errors: exit 1 and one `Error:` line, nothing changed."""
    _acc, user = factory.account()
    r = runner.invoke(args=["set-password", "acme@example.com"], input="typed-and-hidden\ntyped-and-hidden\n")
    assert r.exit_code == 0 and "sessions were ended" in r.output, r.output
    assert "typed-and-hidden" not in r.output  # hidden, not echoed
    db.session.remove()
    assert db.session.get(User, user.id).check_password("typed-and-hidden")
    r = runner.invoke(args=["set-password", "acme@example.com", "--password-stdin"], input="from stdin pw\n")
    assert r.exit_code == 0, r.output
    db.session.remove()
    assert db.session.get(User, user.id).check_password("from stdin pw")  # inner spaces kept
    for args, given, says in ((["set-password", "acme@example.com"], "one-password\nanother-one\n", "do not match"),
                              (["set-password", "acme@example.com", "--password-stdin"], "", "nothing on stdin"),
                              (["set-password", "acme@example.com", "--password-stdin"], "short\n", "8-255"),
                              (["set-password", "acme@example.com", "--password-stdin", "--password", "x" * 9],
                               "", "not both")):
        r = runner.invoke(args=args, input=given)
        errors = [ln for ln in r.output.splitlines() if "Error" in ln]
        assert r.exit_code == 1 and len(errors) == 1 and says in errors[0], r.output
        assert r.output.rstrip().splitlines()[-1] == errors[0]
    db.session.remove()
    assert db.session.get(User, user.id).check_password("from stdin pw")


def _change(client, current, new, again=None, addr="198.51.100.20"):
    env = {"REMOTE_ADDR": addr}
    csrf = csrf_from(client.get("/account/password", environ_base=env).get_data(as_text=True))
    return client.post("/account/password", environ_base=env, data={
        "csrf_token": csrf, "current_password": current, "new_password": new,
        "new_password_again": new if again is None else again})


def test_change_password_page(app, client, factory):
    _acc, user = factory.account()
    other_browser = app.test_client()
    assert _form_login(client).status_code == 302
    assert _form_login(other_browser).status_code == 302
    token = factory.token(user)

    r = _change(client, "wrong-password", "a-brand-new-one")
    page = r.get_data(as_text=True)
    assert r.status_code == 400 and 'id="current-error"' in page and "not your current password" in page
    r = _change(client, "password123", "short")
    assert r.status_code == 400 and 'id="new-error"' in r.get_data(as_text=True) and "8-255" in r.get_data(as_text=True)
    r = _change(client, "password123", "a-brand-new-one", again="something-else")
    assert r.status_code == 400 and 'id="again-error"' in r.get_data(as_text=True)
    db.session.remove()
    assert db.session.get(User, user.id).check_password("password123")  # nothing applied yet

    r = _change(client, "password123", "a-brand-new-one")
    assert r.status_code == 302
    assert client.get("/").status_code == 200            # this browser stays logged in
    assert other_browser.get("/").status_code == 302     # every other session ended
    assert client.get("/api/v1/sites/", headers={"Authorization": f"Bearer {token}"}).status_code == 200  # tokens kept
    assert _token_login(app.test_client(), password="a-brand-new-one").status_code == 201
    assert _token_login(app.test_client(), password="password123").status_code == 401


def test_wrong_current_passwords_are_limited_per_user(app, client, factory):
    app.config.update(LOGIN_RATE_LIMIT_EMAIL="3 per minute")
    factory.account()
    assert _form_login(client).status_code == 302
    for _ in range(3):
        assert _change(client, "guess", "a-brand-new-one").status_code == 400
    assert _change(client, "password123", "a-brand-new-one").status_code == 429


def test_an_ipv6_client_cannot_rotate_through_its_own_block(app, client, factory):
    """Per-address limits count an IPv6 client by its /64: a subscriber's block is 2^64
    addresses, one per guess would make the limit meaningless."""
    app.config.update(TRUSTED_PROXIES=(), LOGIN_RATE_LIMIT_IP="4 per minute", LOGIN_SLOWDOWN_SECONDS=0)
    factory.account()
    for i in range(4):
        assert _token_login(client, email=f"guess{i}@example.com", addr=f"2001:db8:1:2::{i + 1:x}").status_code == 401
    assert _token_login(client, password="password123", addr="2001:db8:1:2:ffff::9").status_code == 429
    assert _token_login(client, password="password123", addr="2001:db8:1:3::1").status_code == 201  # another /64
