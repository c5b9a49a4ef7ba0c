"""The offline provider: deterministic for the same input, and it does real work.

- clustering groups keywords by their most shared meaningful term;
- ideas, outlines and drafts are composed from the cluster's keywords;
- images are real PNG files drawn with Pillow from the prompt.
"""
import hashlib
import io
import math
import random
import threading
import time
from collections import Counter

from .base import AIResult, ItemError, Provider
from .text import count_tokens, terms

MODEL = "local-v1"
IDEAS_MAX = 50  # one idea per two keywords; the bound only guards absurd clusters
IMAGES_PER_CONTENT = 3

_TITLES = [
    "The Complete Guide to {k}",
    "{K}: What to Know Before You Start",
    "How to Choose the Right {k}",
    "{n} Common Mistakes with {k} (and How to Avoid Them)",
    "{K} Explained: A Practical Walkthrough",
]
_SECTIONS = [
    "Why {k} matters", "Getting started with {k}", "How {k} compares", "Choosing {k} on a budget",
    "Step-by-step: {k}", "Common questions about {k}", "Expert tips for {k}", "What to avoid with {k}",
]
_SENTENCES = [
    "When people search for {k}, they usually want a clear answer they can act on today.",
    "A good place to begin with {k} is to decide what success looks like for you.",
    "Most readers find that {k} becomes much simpler once the basics are in place.",
    "Compared with the alternatives, {k} rewards a little planning up front.",
    "It helps to write down your constraints before you commit to {k}.",
    "Experienced practitioners treat {k} as a habit rather than a one-off project.",
    "The details matter: small choices about {k} add up over a few weeks.",
    "If you are unsure, start small with {k} and review the results honestly.",
    "Budget is rarely the deciding factor for {k}; consistency usually is.",
    "Keep notes as you go, because {k} is easier to improve when you can measure it.",
]


def _rng(*parts):
    seed = hashlib.sha256("\x1f".join(map(str, parts)).encode()).hexdigest()
    return random.Random(int(seed[:16], 16))


_LEADING = ("how to choose ", "how to ", "beginner guide ", "best ", "cheap ", "top ", "what is ")


def _topic(keyword):
    """The subject of a search phrase: 'how to choose garden soil' -> 'garden soil'."""
    k = keyword.strip()
    changed = True
    while changed:
        changed = False
        for lead in _LEADING:
            if k.lower().startswith(lead) and len(k) > len(lead) + 2:
                k, changed = k[len(lead):], True
    return k


def _cap(s):
    return s[:1].upper() + s[1:]


