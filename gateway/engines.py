"""The ASR engine chain named by `ASR_ENGINE` (comma-separated, first choice first)."""

from __future__ import annotations

from collections.abc import Callable

from gateway.config import Settings
from ingest.engines.base import Engine


def _local(settings: Settings) -> Engine:
    from ingest.engines.local.engine import LocalEngine
    from ingest.engines.local.whisper import finals_model_from_setting

    return LocalEngine(
        workers=settings.local_engine_workers,
        max_streams=settings.local_engine_max_streams,
        finals=finals_model_from_setting(settings.local_finals_model),
    )


ENGINE_FACTORIES: dict[str, Callable[[Settings], Engine]] = {"local": _local}


class UnknownEngine(ValueError):
    pass


class EngineChain:
    """Engines in order of preference; a stream goes to the first that serves its language."""

    def __init__(self, engines: list[Engine]) -> None:
        if not engines:
            raise UnknownEngine("ASR_ENGINE names no engine")
        self.engines = engines

    @classmethod
    def from_settings(cls, settings: Settings) -> EngineChain:
        names = settings.engine_chain
        unknown = [name for name in names if name not in ENGINE_FACTORIES]
        if unknown:
            raise UnknownEngine(
                f"unknown ASR engine(s) {', '.join(unknown)}; available: "
                + ", ".join(sorted(ENGINE_FACTORIES))
            )
        return cls([ENGINE_FACTORIES[name](settings) for name in names])

    def languages(self) -> list[str]:
        return sorted(set().union(*(engine.supported_languages() for engine in self.engines)))

    def serving(self, language: str) -> list[Engine]:
        """The engines that serve `language`, first choice first."""
        return [engine for engine in self.engines if engine.supports(language)]

    async def warm_up(self) -> None:
        """Load models before the first stream so it does not pay for it."""
        for engine in self.engines:
            await engine.warm_up()

    async def aclose(self) -> None:
        for engine in self.engines:
            await engine.aclose()
