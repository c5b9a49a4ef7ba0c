"""The README's command lines work as written in a fresh shell: the venv's flask (not whatever
`flask` comes first on PATH) finds every command listed."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.processes  # real processes (see pytest.ini)

ROOT = Path(__file__).resolve().parent.parent


def test_readme_flask_commands_exist_in_a_fresh_shell(tmp_path):
    readme = (ROOT / "README.md").read_text()
    lines = [line for line in readme.splitlines() if line.startswith(".venv/bin/flask --app wsgi ")]
    assert len(lines) >= 8, lines
    names = set()
    for line in lines:
        names.update(re.findall(r"(?:--app wsgi |· )([a-z][a-z-]+)", line))
    flask = ROOT / ".venv" / "bin" / "flask"
    if not flask.exists():  # a venv elsewhere (VENV=...): the same layout
        flask = Path(sys.executable).parent / "flask"
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "INSTANCE_PATH": str(tmp_path / "instance")}
    out = subprocess.run([str(flask), "--app", "wsgi", "--help"], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    listed = set(re.findall(r"^  ([a-z][a-z-]+)", out.stdout, re.M))
    assert names <= listed, (names - listed, out.stdout)
