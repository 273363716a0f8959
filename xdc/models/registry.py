"""Encoders built by name, as the config names them (``model.video``, ``model.audio``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TypeVar

from xdc.errors import ConfigError

T = TypeVar("T")


def build_named(
    kind: str, registry: Mapping[str, Callable[..., T]], name: str, **kwargs: object
) -> T:
    """``registry[name](**kwargs)``; ``ConfigError`` naming the ``model.<kind>`` key for an
    unknown name or keyword."""
    if name not in registry:
        raise ConfigError(
            f"unknown {kind} encoder {name!r}; valid names: {sorted(registry)} (model.{kind})"
        )
    try:
        return registry[name](**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{kind} encoder {name!r} (model.{kind}): {exc}") from exc