class LocalProvider(Provider):
    name = "local"

    def __init__(self, latency_ms=0, fail_every=None):
        self.latency = max(0, latency_ms) / 1000.0
        # AI_LOCAL_FAIL_EVERY (demo/test setting): every Nth call of this provider object fails
        # as an item error. Counted per object (a worker builds one per batch job), so a given
        # configuration fails the same calls every time; a lock keeps concurrent callers exact.
        self.fail_every = fail_every or None
        self.calls = 0
        self._calls_lock = threading.Lock()

    def _wait(self):
        if self.fail_every:
            with self._calls_lock:
                self.calls += 1
                n = self.calls
            if n % self.fail_every == 0:
                raise ItemError(f"simulated failure: AI_LOCAL_FAIL_EVERY={self.fail_every} (call {n})")
        if self.latency:
            time.sleep(self.latency)

    # -- stage 1 ---------------------------------------------------------------
    def cluster_keywords(self, keywords, existing_clusters):
        self._wait()
        kw_terms = {k: terms(k) for k in keywords}
        df = Counter(t for ts in kw_terms.values() for t in ts)
        existing = {}  # primary term -> cluster name
        for name, cterms in existing_clusters:
            primary = (cterms or "").split(" ")[0]
            if primary:
                existing.setdefault(primary, name)
        groups = {}  # (name, primary term) -> keywords
        for k in keywords:
            ts = kw_terms[k]
            # An existing cluster wins; then the term most shared in this batch; ties by position.
            hit = next((t for t in ts if t in existing), None)
            if hit:
                key = (existing[hit], hit)
            elif ts:
                best = max(ts, key=lambda t: (df[t], -ts.index(t)))
                key = (None, best)
            else:
                key = (None, k.lower().strip()[:60] or "misc")
            groups.setdefault(key, []).append(k)
        clusters = []
        for (name, primary), members in groups.items():
            if name is None:
                co = Counter(t for m in members for t in kw_terms[m] if t != primary)
                second = [t for t, c in co.most_common(1) if c >= 2 and len(members) > 2]
                name = " ".join(_cap(t) for t in [primary] + second)
            clusters.append({"name": name[:255], "terms": primary, "keywords": members})
        return AIResult(clusters, tokens=count_tokens(*keywords) * 2, model=MODEL)

    # -- stage 2 ---------------------------------------------------------------
    def generate_ideas(self, cluster_name, keywords, existing=()):
        self._wait()
        n = max(1, min(IDEAS_MAX, math.ceil(len(keywords) / 2)))
        taken, base = set(existing), len(existing)
        ideas = []
        for i in range(n):
            targets = keywords[i * 2:i * 2 + 2] or keywords[:1]
            k = _topic(targets[0])
            r = _rng(cluster_name, targets[0], i)
            # After the cluster's existing ideas: another title template, never an existing title.
            for j in range(len(_TITLES) + 1):
                title = _TITLES[(i + base + j) % len(_TITLES)].format(k=k, K=_cap(k), n=r.randint(5, 9))
                if j == len(_TITLES):
                    title = f"{title} ({len(taken) + 1})"
                if title[:255] not in taken:
                    break
            taken.add(title[:255])
            sections = r.sample(_SECTIONS, 4)
            outline = "\n".join(f"## {_cap(s.format(k=targets[j % len(targets)]))}" for j, s in enumerate(sections))
            ideas.append({"title": title[:255], "outline": outline, "keywords": targets})
        out_text = " ".join(i["title"] + " " + i["outline"] for i in ideas)
        return AIResult(ideas, tokens=count_tokens(cluster_name, *keywords, out_text), model=MODEL)

    # -- stage 4 ---------------------------------------------------------------
    def generate_content(self, title, outline, keywords, words, note=None):
        self._wait()
        r = _rng(title, outline, note or "")
        headings = [ln[3:] for ln in outline.splitlines() if ln.startswith("## ")] or ["Overview"]
        kws = keywords or [title]
        per_section = max(1, words // len(headings))
        parts = [f"# {title}", ""]
        total = 0
        for h_i, h in enumerate(headings):
            parts += [f"## {h}", ""]
            written = 0
            while written < per_section:
                para = " ".join(r.choice(_SENTENCES).format(k=kws[(h_i + j) % len(kws)]) for j in range(4))
                parts += [para, ""]
                written += len(para.split())
            total += written
        if note:  # a rewrite says what it changed after the reviewer's note
            parts += ["## Revised after review", "", f"This version addresses the review: {note.strip()}", ""]
        body = "\n".join(parts).strip() + "\n"
        return AIResult({"body": body, "word_count": len(body.split())},
                        tokens=count_tokens(title, outline, body), model=MODEL)

    # -- stage 5 ---------------------------------------------------------------
    def generate_image_prompts(self, title, body):
        self._wait()
        headings = [ln[3:] for ln in body.splitlines() if ln.startswith("## ")]
        prompts = [f"Editorial hero illustration for an article titled '{title}', clean flat style"]
        for h in (headings + [title, title])[:IMAGES_PER_CONTENT - 1]:
            prompts.append(f"Illustration of '{h}', simple shapes, soft palette")
        return AIResult(prompts, tokens=count_tokens(title, *prompts) + 50, model=MODEL)

    # -- stage 6 ---------------------------------------------------------------
    def generate_image(self, prompt):
        self._wait()
        from PIL import Image, ImageDraw
        r = _rng(prompt)
        w, h = 640, 360
        c1 = tuple(r.randint(40, 200) for _ in range(3))
        c2 = tuple(r.randint(80, 255) for _ in range(3))
        img = Image.new("RGB", (w, h), c1)
        d = ImageDraw.Draw(img)
        for y in range(0, h, 4):  # vertical gradient
            t = y / h
            d.rectangle([0, y, w, y + 4], fill=tuple(int(c1[i] * (1 - t) + c2[i] * t) for i in range(3)))
        for _ in range(6):
            x, y, s = r.randint(0, w), r.randint(0, h), r.randint(30, 120)
            col = tuple(r.randint(0, 255) for _ in range(3))
            (d.ellipse if r.random() < 0.5 else d.rectangle)([x - s, y - s, x + s, y + s], outline=col, width=4)
        text, line, y = prompt[:160], "", 20
        for word in text.split():
            if len(line) + len(word) > 60:
                d.text((20, y), line, fill=(255, 255, 255))
                line, y = "", y + 16
            line += word + " "
        d.text((20, y), line, fill=(255, 255, 255))
        buf = io.BytesIO()
        # zlib's fastest level: a stand-in image is made for every item, and level 6 took 5.2 of
        # its 6.4 ms of CPU for a file a third smaller (9 KB vs 13 KB).
        img.save(buf, format="PNG", optimize=False, compress_level=1)
        return AIResult(buf.getvalue(), tokens=count_tokens(prompt), model=MODEL)
