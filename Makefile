# The two commands of the README: `make run` and `make test`. Needs make and Python >= 3.11.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: run test durations test-quick install install-dev browser-deps mutate

run: $(VENV)/.deps
	$(PY) scripts/run.py

# The suite in parallel (pytest-xdist), each worker with a database and a Redis of its own
# (tests/conftest.py). Two workers more than cores: many tests spend much of their time waiting
# on the processes they start (2 cores: 4 workers 292 s, 3 workers 305 s; docs/TESTING.md).
# TEST_WORKERS=0 runs it in this one process, as before.
TEST_WORKERS ?= $(shell expr $$(nproc 2>/dev/null || echo 1) + 2)
# Only the plugin the suite uses (xdist): pytest's automatic loading of every installed plugin
# (schemathesis', hypothesis', anyio's) cost ~1.8 s of CPU in each pytest process (the
# controller, each worker, each child pytest a test starts); schemathesis is used as a
# library and a command, not as a pytest plugin.
PYTEST := PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 $(PY) -m pytest -p xdist.plugin
test: $(VENV)/.deps-dev browser-deps
	$(PYTEST) -q -n $(TEST_WORKERS) --dist worksteal $(PYTEST_ARGS)

# The suite with each test's seconds written to tests/durations.json, which `make test` reads to
# give every xdist worker an equal share of the long tests (tests/conftest.py: balanced_order).
durations: $(VENV)/.deps-dev browser-deps
	WRITE_DURATIONS=1 $(PYTEST) -q -n $(TEST_WORKERS) --dist worksteal $(PYTEST_ARGS)

# The tests that start no process of their own (no worker.py, gunicorn, scheduler, Chromium,
# make run, child pytest): the `processes` marker (pytest.ini) leaves those out.
test-quick: $(VENV)/.deps-dev
	$(PYTEST) -q -n $(TEST_WORKERS) --dist worksteal -m "not processes" $(PYTEST_ARGS)

# Mutation testing of the engine's control, locking, billing and recovery code (slow: not part
# of `make test` or CI). MUTANTS narrows it (mutmut globs); results: `$(VENV)/bin/mutmut results`.
MUTATE_CHILDREN ?= 2
MUTANTS ?= webapp.automation.locks.* webapp.automation.billing.* webapp.automation.recovery.* \
	webapp.automation.tasks.xǁRunExecutorǁok_to_continue* webapp.automation.tasks.xǁRunExecutorǁ_status* \
	webapp.automation.tasks.xǁRunExecutorǁwait_for_exec_lock* webapp.automation.tasks.xǁRunExecutorǁsuperseded* \
	webapp.automation.tasks.xǁRunExecutorǁstep__* webapp.automation.tasks.xǁRunExecutorǁmay_start* \
	webapp.automation.tasks.xǁRunExecutorǁ_lost* webapp.automation.heartbeat.* \
	webapp.automation.tasks.xǁRunExecutorǁ_pause* \
	webapp.automation.tasks.xǁRunExecutorǁenqueue_next* \
	webapp.automation.service.xǁAutomationServiceǁstart__* webapp.automation.service.xǁAutomationServiceǁ_take_ended_runs_lock* \
	webapp.automation.service.xǁAutomationServiceǁ_transition* webapp.automation.service.xǁAutomationServiceǁpause* \
	webapp.automation.service.xǁAutomationServiceǁresume* webapp.automation.service.xǁAutomationServiceǁcancel* \
	webapp.automation.service.x_finish_side_effects*
mutate: $(VENV)/.deps-dev
	-$(VENV)/bin/mutmut run --max-children $(MUTATE_CHILDREN) $(foreach m,$(MUTANTS),'$(m)')
	$(PY) scripts/mutate_recheck.py --jobs $(MUTATE_CHILDREN) --extra-tests tests/test_recovery.py tests/test_hooks.py tests/test_heartbeat.py \
		tests/test_engine_control.py::test_a_told_job_starts_nothing_whatever_the_database_says \
		tests/test_engine_control.py::test_a_superseded_job_leaves_while_the_latest_waits_for_the_lock

# Debian's chromium + chromium-driver for the browser tests: installed when possible, else one
# line saying what to install (scripts/browser_deps.sh).
browser-deps:
	@sh scripts/browser_deps.sh

install: $(VENV)/.deps
install-dev: $(VENV)/.deps-dev

$(VENV)/bin/python:
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python >= 3.11 is required"'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(VENV)/.deps: requirements.txt | $(VENV)/bin/python
	$(PY) -m pip install -q -r requirements.txt
	@touch $@

$(VENV)/.deps-dev: requirements.txt requirements-dev.txt | $(VENV)/bin/python
	$(PY) -m pip install -q -r requirements-dev.txt
	@touch $@ $(VENV)/.deps
