"""Prometheus metrics of the encoder service (one registry per process)."""

from __future__ import annotations

from segstream.metrics import ServiceMetrics

# What happened to each claimed user: a new vector, the same vector as stored, or none
# (``no_vector``: no view yet; ``missing_text``: no text and no interest view);
# ``interest_*`` (why the interest view is missing: no embedded item, NaN, zero) and
# ``lost_claim`` (the lease ran out before completion, another worker redoes the user)
# are counted in addition.
OUTCOMES = ("vector", "unchanged", "no_vector", "missing_text", "interest_no_items",
            "interest_nan", "interest_zero", "lost_claim")
# What happened to items: embedded (first under a model), no title/category (left out of
# interest vectors), rejected (an embedding that is NaN, zero or misshapen).
ITEM_OUTCOMES = ("item_embedded", "item_no_text", "item_rejected_nan", "item_rejected_zero",
                 "item_rejected_shape")
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)
SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class EncoderMetrics:
    """Batch sizes, encode time, texts encoded, cache hits/misses, queue depth, device."""

    def __init__(self) -> None:
        m = self.base = ServiceMetrics("encoder")
        self.batch_size = m.histogram(
            "encoder_batch_size", "Users claimed per micro-batch.", SIZE_BUCKETS)
        self.encode_seconds = m.histogram(
            "encoder_encode_seconds",
            "Model time per micro-batch of item texts or feature texts (cache misses only).",
            SECONDS_BUCKETS)
        self.batch_seconds = m.histogram(
            "encoder_batch_seconds", "Claim-to-complete time per micro-batch.",
            SECONDS_BUCKETS)
        self.texts_encoded = m.counter(
            "encoder_texts_encoded_total", "Distinct feature texts run through the model "
            "(the text view).")
        self.users = m.counter(
            "encoder_users_total", "Claimed users by outcome.", {"outcome": OUTCOMES})
        self.items = m.counter(
            "encoder_items_total", "Items by outcome (interest path).",
            {"outcome": ITEM_OUTCOMES})
        self.cache_hits = m.counter(
            "encoder_cache_hits_total",
            "User texts served from the text cache (Redis or the same micro-batch).")
        self.cache_misses = m.counter(
            "encoder_cache_misses_total", "User texts that needed the model.")
        self.reclaimed = m.counter(
            "encoder_reclaimed_total", "Expired claims this worker returned to the queue.")
        self.stale_writes = m.counter(
            "encoder_stale_writes_total",
            "Embedding writes refused because a newer claim had written the user.")
        self.queue_depth = m.gauge(
            "encoder_queue_depth", "Users waiting (dirty) or being encoded (claimed).",
            ("queue",))
        self.oldest_dirty_age = m.gauge(
            "encoder_oldest_dirty_age_seconds", "Age of the oldest unclaimed dirty mark.")
        self.stream_entries = m.gauge(
            "encoder_stream_entries", "Entries in the encoder->segmenter stream (the "
            "segmenter trims those its group acknowledged).")
        self.backpressure = m.gauge(
            "encoder_backpressure", "1 while the stream holds encoder.stream_maxlen "
            "entries or more and the worker stops claiming (the segmenter is behind).")
        self.redis_errors = m.counter(
            "encoder_redis_errors_total", "Batches that failed on a Redis error (unreachable, "
            "OOM, READONLY) and were retried after a backoff.")
        self.model_load_failures = m.counter(
            "encoder_model_load_failures_total", "Rollout/rollback models this worker could "
            "not load (it keeps serving the current one).")
        self.device = m.gauge(
            "encoder_device_info", "1 for the device, dtype and model version in use.",
            ("device", "dtype", "model_version"))

    def set_device(self, device: str, dtype: str, model_version: str) -> None:
        self.device.labels(device=device, dtype=dtype, model_version=model_version).set(1)
