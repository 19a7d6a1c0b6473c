"""The base class of every plugin's configuration."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

__all__ = ["PluginConfig"]


class PluginConfig(BaseModel):
    """Frozen, strict configuration of one component; ``name`` selects the component."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
