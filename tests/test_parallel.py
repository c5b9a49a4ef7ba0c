"""The parallel suite's isolation (tests/conftest.py): each xdist worker's PostgreSQL database
keeps a test name, Redis databases count down from the given one, and a worker's own URLs are
what the processes it starts see."""
import os

import pytest

from conftest import is_test_database, worker_database_url, worker_redis_url


def test_worker_database_names_stay_test_names():
    assert worker_database_url("postgresql://postgres@127.0.0.1:5432/test", "gw0").endswith("/test_gw0")
    assert worker_database_url("postgresql://u:pw@db/test_app", "gw3") == "postgresql://u:pw@db/test_app_gw3"
    assert worker_database_url("postgresql://postgres@127.0.0.1/automation_test", "gw1").endswith(
        "/automation_gw1_test")
    for given in ("test", "test_app", "automation_test", "TEST"):
        assert is_test_database(worker_database_url(f"postgresql://h/{given}", "gw12"))


def test_worker_redis_databases_count_down_from_the_given_one():
    assert [worker_redis_url("redis://127.0.0.1:6379/15", n) for n in range(3)] == [
        "redis://127.0.0.1:6379/15", "redis://127.0.0.1:6379/14", "redis://127.0.0.1:6379/13"]
    assert worker_redis_url("redis://:secret@h:6380/9", 2) == "redis://:secret@h:6380/7"
    with pytest.raises(pytest.UsageError, match="no Redis database left"):
        worker_redis_url("redis://127.0.0.1:6379/1", 2)


def test_this_worker_uses_its_own_database_and_redis(app, app_env, request):
    worker = getattr(request.config, "workerinput", {}).get("workerid")
    if os.environ.get("TEST_DATABASE_URL"):
        assert app_env["DATABASE_URL"] == os.environ["TEST_DATABASE_URL"]  # what child processes inherit
        if worker:
            assert worker in app_env["DATABASE_URL"].rsplit("/", 1)[1]
    else:
        assert app_env["DATABASE_URL"].startswith("sqlite:///")  # a copy of the template in this test's tmp dir
    if os.environ.get("TEST_REDIS_URL"):
        assert app_env["REDIS_URL"] == os.environ["TEST_REDIS_URL"]
    assert app.config["REDIS_URL"] == app_env["REDIS_URL"]
