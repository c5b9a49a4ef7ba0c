"""OpenAI-compatible provider on the official `openai` package: chat completions whose message
content is JSON for text, `images/generations` with `b64_json` for images.

The client's own retries are off (`max_retries=0`): a 429 is raised as RateLimited with the
provider's Retry-After so that the engine's rate limiter (webapp/ai/ratelimit.py) can share
the wait with every call of every worker, and 5xx/connection errors go through the engine's
bounded retry, which can be interrupted by a pause. Errors: connection failures and 5xx are
the provider's (ProviderUnavailable), 429 is RateLimited, other 4xx and unparseable output
are the item's (ItemError).
"""
import base64
import json

import openai

from .base import AIResult, ItemError, Provider, ProviderUnavailable, RateLimited
from .ratelimit import parse_retry_after


class OpenAIProvider(Provider):
    name = "openai"

    def __init__(self, base_url, api_key, chat_model, image_model, timeout=60):
        self.chat_model, self.image_model = chat_model, image_model
        # One client per provider object, shared by the engine's call threads (thread-safe;
        # its connection pool is far larger than the 32 calls a run may have in flight).
        self.client = openai.OpenAI(base_url=base_url.rstrip("/"), api_key=api_key or "none",
                                    max_retries=0, timeout=timeout)

    def _call(self, fn, **kwargs):
        try:
            return fn(**kwargs)
        except openai.RateLimitError as e:
            raise RateLimited("AI provider answered HTTP 429 (rate limit)",
                              retry_after=parse_retry_after(e.response.headers)) from e
        except openai.APIConnectionError as e:  # includes timeouts
            raise ProviderUnavailable(f"cannot reach AI provider: {e.__class__.__name__}") from e
        except openai.APIStatusError as e:
            if e.status_code >= 500:
                raise ProviderUnavailable(f"AI provider answered HTTP {e.status_code}") from e
            raise ItemError(f"AI provider rejected the request: HTTP {e.status_code} {str(e.message)[:200]}") from e
        except openai.APIResponseValidationError as e:
            raise ItemError("AI provider returned an invalid response") from e
        except (ValueError, TypeError) as e:  # a body that is not JSON
            raise ItemError(f"AI provider returned an unreadable response: {e.__class__.__name__}") from e

    def _chat_json(self, system, user):
        resp = self._call(self.client.chat.completions.create, model=self.chat_model,
                          messages=[{"role": "system", "content": system + " Answer with JSON only."},
                                    {"role": "user", "content": user}],
                          response_format={"type": "json_object"})
        try:
            data = json.loads(resp.choices[0].message.content)
        except (AttributeError, IndexError, TypeError, ValueError) as e:
            raise ItemError("AI provider returned an unexpected chat response") from e
        tokens = int(getattr(resp.usage, "total_tokens", 0) or 0) if resp.usage else 0
        return data, tokens, resp.model or self.chat_model

    def cluster_keywords(self, keywords, existing_clusters):
        data, tokens, model = self._chat_json(
            "Group the keywords into topical clusters. Reuse an existing cluster name when it fits. "
            'Return {"clusters": [{"name": str, "keywords": [str]}]} covering every keyword exactly once.',
            json.dumps({"keywords": keywords, "existing_clusters": [n for n, _ in existing_clusters]}))
        clusters = data.get("clusters") if isinstance(data, dict) else None
        if not isinstance(clusters, list):
            raise ItemError("clustering response has no 'clusters' list")
        wanted, seen, out = set(keywords), set(), []
        for c in clusters:
            if not isinstance(c, dict):
                continue
            members = [k for k in c.get("keywords", []) if k in wanted and k not in seen]
            seen.update(members)
            if members and isinstance(c.get("name"), str) and c["name"].strip():
                out.append({"name": c["name"].strip()[:255], "terms": "", "keywords": members})
        missing = [k for k in keywords if k not in seen]
        if missing:
            out.append({"name": "Other: " + missing[0][:200], "terms": "", "keywords": missing})
        return AIResult(out, tokens=tokens, model=model)

    def generate_ideas(self, cluster_name, keywords, existing=()):
        payload = {"cluster": cluster_name, "keywords": keywords}
        if existing:
            payload["existing_ideas"] = list(existing)[:100]
        data, tokens, model = self._chat_json(
            'Write content ideas for the cluster. Return {"ideas": [{"title": str, "outline": str, '
            '"keywords": [str]}]} with one to five ideas; the outline uses "## " headings.'
            + (' Do not repeat any of the existing_ideas.' if existing else ''),
            json.dumps(payload))
        ideas = data.get("ideas") if isinstance(data, dict) else None
        if not isinstance(ideas, list) or not ideas:
            raise ItemError("ideas response has no 'ideas' list")
        out = [{"title": str(i.get("title", "")).strip()[:255], "outline": str(i.get("outline", "")),
                "keywords": [str(k) for k in i.get("keywords", []) if k]} for i in ideas[:5] if isinstance(i, dict)]
        out = [i for i in out if i["title"]]
        if not out:
            raise ItemError("ideas response has no usable titles")
        return AIResult(out, tokens=tokens, model=model)

    def generate_content(self, title, outline, keywords, words, note=None):
        payload = {"title": title, "outline": outline, "keywords": keywords}
        if note:
            payload["reviewer_note"] = note
        data, tokens, model = self._chat_json(
            f'Write a markdown article of about {words} words using the keywords. Return {{"body": str}}.'
            + (' This rewrites a rejected version: follow the reviewer_note.' if note else ''),
            json.dumps(payload))
        body = data.get("body") if isinstance(data, dict) else None
        if not isinstance(body, str) or not body.strip():
            raise ItemError("content response has no 'body'")
        return AIResult({"body": body, "word_count": len(body.split())}, tokens=tokens, model=model)

    def generate_image_prompts(self, title, body):
        data, tokens, model = self._chat_json(
            'Write three image prompts for the article: a featured image first. Return {"prompts": [str, str, str]}.',
            json.dumps({"title": title, "body": body[:4000]}))
        prompts = data.get("prompts") if isinstance(data, dict) else None
        if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) and p for p in prompts):
            raise ItemError("image prompt response has no 'prompts'")
        return AIResult(prompts[:3], tokens=tokens, model=model)

    def generate_image(self, prompt):
        resp = self._call(self.client.images.generate, model=self.image_model, prompt=prompt, n=1,
                          size="1024x1024", response_format="b64_json")
        try:
            png = base64.b64decode(resp.data[0].b64_json)
        except (AttributeError, IndexError, TypeError, ValueError) as e:
            raise ItemError("image response has no b64_json") from e
        if not png.startswith(b"\x89PNG"):
            raise ItemError("image response is not a PNG")
        usage = getattr(resp, "usage", None)
        tokens = int(getattr(usage, "total_tokens", 0) or 0) if usage else 0
        return AIResult(png, tokens=tokens, model=self.image_model)
