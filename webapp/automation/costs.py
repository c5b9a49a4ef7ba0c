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
    return sum(s["credits"] for s in estimate_stages(p))


# (stage number, what its items are) in pipeline order; the names are stages.STAGES'.
_STAGE_ITEMS = ((1, "keywords"), (2, "clusters"), (3, "ideas"), (4, "articles"), (5, "articles"), (6, "images"),
                (7, "articles"))


def estimate_stages(p):
    """The estimate per stage: [{stage, items, credits}], the items each stage will process
    (those pending now plus those the stages before it will make). Their credits add up to
    estimate(p)."""
    kw = p["keywords"]
    new_clusters = math.ceil(kw / KEYWORDS_PER_CLUSTER) if kw else 0
    # Ideas from keywords not yet clustered: one per two keywords, rounded up per cluster.
    new_ideas = math.ceil(kw / 2 + new_clusters / 2) if kw else 0
    ideas = p["ideas"] + p["ideas_from_clusters"] + new_ideas
    articles = p["tasks"] + ideas
    prompts = p["drafts"] + articles
    images = p["images"] + prompts * IMAGES_PER_CONTENT
    items = {1: kw, 2: p["clusters"] + new_clusters, 3: ideas, 4: articles, 5: prompts, 6: images,
             7: p.get("review", 0) + prompts}
    credits = {1: credits_for("auto_cluster", kw) if kw else 0,
               2: items[2] * COSTS["generate_ideas"].unit_credits, 3: 0,
               4: articles * COSTS["generate_content"].unit_credits,
               5: prompts * COSTS["generate_image_prompts"].unit_credits,
               6: images * COSTS["generate_image"].unit_credits, 7: 0}
    return [{"stage": n, "item_type": what, "items": items[n], "credits": credits[n]} for n, what in _STAGE_ITEMS]


def required_for_start(estimated):
    return math.ceil(estimated * START_BUFFER)
