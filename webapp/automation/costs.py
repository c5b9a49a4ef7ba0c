"""The one cost table: the estimate and the charging both read it.

A call costs max(units x unit_credits, ceil(tokens x per_1k_tokens / 1000)): flat per item
for the local provider, token usage when a real model uses more than the flat price.
"""
import math
from dataclasses import dataclass

from ..ai.local import IDEAS_MAX, IMAGES_PER_CONTENT


@dataclass(frozen=True)
class Cost:
    unit_credits: int
    per_1k_tokens: float


COSTS = {
    "auto_cluster": Cost(1, 1.0),            # per keyword clustered
    "generate_ideas": Cost(2, 2.0),          # per cluster
    "generate_content": Cost(5, 2.0),        # per article
    "generate_image_prompts": Cost(1, 2.0),  # per article
    "generate_image": Cost(2, 2.0),          # per image
}

# Planning figures for things not yet created (clusters from keywords).
KEYWORDS_PER_CLUSTER = 6
START_BUFFER = 1.2


def credits_for(function, units=1, tokens=0):
    c = COSTS[function]
    return max(units * c.unit_credits, math.ceil(tokens * c.per_1k_tokens / 1000))


def ideas_for_cluster(n_keywords):
    return max(1, min(IDEAS_MAX, math.ceil(n_keywords / 2)))


def estimate(p):
    """Credits a run will use, from the pending counts `p` (see service.pending_counts):
    keywords, clusters (+ their keyword counts), ideas, tasks, drafts, images."""
    kw = p["keywords"]
    new_clusters = math.ceil(kw / KEYWORDS_PER_CLUSTER) if kw else 0
    # Ideas from keywords not yet clustered: one per two keywords, rounded up per cluster.
    new_ideas = math.ceil(kw / 2 + new_clusters / 2) if kw else 0
    ideas = p["ideas"] + p["ideas_from_clusters"] + new_ideas
    articles = p["tasks"] + ideas
    prompts = p["drafts"] + articles
    images = p["images"] + prompts * IMAGES_PER_CONTENT
    return (credits_for("auto_cluster", kw) if kw else 0) \
        + (p["clusters"] + new_clusters) * COSTS["generate_ideas"].unit_credits \
        + articles * COSTS["generate_content"].unit_credits \
        + prompts * COSTS["generate_image_prompts"].unit_credits \
        + images * COSTS["generate_image"].unit_credits


def required_for_start(estimated):
    return math.ceil(estimated * START_BUFFER)
