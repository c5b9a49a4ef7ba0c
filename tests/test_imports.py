"""The house's import contracts (`.importlinter`): layers models <- services <- web/api, a low
floor (security, metrics, config, connections) that imports no room above it, no import circle.
Checked with import-linter on the code as it stands, and shown to fail on a circle put back."""
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINT = str(Path(sys.executable).parent / "lint-imports")


# import-linter's one-second run stays in `make test-quick` (conftest's `processes` marking).
QUICK_LOOP_HELPERS = {"_lint"}


def _lint(where):
    return subprocess.run([LINT, str(where / ".importlinter"), "--no-cache"], cwd=where,
                          capture_output=True, text=True, timeout=120)


def test_import_contracts_are_kept():
    out = _lint(ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Contracts: 3 kept, 0 broken." in out.stdout


def test_a_low_floor_reaching_up_breaks_the_contracts(tmp_path):
    # The import that closed the old circle (security.py taking the API blueprint), put back.
    shutil.copytree(ROOT / "webapp", tmp_path / "webapp", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / ".importlinter", tmp_path)
    security = tmp_path / "webapp" / "security.py"
    security.write_text(security.read_text() + "\n\ndef _api():\n    from .api import bp\n    return bp\n")
    out = _lint(tmp_path)
    assert out.returncode != 0
    assert "webapp.security is not allowed to import webapp.api" in out.stdout
    assert "No import circles BROKEN" in out.stdout
