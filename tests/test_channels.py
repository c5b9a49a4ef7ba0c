"""Pub/sub is one space for a whole Redis server, across its numbered databases: the live
channels carry the database's number, so two installations on one server (or two test
workers) never hear each other's log lines or run states."""
from webapp import create_app
from webapp.automation.state import state_channel
from webapp.redis_conn import channel_namespace
from webapp.storage.logs import log_channel


def test_channels_are_namespaced_by_the_redis_database(app_env, monkeypatch):
    names = {}
    for db in (3, 4):
        for k, v in app_env.items():
            monkeypatch.setenv(k, v)
        monkeypatch.setenv("REDIS_URL", f"redis://:secret@127.0.0.1:6379/{db}")
        a = create_app({"TESTING": True})
        with a.app_context():
            names[db] = (log_channel(7), state_channel(7), channel_namespace())
    assert names[3] == ("automation:db3:run:7:log", "automation:db3:run:7:processing:events", "automation:db3:")
    assert names[4][0] == "automation:db4:run:7:log" and set(names[3]).isdisjoint(names[4])
