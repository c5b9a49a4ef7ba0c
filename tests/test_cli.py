"""The SPEC §7 commands through Flask's CLI runner, including bad input (exit 1, one line)."""
from sqlalchemy import func, select

from webapp.extensions import db
from webapp.models import Account, ApiToken, Keyword, Site, User


def ok(result):
    assert result.exit_code == 0, result.output
    return result.output.strip().splitlines()


def bad(result, text):
    assert result.exit_code == 1, result.output
    lines = [l for l in result.output.strip().splitlines() if l]
    assert len(lines) == 1 and lines[0].startswith("Error: ") and text in lines[0], result.output
    assert "Traceback" not in result.output


def test_help_lists_spec_commands(runner):
    out = runner.invoke(args=["--help"]).output
    for cmd in ("init-db", "create-account", "create-user", "create-site", "create-token", "import-keywords",
                "seed-demo"):
        assert cmd in out


def test_init_db_is_idempotent(runner):
    ok(runner.invoke(args=["init-db"]))
    ok(runner.invoke(args=["init-db"]))


def test_account_user_site_token_flow(runner, client):
    ok(runner.invoke(args=["create-account", "Acme", "--credits", "500"]))
    assert db.session.execute(select(Account.credits).where(Account.name == "Acme")).scalar() == 500
    ok(runner.invoke(args=["create-user", "Boss@Acme.io", "--password", "longpassword", "--account", "Acme"]))
    out = ok(runner.invoke(args=["create-site", "Blog", "--account", "Acme", "--domain", "acme.io"]))
    site_id = int(out[-1])
    assert db.session.get(Site, site_id).domain == "acme.io"
    token = ok(runner.invoke(args=["create-token", "boss@acme.io"]))[-1]
    r = client.get("/api/v1/sites/", headers={"Authorization": f"Bearer {token}"})
    assert r.json["data"]["sites"][0]["id"] == site_id
    assert db.session.execute(select(ApiToken.token_hash)).scalar() != token


def test_bad_input_errors(runner, tmp_path):
    ok(runner.invoke(args=["create-account", "Acme"]))
    bad(runner.invoke(args=["create-account", "Acme"]), "already exists")
    bad(runner.invoke(args=["create-account", "Other", "--credits", "lots"]), "--credits must be an integer")
    bad(runner.invoke(args=["create-account", "Other", "--credits", "-5"]), "--credits must be >= 0")
    bad(runner.invoke(args=["create-user", "a@b.io", "--password", "longpassword", "--account", "Nope"]),
        "unknown account 'Nope'")
    ok(runner.invoke(args=["create-user", "a@b.io", "--password", "longpassword", "--account", "Acme"]))
    bad(runner.invoke(args=["create-user", "A@b.io", "--password", "longpassword", "--account", "Acme"]),
        "already exists")
    bad(runner.invoke(args=["create-user", "not-an-email", "--password", "longpassword", "--account", "Acme"]),
        "invalid email")
    bad(runner.invoke(args=["create-user", "c@b.io", "--password", "short", "--account", "Acme"]), "at least 8")
    bad(runner.invoke(args=["create-site", "S", "--account", "Nope"]), "unknown account")
    ok(runner.invoke(args=["create-site", "S", "--account", "Acme"]))
    bad(runner.invoke(args=["create-site", "S", "--account", "Acme"]), "already exists")
    bad(runner.invoke(args=["create-site", "T", "--account", "Acme", "--timezone", "Mars/Base"]), "time zone")
    bad(runner.invoke(args=["create-token", "ghost@b.io"]), "unknown user")
    bad(runner.invoke(args=["import-keywords", "999", str(tmp_path / "x.csv")]), "unknown site id 999")
    bad(runner.invoke(args=["import-keywords", "abc", str(tmp_path / "x.csv")]), "SITE_ID must be an integer")
    assert db.session.execute(select(func.count()).select_from(User)).scalar() == 1


def test_import_keywords_csv(runner, tmp_path, factory):
    acc, _ = factory.account()
    site = factory.site(acc)
    f = tmp_path / "kw.csv"
    f.write_text("keyword,volume,difficulty\nCoffee Beans,100,20\ncoffee beans,5,5\n,1,1\ngrinder,abc,1\ntea,7,\n",
                 encoding="utf-8")
    out = ok(runner.invoke(args=["import-keywords", str(site.id), str(f)]))
    assert out[0] == "Imported 2 keywords, skipped 1 duplicates, 2 invalid rows."
    assert "row 3: keyword is blank" in out[1] and "row 4: volume must be an integer" in out[2]
    kws = db.session.execute(select(Keyword.keyword).order_by(Keyword.id)).scalars().all()
    assert kws == ["coffee beans", "tea"]
    out = ok(runner.invoke(args=["import-keywords", str(site.id), str(f)]))
    assert out[0].startswith("Imported 0 keywords, skipped 3 duplicates")


def test_import_keywords_unreadable_files(runner, tmp_path, factory):
    acc, _ = factory.account()
    site = factory.site(acc)
    binf = tmp_path / "bin.csv"
    binf.write_bytes(b"\xff\xfe\x00\x01garbage")
    bad(runner.invoke(args=["import-keywords", str(site.id), str(binf)]), "not UTF-8")
    bad(runner.invoke(args=["import-keywords", str(site.id), str(tmp_path)]), "cannot read")
    bad(runner.invoke(args=["import-keywords", str(site.id), str(tmp_path / "missing.csv")]), "cannot read")
    assert db.session.execute(select(func.count()).select_from(Keyword)).scalar() == 0


def test_seed_demo(runner):
    out = ok(runner.invoke(args=["seed-demo"]))
    assert "demo@example.com" in out[-1]
    assert db.session.execute(select(func.count()).select_from(Keyword)).scalar() == 60
    out = ok(runner.invoke(args=["seed-demo", "--if-empty"]))
    assert "not seeded" in out[-1]
