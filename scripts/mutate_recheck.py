"""Re-check mutmut's surviving mutants by running each one's tests on its own.

    .venv/bin/python scripts/mutate_recheck.py [--max-test-seconds S] [--jobs N] [--json FILE]

mutmut (fork mode) reported mutants of this project as surviving that fail their tests when
those tests run in a fresh process with the mutant active (e.g. a `claim()` that always
returns False, which tests/test_locks.py catches in milliseconds). So `make mutate` confirms
every survivor here: one `pytest -x` subprocess per mutant, in mutmut's `mutants/` tree,
`MUTANT_UNDER_TEST` set, running the tests mutmut's stats tie to the mutated function,
fastest first (only those recorded faster than --max-test-seconds, when given), plus any
--extra-tests (tests written for survivors after the run, which mutmut's stats do not know).
Prints one line per mutant and the score.
"""
import argparse
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MUTANTS = ROOT / "mutants"
MUTMUT = str(Path(sys.executable).parent / "mutmut")


def mutmut_results():
    out = subprocess.run([MUTMUT, "results", "--all", "true"], cwd=ROOT, capture_output=True, text=True).stdout
    if not out.strip():
        out = subprocess.run([MUTMUT, "results"], cwd=ROOT, capture_output=True, text=True).stdout
    status = {}
    for line in out.splitlines():
        if ":" in line:
            name, _, st = line.strip().rpartition(": ")
            status[name] = st.strip()
    return status


def recheck(name, tests, timeout):
    env = {**os.environ, "MUTANT_UNDER_TEST": name}
    env.pop("DATABASE_URL", None)
    try:
        p = subprocess.run([sys.executable, "-m", "pytest", "--rootdir=.", "-x", "-q", "-p", "no:randomly", *tests],
                           cwd=MUTANTS, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout"
    # 0: every test passed (the mutant survived); 5: no test ran; anything else: killed.
    return {0: "survived", 5: "no tests"}.get(p.returncode, "killed")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--max-test-seconds", type=float, default=None)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--extra-tests", nargs="*", default=[],
                    help="tests run for every survivor too (e.g. tests written for survivors after the run)")
    ap.add_argument("--json", default=str(MUTANTS / "recheck.json"))
    args = ap.parse_args()
    stats = json.loads((MUTANTS / "mutmut-stats.json").read_text())
    tests_by_fn, durations = stats["tests_by_mangled_function_name"], stats["duration_by_test"]
    status = mutmut_results()
    todo = [n for n, st in status.items() if st == "survived"]

    def one(name):
        tests = sorted(tests_by_fn.get(name.rsplit("__mutmut_", 1)[0], []), key=lambda t: durations.get(t, 0))
        if args.max_test_seconds is not None:
            tests = [t for t in tests if durations.get(t, 0) <= args.max_test_seconds]
        tests += [t for t in args.extra_tests if t not in tests]
        if not tests:
            return name, "survived"
        budget = 60 + 5 * sum(durations.get(t, 0) for t in tests)
        return name, recheck(name, tests, budget)

    with ThreadPoolExecutor(args.jobs) as pool:
        for name, st in pool.map(one, todo):
            status[name] = st
            print(f"{name}: {st}", flush=True)
    tested = {n: s for n, s in status.items() if s in ("killed", "survived", "timeout")}
    killed = sum(1 for s in tested.values() if s in ("killed", "timeout"))
    summary = {"mutants": len(status), "tested": len(tested), "killed_or_timeout": killed,
               "survived": sorted(n for n, s in tested.items() if s == "survived"),
               "no_tests": sorted(n for n, s in status.items() if s == "no tests"),
               "not_checked": sum(1 for s in status.values() if s == "not checked"),
               "score": round(100.0 * killed / max(1, len(tested)), 1)}
    Path(args.json).write_text(json.dumps({"status": status, "summary": summary}, indent=1, ensure_ascii=False))
    print(json.dumps({k: (len(v) if isinstance(v, list) else v) for k, v in summary.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
