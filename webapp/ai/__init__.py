"""AI providers: `local` (offline, deterministic) and `openai` (OpenAI-compatible HTTP)."""
import threading

from .base import AIResult, ItemError, Provider, ProviderUnavailable, RateLimited  # noqa: F401

# OpenAI-compatible providers are kept per process and settings: building the client costs
# ~100 ms (TLS context, connection pool) and a worker runs a job per batch; the client is
# thread-safe and keeps its connections alive between jobs.
_OPENAI = {}
_OPENAI_LOCK = threading.Lock()


def get_provider(config):
    from ..metrics import timed_provider  # every call timed: automation_ai_call_seconds
    return timed_provider(_make_provider(config))


def _make_provider(config):
    name = config.get("AI_PROVIDER", "local")
    if name == "local":
        from .local import LocalProvider
        return LocalProvider(latency_ms=config.get("AI_LOCAL_LATENCY_MS", 0),
                             fail_every=config.get("AI_LOCAL_FAIL_EVERY"))
    if name == "openai":
        from .openai import OpenAIProvider
        key = (config["OPENAI_BASE_URL"], config["OPENAI_API_KEY"], config["OPENAI_CHAT_MODEL"],
               config["OPENAI_IMAGE_MODEL"], config.get("OPENAI_TIMEOUT", 60))
        with _OPENAI_LOCK:
            if key not in _OPENAI:
                _OPENAI[key] = OpenAIProvider(base_url=key[0], api_key=key[1], chat_model=key[2],
                                              image_model=key[3], timeout=key[4])
            return _OPENAI[key]
    raise ValueError(f"AI_PROVIDER must be 'local' or 'openai', got {name!r}")
