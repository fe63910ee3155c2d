"""Item co-occurrence factors rolled out to the running services (real Kafka and Redis).

Events go through ingest; a live worker builds interest vectors under a (tiny, real) base
model; ``segstream.item_factors`` makes a factor directory over the same base from the same
events, and the rollout moves every user to ``text ⊕ weight · factor`` items without
embedding one text again; a live worker on the factor model then finds every vector as
the rollout left it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import redis

from segstream import item_factors
from segstream.config import Settings
from segstream.encoding import Encoder, vec_from_bytes
from segstream.events import event_from_dict
from segstream.feature_store import FeatureStore
from segstream.keys import Keys
from segstream_services.encoder.service import EncoderWorker
from segstream_services.encoder.views import interest_vector
from segstream_services.rollout.service import Rollout
from segstream_services.segmenter import store
from tests.helpers import create_event_topics
from tests.integration.test_interest_path import drain, ingest, synthetic_events
from tests.integration.test_rollout import (  # noqa: F401 - the settings fixture
    assert_live_worker_agrees,
    segment_live_vectors,
    settings,
)
from tests.unit.test_finetune import tiny_base  # noqa: F401 - the base model fixture

pytestmark = pytest.mark.integration


def test_a_factor_table_rolls_out_without_reembedding_texts(
        settings: Settings, redis_conn: redis.Redis, tiny_base: Path,  # noqa: F811
        tmp_path: Path) -> None:
    s = settings.model_copy(deep=True)
    unique = s.redis.key_prefix
    s.topics.events, s.topics.dlq = f"{unique}.events", f"{unique}.dlq"
    s.ingest = s.ingest.model_copy(update={"group_id": f"{unique}.ingest", "metrics_port": 0})
    s.encoder = s.encoder.model_copy(update={"metrics_port": 0})
    s.interest = s.interest.model_copy(update={"view_weights": {"interest": 1.0,
                                                                "text": 0.0}})
    create_event_topics(s, 1)
    events = synthetic_events(24, seed=7)
    ingest(s, events)
    keys = Keys(unique)
    old = Encoder(tiny_base, device="cpu", dtype="float32")
    worker = EncoderWorker(s, encoder=old, client=redis_conn)
    drain(worker)
    users = sorted({e["user_id"] for e in events})
    old_vecs = {u: redis_conn.hget(keys.emb(u), "vec") for u in users}
    assert all(len(vec_from_bytes(v)) == old.dim for v in old_vecs.values())
    segment_live_vectors(redis_conn, keys, old_vecs, old.model_version)

    table = item_factors.from_events(
        [event_from_dict(e, s.events.allowed_types) for e in events], dims=8)
    item_factors.write_model_dir(tiny_base, tmp_path / "factors", table, old.name,
                                 old.model_version)
    new = Encoder(tmp_path / "factors", device="cpu", dtype="float32")
    assert new.item_factors is not None and len(new.item_factors) == len(table)
    assert new.model_version != old.model_version and new.text_version == old.model_version
    assert new.item_dim == old.dim + 8

    rollout = Rollout(redis_conn, unique, lambda *_: None, "-", "-", settings=s)
    rollout.start(str(tmp_path / "factors"), new.model_version, str(tiny_base),
                  old.model_version)
    assert rollout.reembed(new, rollout.users()) == 0  # item texts: the base's vectors
    rollout.cutover(rollout.users())

    # Recount: the stored text vectors (base version) composed with the table by hand.
    state = FeatureStore(redis_conn, s)
    items = sorted({i for u in users for i in state.read_interest(u)})
    composed = {}
    for i in items:
        text = vec_from_bytes(redis_conn.get(keys.item_vec(old.model_version, i)))
        factor = table.factor(i)
        composed[i] = np.concatenate([text / np.linalg.norm(text),
                                      np.zeros(8) if factor is None else 0.5 * factor])
    assert any(table.factor(i) is not None for i in items)
    for uid in users:
        emb = redis_conn.hgetall(keys.emb(uid))
        assert emb[b"model_version"] == new.model_version.encode()
        expected, outcome, _ = interest_vector(state.read_interest(uid), composed)
        assert outcome == "ok" and expected is not None
        vec = vec_from_bytes(emb[b"vec"])
        assert vec.shape == (new.item_dim,)
        assert np.allclose(vec, expected, atol=3e-3), uid
    model = store.read_state(redis_conn, keys)[0]
    assert model is not None and model.model_version == new.model_version
    assert model.centres is not None and model.centres.shape[1] == new.item_dim

    # A live worker on the factor model recomputes every user: nothing changes.
    assert_live_worker_agrees(worker, new, users)

    # Rollback: the text-only vectors and the narrower segmenter state return.
    rollout.rollback()
    assert {u: redis_conn.hget(keys.emb(u), "vec") for u in users} == old_vecs
    model = store.read_state(redis_conn, keys)[0]
    assert model is not None and model.model_version == old.model_version
    assert model.centres is not None and model.centres.shape[1] == old.dim
