"""What ``kioskd run``, ``kioskd check-config`` and a reload read and check, in one place so the three never
differ: the config file, the API key, where the key may be sent, and the exhibit's own files. Blocking (file
reads): a reload runs it in a thread."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from kioskd import config as config_mod
from kioskd import exhibit
from kioskd.core import guide
from kioskd.core.knowledge import Knowledge
from kioskd.core.settings import Settings, ToolSpec


@dataclass(frozen=True)
class Checked:
    cfg: config_mod.KioskConfig
    api_key: str | None
    fallback_key: str | None = None
    knowledge: Knowledge | None = None
    tools: exhibit.Tools = field(default_factory=exhibit.Tools)
    warnings: tuple[str, ...] = ()
    """Things to log as ``config.plaintext_key`` (a key allowed over plaintext)."""

    @property
    def tool_specs(self) -> tuple[ToolSpec, ...]:
        """The function tools the session declares: the knowledge lookup, opening hours, the http tools."""
        specs = [guide.LOOKUP] if self.knowledge is not None else []
        if self.tools.hours is not None:
            specs.append(guide.HOURS)
        specs += [ToolSpec(t.name, t.description, json.dumps(t.parameters)) for t in self.tools.http]
        return tuple(specs)

    def settings(self, endpoint: str) -> Settings:
        """The core's settings, with the guide's instructions and tools."""
        return config_mod.core_settings(self.cfg, endpoint=endpoint, tools=self.tool_specs)


def load(paths: config_mod.Paths, url: str = "") -> Checked:
    """Read and check everything; ``paths``: the config file, or several merged in order (a base, then an
    exhibit's overlay); ``url``: the endpoint in use when the files name none (the embedded simulator's).
    Raises ConfigError naming file, line and key."""
    cfg = config_mod.load(paths)
    api_key = config_mod.read_api_key(cfg.realtime)
    warnings = config_mod.check_credentials(cfg, cfg.realtime.url or url, api_key)
    fallback_key = config_mod.read_fallback_key(cfg, api_key)
    if cfg.fallback.url is not None:
        warnings += config_mod.check_credentials(cfg, cfg.fallback.url, fallback_key, "fallback.url")
    config_mod.check_prices(cfg)
    e = cfg.exhibit
    knowledge = exhibit.load_knowledge(e.knowledge_file) if e.knowledge_file else None
    tools = exhibit.load_tools(e.tools_file) if e.tools_file else exhibit.Tools()
    return Checked(cfg, api_key, fallback_key, knowledge, tools, tuple(warnings))
