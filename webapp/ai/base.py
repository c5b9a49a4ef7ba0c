"""The AI provider interface. Every call returns an AIResult with its token usage."""
from dataclasses import dataclass, field


class ItemError(Exception):
    """This item cannot be processed (bad output, rejected input): retry, then record."""


class ProviderUnavailable(Exception):
    """The provider itself is down or refusing us: a systemic error, not the item's fault."""


class RateLimited(ProviderUnavailable):
    """HTTP 429: the provider asks us to slow down, maybe saying when (`retry_after` seconds).
    Not the item's fault and not an outage: waited out, never counted as an attempt."""

    def __init__(self, message, retry_after=None):
        super().__init__(message)
        self.retry_after = retry_after


@dataclass
class AIResult:
    data: object
    tokens: int = 0
    model: str = "local"
    extra: dict = field(default_factory=dict)


class Provider:
    name = "base"

    def cluster_keywords(self, keywords, existing_clusters):
        """keywords: list[str]; existing_clusters: list[(name, terms)] that may absorb keywords.
        -> data: list of {"name", "terms", "keywords": [str]} covering every keyword once."""
        raise NotImplementedError

    def generate_ideas(self, cluster_name, keywords, existing=()):
        """existing: titles of the cluster's ideas so far (not to be repeated)
        -> data: list of {"title", "outline", "keywords": [str]}"""
        raise NotImplementedError

    def generate_content(self, title, outline, keywords, words, note=None):
        """note: a reviewer's note on the earlier version when rewriting it
        -> data: {"body": str (markdown), "word_count": int}"""
        raise NotImplementedError

    def generate_image_prompts(self, title, body):
        """-> data: list of 3 prompts, the first for the featured image"""
        raise NotImplementedError

    def generate_image(self, prompt):
        """-> data: PNG bytes"""
        raise NotImplementedError
