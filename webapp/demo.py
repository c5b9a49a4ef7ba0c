"""The demo login and site that `make run` seeds into an empty database."""
import itertools

from sqlalchemy import select

from .extensions import db
from .models import Account, Site, User
from .planner import import_rows
from .sites import create_site

DEMO_ACCOUNT = "Demo"
DEMO_EMAIL = "demo@example.com"
DEMO_PASSWORD = "demo-password"

TOPICS = {
    "coffee": ["beans", "grinder", "brewing", "espresso machine", "cold brew", "pour over"],
    "garden": ["tools", "soil", "raised beds", "composting", "watering", "pest control"],
    "running": ["shoes", "training plan", "marathon", "injuries", "nutrition", "trail"],
    "camping": ["tent", "sleeping bag", "stove", "backpack", "checklist", "hammock"],
    "yoga": ["mat", "poses", "breathing", "morning routine", "flexibility", "meditation"],
}
MODIFIERS = ["best", "how to choose", "beginner guide", ""]


def demo_keywords(n=60):
    out = []
    for (topic, subs), mod in itertools.product(TOPICS.items(), MODIFIERS):
        for sub in subs:
            out.append(" ".join(p for p in (mod, topic, sub) if p))
    # Interleave topics so any prefix is a realistic mix.
    out.sort(key=lambda k: (hash_stable(k), k))
    return out[:n]


def hash_stable(s):
    return sum((i + 1) * ord(c) for i, c in enumerate(s)) % 9973


def seed(n_keywords=60, credits=100_000):
    acc = db.session.execute(select(Account).where(Account.name == DEMO_ACCOUNT)).scalar_one_or_none()
    if acc is None:
        from .automation.billing import top_up
        acc = Account(name=DEMO_ACCOUNT, credits=0)
        db.session.add(acc)
        db.session.flush()
        top_up(acc, credits, reason="demo credits")
    if db.session.execute(select(User).where(User.email == DEMO_EMAIL)).scalar_one_or_none() is None:
        user = User(email=DEMO_EMAIL, account_id=acc.id, role="owner")
        user.set_password(DEMO_PASSWORD)
        db.session.add(user)
    db.session.commit()
    site = db.session.execute(select(Site).where(Site.account_id == acc.id)).scalars().first()
    if site is None:
        site = create_site(acc.id, "Outdoor & Home Blog", "demo.example.com", "Europe/Berlin")
        import_rows(site, [{"keyword": k} for k in demo_keywords(n_keywords)])
    return site
