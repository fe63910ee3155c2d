"""``OffsetCommits``: a commit refused during a rebalance is made again for the partitions
the consumer kept (they are not redelivered), and dropped for those that moved.

The consumer is a stub: the refusal depends on a rebalance landing between a batch's poll
and its commit, which a real broker gives only by chance (the crash matrix met it once).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import cast

from segstream.kafka_client import Consumer, KafkaClientError, TopicPartition
from segstream_services.ingest.offsets import OffsetCommits

A, B = TopicPartition("events", 0), TopicPartition("events", 1)


class RebalancingConsumer:
    """Refuses commits while ``rebalancing``; remembers what the group committed."""

    def __init__(self, owned: set[TopicPartition]) -> None:
        self.owned = owned
        self.rebalancing = False
        self.group: dict[TopicPartition, int] = {}

    def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        if self.rebalancing:
            raise KafkaClientError("RebalanceInProgressError")
        self.group.update(offsets)

    def assignment(self) -> set[TopicPartition]:
        return set(self.owned)


def test_a_refused_commit_is_made_on_the_next_turn_for_kept_partitions() -> None:
    consumer = RebalancingConsumer({A, B})
    offsets = OffsetCommits(cast(Consumer, consumer))
    assert offsets.commit({A: 10, B: 5}) and consumer.group == {A: 10, B: 5}
    consumer.rebalancing = True
    assert not offsets.commit({A: 20})
    assert not offsets.retry()  # still rebalancing: kept
    assert offsets.pending == {A: 20} and consumer.group[A] == 10
    consumer.rebalancing = False  # the group settled; A stayed here, position and all
    assert offsets.retry() and consumer.group == {A: 20, B: 5} and not offsets.pending


def test_the_next_batch_carries_the_refused_offsets_and_never_goes_back() -> None:
    consumer = RebalancingConsumer({A, B})
    offsets = OffsetCommits(cast(Consumer, consumer))
    consumer.rebalancing = True
    offsets.commit({A: 20, B: 7})
    consumer.rebalancing = False
    assert offsets.commit({A: 15})  # a lower offset (a re-read) does not move A back
    assert consumer.group == {A: 20, B: 7}


def test_a_partition_that_moved_is_left_to_its_new_owner() -> None:
    consumer = RebalancingConsumer({A, B})
    offsets = OffsetCommits(cast(Consumer, consumer))
    consumer.rebalancing = True
    offsets.commit({A: 20, B: 7})
    consumer.rebalancing, consumer.owned = False, {A}  # B went to another member
    assert offsets.retry() and consumer.group == {A: 20}
