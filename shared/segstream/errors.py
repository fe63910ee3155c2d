"""The one exception tree of segstream.

    SegstreamError            base of everything segstream raises on purpose
    ├── ConfigError           settings or CLI input that cannot be used
    ├── InvalidEvent          an input record that fails DESIGN §4 (carries a reason code)
    └── InfraError            local Kafka/Redis could not be installed, started or reached
        └── PortInUse         a port we need is held by a program that is not ours

The CLI turns any SegstreamError into a one-line message and exit code 2; anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations


class SegstreamError(Exception):
    """Base class for errors segstream raises deliberately."""


class ConfigError(SegstreamError):
    """Settings or command-line input that cannot be used."""


class InvalidEvent(SegstreamError):
    """An input record that fails validation.

    ``reason`` is one of a small fixed set (see ``segstream.events.REASONS``) so it can be
    a metric label; ``detail`` names the field and the problem for humans.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class InfraError(SegstreamError):
    """Local infrastructure could not be installed, started, stopped or reached."""


class PortInUse(InfraError):
    """A port segstream needs is already held by another program."""
