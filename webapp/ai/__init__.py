"""AI providers: `local` (offline, deterministic) and `openai` (OpenAI-compatible HTTP)."""
from .base import AIResult, ItemError, Provider, ProviderUnavailable  # noqa: F401


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
        return OpenAIProvider(base_url=config["OPENAI_BASE_URL"], api_key=config["OPENAI_API_KEY"],
                              chat_model=config["OPENAI_CHAT_MODEL"], image_model=config["OPENAI_IMAGE_MODEL"],
                              timeout=config.get("OPENAI_TIMEOUT", 60))
    raise ValueError(f"AI_PROVIDER must be 'local' or 'openai', got {name!r}")
