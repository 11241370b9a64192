"""The ASR engine chain named by `ASR_ENGINE` (comma-separated, first choice first)."""

from __future__ import annotations

from collections.abc import Callable

from ingest.engine import Engine


def _local() -> Engine:
    from ingest.local_engine import LocalEngine

    return LocalEngine()


ENGINE_FACTORIES: dict[str, Callable[[], Engine]] = {"local": _local}


class UnknownEngine(ValueError):
    pass


class EngineChain:
    """Engines in order of preference; a stream goes to the first that serves its language."""

    def __init__(self, engines: list[Engine]) -> None:
        if not engines:
            raise UnknownEngine("ASR_ENGINE names no engine")
        self.engines = engines

    @classmethod
    def from_names(cls, names: list[str]) -> EngineChain:
        unknown = [name for name in names if name not in ENGINE_FACTORIES]
        if unknown:
            raise UnknownEngine(
                f"unknown ASR engine(s) {', '.join(unknown)}; available: "
                + ", ".join(sorted(ENGINE_FACTORIES))
            )
        return cls([ENGINE_FACTORIES[name]() for name in names])

    def languages(self) -> list[str]:
        return sorted(set().union(*(engine.supported_languages() for engine in self.engines)))

    def pick(self, language: str) -> Engine | None:
        return next((engine for engine in self.engines if engine.supports(language)), None)

    async def warm_up(self) -> None:
        """Load models before the first stream so it does not pay for it."""
        for engine in self.engines:
            await engine.warm_up()

    async def aclose(self) -> None:
        for engine in self.engines:
            await engine.aclose()
