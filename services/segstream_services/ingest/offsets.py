"""Offset commits that survive a rebalance: what the group refused is committed again.

With kafka-python ≥ 3 a consumer that keeps a partition through a rebalance keeps its
position as well (``SubscriptionState.assign_from_subscribed``), so a commit refused during
the rebalance is not followed by a redelivery. Dropped, it would leave the group's offset
behind the records already applied until that partition's next batch; if none comes, the
lag stays, and a restart redelivers (and skips by watermarks) records long done. (Where a
client re-reads a kept partition from the committed offset instead, the retry is merely
early: the re-read records are skipped by watermarks.) ``OffsetCommits`` keeps
the refused offsets and commits them with the next batch or on the next turn of the loop
(``retry``), for the partitions this consumer still owns. A partition that moved is the
new owner's: it reads from the last committed offset and skips by watermarks.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from segstream.kafka_client import Consumer, KafkaClientError, TopicPartition

log = logging.getLogger("segstream.ingest")


class OffsetCommits:
    """Commits the next offset to read per partition; keeps what a commit refused."""

    def __init__(self, consumer: Consumer) -> None:
        self._consumer = consumer
        self.pending: dict[TopicPartition, int] = {}

    def commit(self, offsets: Mapping[TopicPartition, int]) -> bool:
        """Commit ``offsets`` with anything refused before; False (and kept) on refusal."""
        merged = dict(self.pending)
        for tp, offset in offsets.items():
            merged[tp] = max(offset, merged.get(tp, 0))
        if not merged:
            return True
        try:
            self._consumer.commit(merged)
        except KafkaClientError as exc:  # e.g. a rebalance under way
            if not self.pending:
                log.warning("offset commit failed (%s: %s); retried once the group has "
                            "settled", type(exc).__name__, exc)
            self.pending = merged
            return False
        self.pending = {}
        return True

    def retry(self) -> bool:
        """Commit the refused offsets of the partitions still owned (those of a partition
        that moved are dropped); True when nothing is left pending."""
        if not self.pending:
            return True
        owned = self._consumer.assignment()
        self.pending = {tp: off for tp, off in self.pending.items() if tp in owned}
        return self.commit({})
