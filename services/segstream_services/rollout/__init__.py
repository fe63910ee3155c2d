"""Model rollout and rollback: a new encoder model without a restart or an id reshuffle.

It belongs to neither service: it re-embeds with the encoder's model code and refits the
segmenter, so it lives here and uses only their public surfaces (``Encoder``,
``OnlineSegmenter.refit_by_members``/``assign_many``, and the segmenter's one state writer
``segmenter.store.SegmentStateWriter``).

- ``registry``: the model registry hash and ``ModelWatcher`` (encoder workers switch models
  without a restart);
- ``vectors``: users' vectors under the new model, by the live encoder's view code;
- ``migrate``: the refit in the new space, the id bound and ``RolloutReport`` (no I/O);
- ``service``: ``Rollout``, the phases against Redis and Kafka.
"""
