"""Typed errors. Each message names the file or the flag at fault and how to fix it."""

from __future__ import annotations


class XdcError(Exception):
    """Base class of every error xdc raises on purpose; the CLI prints it as one line."""


class ConfigError(XdcError):
    """A configuration value or command-line flag is wrong (the message names the flag)."""


class DataError(XdcError):
    """A manifest, split or dataset cannot be used as asked (the message names the file)."""


class DecodeError(XdcError):
    """A media file could not be decoded.

    Attributes:
        path: the file that failed.
        reason: a short, stable, human-readable reason (e.g. ``"no video stream"``).
    """

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


class TrainingDiverged(XdcError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class CheckpointError(XdcError):
    """A checkpoint or weight file is missing, corrupt, tampered with or of another architecture."""
