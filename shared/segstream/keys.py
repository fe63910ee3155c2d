"""Every Redis key segstream uses, one method per key: the contract between the services.

Every key starts with the configured ``key_prefix``. Redis Cluster hash tags (the part in
braces decides the slot) are built here and nowhere else, in three groups whose keys a
Lua script or a lock must reach together:

- per user, tag ``{<user id>}``: ``<prefix>:u:{<uid>}:<part>``
- the work queue, tag ``{<prefix>:q}``: ``{<prefix>:q}:<name>`` (the claim scripts move
  users between ``dirty``, ``claims`` and ``claim_meta`` atomically)
- the segmenter's state, tag ``{<prefix>:seg}``: ``{<prefix>:seg}:<name>``

The other keys (model registry, text cache) stand alone: ``<prefix>:<name>``.

``user_keys(uid)`` lists every per-user key (each method whose only parameter is
``user_id``): each expires ``redis.user_ttl_days`` after its last write or the user's last
applied event (every writer sets the TTL; ingest's script refreshes all of them), and
``segstream forget`` deletes all of them.

Writer → readers of each key:

=====================  ======  =====================================================
key                    type    contents
=====================  ======  =====================================================
``features(uid)``      hash    ingest's private bucket map (see ``feature_store``)
``dedup(uid)``         zset    ingest's event-id digests (private)
``titles(uid)``        zset    ingest's recent item titles (private)
``text(uid)``          string  ingest → encoder, rollout: the feature text
``rfm(uid)``           hash    ingest → segmenter, ``segstream user``: the RFM inputs
                               (fields in ``segstream.features.Rfm``)
``interest(uid)``      zset    ingest → encoder: item → anchored weight (the user's
                               interest state, see ``feature_store``)
``emb(uid)``           hash    encoder → segmenter: vec (float16, the views combined),
                               model_version, vec_hash, encoded_ms, fence,
                               interest_ms, interest_items, interest_missing; the text
                               view: text_vec, text_hash, text_model, text_ms
``emb_next(uid)``      hash    rollout: the vector under the model being rolled out
``emb_prev(uid)``      hash    rollout: the vector under the previous model (rollback)
``emb_swap(uid)``      hash    rollout: scratch key while swapping two vectors
``seg(uid)``           hash    segmenter → ``segstream user``: the user's segment
``seg_text(uid)``      string  segmenter: the feature text at the last segment change
``dirty()``            zset    ingest → encoder: users awaiting encoding (score: ms)
``claims()``           zset    encoder: claimed users (score: lease deadline ms)
``claim_meta()``       hash    encoder: user → ``<token>|<dirty ms>``
``fence()``            string  encoder: the claim fence counter
``embedded()``         stream  encoder → segmenter (``segstream.stream_entry``)
``items_dirty()``      zset    ingest, ``items load`` → encoder: items to embed (ms)
``text_due()``         zset    encoder: users whose feature text awaits embedding
                               (score: when it may be embedded, ms)
``seg_state()``        hash    segmenter, rollout: model, rev, version, applied
``seg_catalog()``      hash    segmenter, rollout → ``segstream segments``
``seg_lock()``         string  the lease serialising segmenter state writers
``seg_members(sid)``   zset    segmenter → client, ``segstream serve``, ``export``: the
                               users whose current segment is ``sid`` (all scores 0, so
                               ZRANGE BYLEX pages are stable); written in the same MULTI
                               as the segmenter state (and, on a plain Redis, the
                               users' ``seg`` hashes)
``model_registry()``   hash    rollout → encoder workers: active/previous/target model
``model_prev_state()`` string  rollout: the segmenter state before the last switch
``model_prev_ids()``   hash    rollout: user → segment id before the last switch
``cache_vector(m, h)`` string  encoder: cached vector of text hash ``h`` under model ``m``
``cache_seen(m, h)``   string  encoder: marker that text ``h`` was seen once
``item(i)``            hash    ingest, ``items load`` → encoder: title, category,
                               description of item ``i`` (first text seen wins)
``item_vec(m, i)``     string  encoder: item ``i``'s vector under model ``m`` (float16;
                               empty: rejected, NaN or zero)
``item_center(m)``     hash    encoder: per worker, count + sum of its item vectors
                               under model ``m`` (the catalogue centre)
=====================  ======  =====================================================
"""

from __future__ import annotations

import inspect


