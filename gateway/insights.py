"""The insights backend the settings name (INSIGHTS_BACKEND): `rules` or `llm`."""

from __future__ import annotations

from gateway.config import Settings
from ingest.insights.base import InsightsBackend
from ingest.insights.llm import LlmConfig, LlmInsights
from ingest.insights.rules import RulesInsights


def insights_backend(settings: Settings) -> InsightsBackend:
    if settings.insights_backend == "rules":
        return RulesInsights()
    assert settings.insights_llm_url is not None  # the settings check it
    key = settings.insights_llm_api_key
    return LlmInsights(
        LlmConfig(
            url=settings.insights_llm_url,
            model=settings.insights_llm_model,
            api_key=key.get_secret_value() if key is not None else None,
            timeout_s=settings.insights_llm_timeout_s,
            notes_max_tokens=settings.insights_llm_notes_max_tokens,
        )
    )
