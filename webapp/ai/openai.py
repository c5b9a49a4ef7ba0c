"""OpenAI-compatible provider: chat completions for text, images/generations for images.

Errors: connection failures, 5xx and 429 are the provider's (ProviderUnavailable);
4xx and unparseable output are the item's (ItemError).
"""
import base64
import json

import requests

from .base import AIResult, ItemError, Provider, ProviderUnavailable


class OpenAIProvider(Provider):
    name = "openai"

    def __init__(self, base_url, api_key, chat_model, image_model, timeout=60):
        self.base_url = base_url.rstrip("/")
        self.chat_model, self.image_model, self.timeout = chat_model, image_model, timeout
        self.http = requests.Session()
        self.http.headers.update({"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"})

    def _post(self, path, payload):
        try:
            resp = self.http.post(self.base_url + path, json=payload, timeout=self.timeout)
        except requests.RequestException as e:
            raise ProviderUnavailable(f"cannot reach AI provider: {e.__class__.__name__}") from e
        if resp.status_code == 429 or resp.status_code >= 500:
            raise ProviderUnavailable(f"AI provider answered HTTP {resp.status_code}")
        if resp.status_code >= 400:
            raise ItemError(f"AI provider rejected the request: HTTP {resp.status_code} {resp.text[:200]}")
        try:
            return resp.json()
        except ValueError as e:
            raise ItemError("AI provider returned invalid JSON") from e

    def _chat_json(self, system, user):
        body = self._post("/chat/completions", {
            "model": self.chat_model,
            "messages": [{"role": "system", "content": system + " Answer with JSON only."},
                         {"role": "user", "content": user}],
            "response_format": {"type": "json_object"},
        })
        try:
            content = body["choices"][0]["message"]["content"]
            data = json.loads(content)
        except (KeyError, IndexError, TypeError, ValueError) as e:
            raise ItemError("AI provider returned an unexpected chat response") from e
        tokens = int((body.get("usage") or {}).get("total_tokens") or 0)
        return data, tokens, body.get("model") or self.chat_model

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
            members = [k for k in c.get("keywords", []) if k in wanted and k not in seen]
            seen.update(members)
            if members and isinstance(c.get("name"), str) and c["name"].strip():
                out.append({"name": c["name"].strip()[:255], "terms": "", "keywords": members})
        missing = [k for k in keywords if k not in seen]
        if missing:
            out.append({"name": "Other: " + missing[0][:200], "terms": "", "keywords": missing})
        return AIResult(out, tokens=tokens, model=model)

    def generate_ideas(self, cluster_name, keywords):
        data, tokens, model = self._chat_json(
            'Write content ideas for the cluster. Return {"ideas": [{"title": str, "outline": str, '
            '"keywords": [str]}]} with one to five ideas; the outline uses "## " headings.',
            json.dumps({"cluster": cluster_name, "keywords": keywords}))
        ideas = data.get("ideas") if isinstance(data, dict) else None
        if not isinstance(ideas, list) or not ideas:
            raise ItemError("ideas response has no 'ideas' list")
        out = [{"title": str(i.get("title", "")).strip()[:255], "outline": str(i.get("outline", "")),
                "keywords": [str(k) for k in i.get("keywords", []) if k]} for i in ideas[:5] if isinstance(i, dict)]
        out = [i for i in out if i["title"]]
        if not out:
            raise ItemError("ideas response has no usable titles")
        return AIResult(out, tokens=tokens, model=model)

    def generate_content(self, title, outline, keywords, words):
        data, tokens, model = self._chat_json(
            f'Write a markdown article of about {words} words using the keywords. Return {{"body": str}}.',
            json.dumps({"title": title, "outline": outline, "keywords": keywords}))
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
        body = self._post("/images/generations", {"model": self.image_model, "prompt": prompt,
                                                  "n": 1, "size": "1024x1024", "response_format": "b64_json"})
        try:
            png = base64.b64decode(body["data"][0]["b64_json"])
        except (KeyError, IndexError, TypeError, ValueError) as e:
            raise ItemError("image response has no b64_json") from e
        if not png.startswith(b"\x89PNG"):
            raise ItemError("image response is not a PNG")
        tokens = int((body.get("usage") or {}).get("total_tokens") or 0)
        return AIResult(png, tokens=tokens, model=self.image_model)
