"""Small deterministic text helpers shared by the local provider and stage 1."""
import re

STOPWORDS = frozenset("""
a an and are as at be best beginner buy by can cheap choose choosing do does for from get good guide how i
in is it my near
of on or the to top vs what when where which who why with without you your near me online
""".split())
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def stem(word):
    # Light plural folding so "shoes" and "shoe" share a term; deterministic and cheap.
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def terms(text):
    """Meaningful terms of a keyword, in order, without duplicates."""
    out = []
    for w in _WORD.findall(text.lower()):
        if w in STOPWORDS or len(w) < 3 or w.isdigit():
            continue
        s = stem(w)
        if s not in out:
            out.append(s)
    return out


def count_tokens(*texts):
    """A provider-neutral token estimate (~0.75 words per token)."""
    words = sum(len(str(t).split()) for t in texts)
    return max(1, round(words * 4 / 3))