class Keys:
    """Key names under one ``prefix`` (see the module docstring for the layout)."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    # ---------------------------------------------------------------- hash tags
    def _user(self, user_id: str, part: str) -> str:
        return f"{self.prefix}:u:{{{user_id}}}:{part}"

    def _queue(self, name: str) -> str:
        return f"{{{self.prefix}:q}}:{name}"

    def _seg(self, name: str) -> str:
        return f"{{{self.prefix}:seg}}:{name}"

    def _alone(self, name: str) -> str:
        return f"{self.prefix}:{name}"

    # ---------------------------------------------------------------- per user
    def features(self, user_id: str) -> str:
        return self._user(user_id, "f")

    def dedup(self, user_id: str) -> str:
        return self._user(user_id, "d")

    def titles(self, user_id: str) -> str:
        return self._user(user_id, "t")

    def text(self, user_id: str) -> str:
        return self._user(user_id, "text")

    def rfm(self, user_id: str) -> str:
        return self._user(user_id, "rfm")

    def emb(self, user_id: str) -> str:
        return self._user(user_id, "emb")

    def emb_next(self, user_id: str) -> str:
        return self._user(user_id, "emb_next")

    def emb_prev(self, user_id: str) -> str:
        return self._user(user_id, "emb_prev")

    def emb_swap(self, user_id: str) -> str:
        return self._user(user_id, "emb_swap")

    def interest(self, user_id: str) -> str:
        return self._user(user_id, "i")

    def seg(self, user_id: str) -> str:
        return self._user(user_id, "seg")

    def seg_text(self, user_id: str) -> str:
        return self._user(user_id, "segtext")

    def user_keys(self, user_id: str) -> list[str]:
        """Every per-user key of ``user_id``: each public method whose only parameter is
        ``user_id`` (so a new per-user key is covered by TTL refreshes and ``segstream
        forget`` as soon as its method exists)."""
        return [getattr(self, name)(user_id) for name in _user_methods(type(self))]

    def text_pattern(self) -> str:
        """A SCAN ``MATCH`` pattern for every user's ``text`` key."""
        return self.text("*")

    def user_of_text(self, key: str | bytes) -> str:
        """The user id in a ``text(uid)`` key (as SCAN returns it)."""
        k = key.decode() if isinstance(key, bytes) else key
        head, tail = self.text_pattern().split("*")
        if not (k.startswith(head) and k.endswith(tail)):
            raise ValueError(f"{k!r} is not a text key under prefix {self.prefix!r}")
        return k[len(head):len(k) - len(tail)]

    # ---------------------------------------------------------------- work queue
    def dirty(self) -> str:
        return self._queue("dirty")

    def claims(self) -> str:
        return self._queue("claims")

    def claim_meta(self) -> str:
        return self._queue("claim_meta")

    def fence(self) -> str:
        return self._queue("fence")

    def embedded(self) -> str:
        return self._queue("embedded")

    def items_dirty(self) -> str:
        return self._queue("items")

    def text_due(self) -> str:
        return self._queue("text_due")

    # ---------------------------------------------------------------- segmenter
    def seg_state(self) -> str:
        return self._seg("state")

    def seg_catalog(self) -> str:
        return self._seg("catalog")

    def seg_lock(self) -> str:
        return self._seg("lock")

    def seg_members(self, segment_id: str) -> str:
        return self._seg(f"members:{segment_id}")

    # ---------------------------------------------------------------- stand-alone
    def model_registry(self) -> str:
        return self._alone("model")

    def state_epoch(self) -> str:
        """hash ``id``, ``created_ms`` (+ ``lost``, ``lost_ms``): Redis' data generation,
        the sentinel by which every service notices a flush or a restart without
        persistence (``segstream.state_epoch``)."""
        return self._alone("epoch")

    def model_prev_state(self) -> str:
        return self._alone("model:prev_state")

    def model_prev_ids(self) -> str:
        return self._alone("model:prev_ids")

    def cache_vector(self, model_version: str, text_hash: str) -> str:
        return self._alone(f"ec:{model_version}:{text_hash}")

    def cache_seen(self, model_version: str, text_hash: str) -> str:
        return self._alone(f"es:{model_version}:{text_hash}")

    def item(self, item_id: str) -> str:
        return self._alone(f"item:{item_id}")

    def item_vec(self, model_version: str, item_id: str) -> str:
        return self._alone(f"iv:{model_version}:{item_id}")

    def item_center(self, model_version: str) -> str:
        return self._alone(f"ic:{model_version}")


_USER_METHODS: dict[type[Keys], tuple[str, ...]] = {}


def _user_methods(cls: type[Keys]) -> tuple[str, ...]:
    found = _USER_METHODS.get(cls)
    if found is None:
        found = _USER_METHODS[cls] = tuple(
            name for name, fn in inspect.getmembers(cls, inspect.isfunction)
            if not name.startswith("_") and name != "user_keys"
            and list(inspect.signature(fn).parameters) == ["self", "user_id"])
    return found
