"""The AI provider interface. Every call returns an AIResult with its token usage."""
from dataclasses import dataclass, field


class ItemError(Exception):
    """This item cannot be processed (bad output, rejected input): retry, then record."""


class ProviderUnavailable(Exception):
    """The provider itself is down or refusing us: a systemic error, not the item's fault."""


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

    def generate_ideas(self, cluster_name, keywords):
        """-> data: list of {"title", "outline", "keywords": [str]}"""
        raise NotImplementedError

    def generate_content(self, title, outline, keywords, words):
        """-> data: {"body": str (markdown), "word_count": int}"""
        raise NotImplementedError

    def generate_image_prompts(self, title, body):
        """-> data: list of 3 prompts, the first for the featured image"""
        raise NotImplementedError

    def generate_image(self, prompt):
        """-> data: PNG bytes"""
        raise NotImplementedError
