"""Users' vectors under a new model, built by the live encoder's own view code.

A rollout must leave each user with the vector the encoder would compute for them under
the new model, so ``NextVectors`` uses the encoder's pieces, not a copy: ``ItemVectors``
embeds the items the users need under the new version (stored under its
``Keys.item_vec``, with its catalogue centre), ``views.interest_vector`` gives the
interest view, the feature text embedded by the new model (stored float16, as the text
view stores it) gives the text view when its weight is positive, and ``views.combine``
concatenates them with ``interest.view_weights``. The fields written beside the vector are
the ones the encoder writes (``vec_hash``, the interest and text-view fields), so a worker
that recomputes such a user after the cutover finds the vector unchanged.

Items are embedded for every user before any vector is built (``embed_items`` then
``build``), so every vector uses the centre of all the items the rollout embedded.
"""

from __future__ import annotations

import hashlib
import time

import numpy as np
import redis

from segstream.config import Settings, ViewName
from segstream.encoding import Encoder, text_hash, vec_from_bytes, vec_to_bytes
from segstream.keys import Keys
from segstream_services.encoder.items import ItemVectors
from segstream_services.encoder.views import (
    active_views,
    combine,
    interest_vector,
    state_of,
    vec_hash,
    view_dims,
)

Fields = dict[str, bytes | str | int]  # an ``emb`` hash's fields
Profile = tuple[dict[str, float], str | None, str]  # interest state, feature text, digest


def state_digest(reply: list[tuple[bytes, float]]) -> str:
    """A digest of a raw interest state (``ZRANGE … WITHSCORES``): it changes with any
    weight, so a rollout pass can tell which users moved since it built their vector."""
    h = hashlib.blake2b(digest_size=8)
    for item, weight in reply:
        h.update(item + b"\0" + repr(float(weight)).encode() + b"\0")
    return h.hexdigest()


class NextVectors:
    """Build users' vectors under ``encoder`` (the new model) as the live encoder would."""

    def __init__(self, client: redis.Redis, keys: Keys, settings: Settings,
                 encoder: Encoder) -> None:
        from segstream_services.encoder.service import new_worker_id

        self.client = client
        self.keys = keys
        self.encoder = encoder
        self.weights: dict[ViewName, float] = dict(settings.interest.view_weights)
        self.views = active_views(self.weights)
        self.center_items = settings.interest.center_items
        self.items = ItemVectors(client, keys, settings, encoder, f"rollout-{new_worker_id()}")

    def read(self, users: list[str]) -> dict[str, Profile]:
        """Each user's interest state, feature text and their digest (users with
        neither are left out)."""
        pipe = self.client.pipeline(transaction=False)
        for uid in users:
            pipe.zrange(self.keys.interest(uid), 0, -1, withscores=True)
            pipe.get(self.keys.text(uid))
        got = pipe.execute()
        out: dict[str, Profile] = {}
        for i, uid in enumerate(users):
            reply, raw = got[2 * i], got[2 * i + 1]
            if not reply and raw is None:
                continue
            text = raw.decode("utf-8", errors="replace") if raw is not None else None
            digest = state_digest(reply) + ":" + (text_hash(text) if text is not None else "")
            out[uid] = (state_of(reply), text, digest)
        return out

    def embed_items(self, profiles: dict[str, Profile]) -> int:
        """Embed the items these users need that have no vector under the new model;
        returns how many were embedded."""
        if "interest" not in self.views:
            return 0
        before = self.items.counts["item_embedded"]
        self.items.vectors({i for state, _, _ in profiles.values() for i in state})
        return self.items.counts["item_embedded"] - before

    def center(self) -> np.ndarray | None:
        """The new model's catalogue centre, read now (None: off or no item)."""
        if not self.center_items:
            return None
        return self.items.read_center()

    def build(self, profiles: dict[str, Profile], center: np.ndarray | None
              ) -> tuple[dict[str, Fields], int]:
        """The ``emb`` fields of each user that has a vector, and how many distinct
        feature texts were embedded."""
        version = self.encoder.model_version
        use_interest, use_text = "interest" in self.views, "text" in self.views
        vectors = self.items.vectors({i for state, _, _ in profiles.values()
                                      for i in state}) if use_interest else {}
        distinct = sorted({t for _, t, _ in profiles.values() if t is not None}) \
            if use_text else []
        texts = {t: vec_from_bytes(vec_to_bytes(v)) for t, v in  # stored as the text view
                 zip(distinct, self.encoder.encode(distinct), strict=True)} if distinct else {}
        now = int(time.time() * 1000)
        out: dict[str, Fields] = {}
        for uid, (state, text, digest) in profiles.items():
            views: dict[ViewName, np.ndarray | None] = {}
            fields: Fields = {"profile_digest": digest}
            if use_interest:
                iv, _, used = interest_vector(state, vectors, center)
                views["interest"] = iv
                fields.update(interest_ms=now if iv is not None else 0, interest_items=used,
                              interest_missing=len(state) - used)
            if use_text and text is not None:
                views["text"] = texts[text]
                fields.update(text_vec=vec_to_bytes(texts[text]), text_hash=text_hash(text),
                              text_model=version, text_ms=now)
            vec = combine(views, self.weights, view_dims(self.encoder))
            if vec is None:
                continue
            data = vec_to_bytes(vec)
            out[uid] = {"vec": data, "model_version": version, "vec_hash": vec_hash(data),
                        "encoded_ms": now, **fields}
        return out, len(distinct)
