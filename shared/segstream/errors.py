"""The one exception tree of segstream: one class per kind of failure.

    SegstreamError            base of everything segstream raises on purpose
    ├── ConfigError           settings, flags or a named path that cannot be used
    │                         (a bad value, an unknown device, a model directory missing)
    ├── DataError             input data that cannot be used: an unreadable or malformed
    │   │                     file, a missing column, a non-finite or wrong-sized
    │   │                     embedding, too few users or pairs for the job asked
    │   └── InvalidEvent      one event record that fails the contract (carries a reason
    │                         code, see docs/contracts.md)
    ├── StateError            the request does not fit the system's current state: the
    │                         segmenter has not cold-started, a rollout is in progress,
    │                         there is no previous model, an output already exists
    └── InfraError            Kafka/Redis could not be installed, started or reached
        └── PortInUse         a port we need is held by a program that is not ours

The first three are the caller's to fix (change the input or wait for the state); an
``InfraError`` is the environment's (services retry it with backoff). The CLI turns any
``SegstreamError`` into a one-line message and exit status 2; anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations


class SegstreamError(Exception):
    """Base class for errors segstream raises deliberately."""


class ConfigError(SegstreamError):
    """Settings, command-line flags or a named path that cannot be used."""


class DataError(SegstreamError):
    """Input data that cannot be used (a file, a column, an embedding, too few rows)."""


class InvalidEvent(DataError):
    """An input record that fails validation.

    ``reason`` is one of a small fixed set (see ``segstream.events.REASONS``) so it can be
    a metric label; ``detail`` names the field and the problem for humans.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class StateError(SegstreamError):
    """The request does not fit the current state (not trained yet, a rollout running)."""


class InfraError(SegstreamError):
    """Local infrastructure could not be installed, started, stopped or reached."""


class PortInUse(InfraError):
    """A port segstream needs is already held by another program."""
