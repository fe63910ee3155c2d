"""Reading segstream's Kafka topics as typed records: a consumer-group subscription to the
change feed (commit on the caller's ``ack``), and the current state rebuilt from the
compacted assignments topic. ``segstream.client.SegmentClient`` hands these out."""

from __future__ import annotations

import time
from collections.abc import Iterator
from types import TracebackType
from typing import Any

from pydantic import ValidationError

from segstream.client_models import Assignment, Change, ChangeRecord
from segstream.errors import DataError, InfraError
from segstream.kafka_client import KafkaClients, Record, TopicPartition

__all__ = ["Subscription", "parse_record", "read_assignments"]


def parse_record(value: bytes | None) -> ChangeRecord | None:
    """A change (or assignment) record from a Kafka value; None for a tombstone."""
    if value is None:
        return None
    try:
        return ChangeRecord.model_validate_json(value)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise DataError(f"record does not match the change schema at {where}: "
                        f"{first['msg']}") from None


class Subscription:
    """A consumer-group subscription; iterate it for ``Change`` records (see
    ``SegmentClient.subscribe``). Not thread-safe: ack from the iterating thread."""

    def __init__(self, kafka: KafkaClients, topic: str, group: str, from_: str,
                 join_timeout_s: float) -> None:
        self.topic = topic
        self._closed = False
        self._buffer: list[Change] = []
        self.consumer = kafka.consumer(topic, group_id=group, auto_offset_reset=from_)
        deadline = time.monotonic() + join_timeout_s
        while not self.consumer.assignment():
            if time.monotonic() > deadline:
                self.consumer.close()
                raise InfraError(f"no partitions of {topic} assigned to group {group!r} "
                                 f"within {join_timeout_s:g} s")
            self._buffer += self._fetch(200)
        for tp in self.consumer.assignment():
            self.consumer.position(tp)  # resolve 'latest' now, not at the first fetch

    def poll(self, timeout_s: float = 1.0) -> list[Change]:
        """The records that arrive within ``timeout_s`` (possibly none)."""
        if self._buffer:
            out, self._buffer = self._buffer, []
            return out
        return self._fetch(int(timeout_s * 1000))

    def _fetch(self, timeout_ms: int) -> list[Change]:
        return [Change(r.key.decode() if r.key else "", parse_record(r.value),
                       r.topic, r.partition, r.offset, self._acker(r))
                for r in self.consumer.poll(timeout_ms, 500)]

    def _acker(self, record: Record) -> Any:
        def ack() -> None:
            self.consumer.commit({TopicPartition(record.topic, record.partition):
                                  record.offset + 1})
        return ack

    def __iter__(self) -> Iterator[Change]:
        while not self._closed:
            yield from self.poll(1.0)

    def close(self) -> None:
        """Leave the group (offsets acknowledged so far stay committed)."""
        if not self._closed:
            self._closed = True
            self.consumer.close()

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def read_assignments(kafka: KafkaClients, topic: str, timeout_s: float = 60.0
                     ) -> dict[str, Assignment]:
    """Replay a compacted assignments topic from offset 0 to its current end."""
    consumer = kafka.consumer(group_id=None)
    try:
        deadline = time.monotonic() + timeout_s
        parts = consumer.partitions_for(topic)
        while not parts:
            if time.monotonic() > deadline:
                raise InfraError(f"topic {topic} not found")
            time.sleep(0.2)
            parts = consumer.partitions_for(topic)
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        firsts, ends = consumer.beginning_offsets(tps), consumer.end_offsets(tps)
        for tp in tps:
            consumer.seek(tp, firsts[tp])
        # the next offset still to read of each partition (from the records: a backend
        # may not know a position before its first fetch)
        todo = {tp: firsts[tp] for tp in tps if firsts[tp] < ends[tp]}
        state: dict[str, Assignment] = {}
        while any(todo[tp] < ends[tp] for tp in todo):
            if time.monotonic() > deadline:
                raise InfraError(f"could not read {topic} to its end within {timeout_s:g} s")
            records = consumer.poll(500, 500)
            if not records:  # compaction gaps at the end: the position moves past them
                for tp in todo:
                    todo[tp] = max(todo[tp], consumer.position(tp) or 0)
            for r in records:
                tp = TopicPartition(r.topic, r.partition)
                if tp in todo:
                    todo[tp] = max(todo[tp], r.offset + 1)
                uid = r.key.decode() if r.key else ""
                record = parse_record(r.value)
                if record is None:
                    state.pop(uid, None)
                else:
                    state[uid] = record
        return state
    finally:
        consumer.close()
