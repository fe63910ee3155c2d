"""The online clusterer's contract over synthetic embeddings (no Kafka, no Redis)."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

from segstream.errors import ConfigError, DataError, StateError
from segstream.segmentation import Observation, OnlineSegmenter, SegConfig

D = 8
WORDS = ("guitar", "espresso", "sneakers", "novels", "laptops", "tents")


class Stream:
    """Seeded users around fixed modes (axis directions), with a distinctive word each."""

    def __init__(self, seed: int = 0, noise: float = 0.05) -> None:
        self.rng = np.random.default_rng(seed)
        self.noise = noise
        self.n = 0

    def batch(self, modes: np.ndarray, n: int, mode_ids: list[int] | None = None
              ) -> tuple[list[Observation], np.ndarray]:
        ids = mode_ids or list(range(len(modes)))
        lab = self.rng.choice(ids, size=n)
        X = modes[lab] + self.noise * self.rng.normal(size=(n, modes.shape[1]))
        obs = []
        for i in range(n):
            self.n += 1
            text = f"Mostly {WORDS[lab[i] % len(WORDS)]} lover. Active on weekday evenings."
            obs.append(Observation(f"u{self.n}", X[i], text))
        return obs, lab


def axes(idx: range | list[int]) -> np.ndarray:
    return np.eye(D)[list(idx)]


def trained(k: int = 3, half_life: float = 0.0, seed: int = 0, batches: int = 20,
            **cfg: object) -> tuple[OnlineSegmenter, Stream]:
    m = OnlineSegmenter(SegConfig(k=k, half_life_points=half_life, normalise=False,
                                  seed=seed, **cfg))  # type: ignore[arg-type]
    s = Stream(seed)
    for t in range(batches):
        m.observe(s.batch(axes(range(k)), 40)[0], now_ms=t)
    return m, s


def test_cold_start_buffers_until_ten_k_users_then_assigns_all() -> None:
    m = OnlineSegmenter(SegConfig(k=3, normalise=False))
    s = Stream()
    assert m.observe(s.batch(axes(range(3)), 20)[0], now_ms=0) == []
    assert not m.trained
    out = m.observe(s.batch(axes(range(3)), 10)[0], now_ms=1)
    assert m.trained and len(out) == 30
    assert {a.reason for a in out} == {"first"} and all(a.changed for a in out)
    assert sorted(m.slot_ids) == ["s1", "s2", "s3"]
    assert sum(seg.size for seg in m.segments.values()) == 30


def test_clusters_recover_the_modes() -> None:
    m, s = trained(k=4)
    obs, lab = s.batch(axes(range(4)), 200)
    segs = [m.assign(o.vector).segment_id for o in obs]
    pairs = set(zip(lab.tolist(), segs, strict=True))
    assert len(pairs) == 4  # one segment per mode, one mode per segment


def test_state_round_trips_through_json_and_pickle_and_continues_identically() -> None:
    a, sa = trained(k=3, half_life=300, batches=10)
    b = OnlineSegmenter.from_dict(json.loads(json.dumps(a.to_dict())))
    c = pickle.loads(pickle.dumps(a))
    sb, sc = Stream(99), Stream(99)
    sa = Stream(99)
    for t in range(10, 20):
        for model, stream in ((a, sa), (b, sb), (c, sc)):
            model.observe(stream.batch(axes(range(3)), 40)[0], now_ms=t)
    assert json.dumps(a.to_dict()) == json.dumps(b.to_dict()) == json.dumps(c.to_dict())


def test_same_seed_same_model_other_seed_other_init() -> None:
    a, _ = trained(k=3, seed=7, batches=6)
    b, _ = trained(k=3, seed=7, batches=6)
    assert json.dumps(a.to_dict()) == json.dumps(b.to_dict())
    c = OnlineSegmenter(SegConfig(k=3, normalise=False, seed=8))
    s = Stream(7)
    for t in range(6):
        c.observe(s.batch(axes(range(3)), 40)[0], now_ms=t)
    assert not np.array_equal(a.centres, c.centres)


@pytest.mark.parametrize("half_life, reaches", [(300.0, True), (0.0, False)])
def test_forgetting_follows_a_population_shift(half_life: float, reaches: bool) -> None:
    m, s = trained(k=3, half_life=half_life, batches=60)
    new_modes = (axes(range(3)) + axes(range(3, 6))) / np.sqrt(2)  # each mode moves 0.77
    for t in range(60, 100):
        m.observe(s.batch(new_modes, 40)[0], now_ms=t)
    assert m.centres is not None
    gap = np.linalg.norm(new_modes[:, None] - m.centres[None], axis=2).min(axis=1)
    if reaches:
        assert gap.max() < 0.1, gap
        assert set(m.slot_ids).isdisjoint({"s1", "s2", "s3"})  # meaning changed: new ids
    else:
        assert gap.min() > 0.3, gap


@pytest.mark.parametrize("margin", [0.1, 0.0])
def test_a_boundary_user_re_encoded_with_noise_does_not_flap(margin: float) -> None:
    m, s = trained(k=2, half_life=200, batches=10, hysteresis_margin=margin)
    assert m.centres is not None
    boundary = m.centres.mean(axis=0)
    axis = m.centres[1] - m.centres[0]
    jitter = np.random.default_rng(0).normal(scale=0.005, size=30)  # re-encoding noise
    prev = None
    changes = 0
    for t in range(30):
        other = s.batch(axes(range(2)), 40)[0]
        vec = boundary + jitter[t] * axis
        out = m.observe([Observation("edge", vec, "x", prev), *other], now_ms=100 + t)
        changes += out[0].changed and prev is not None
        prev = out[0].segment_id
    if margin:
        assert changes == 0
    else:  # the control: without the margin the boundary user does bounce
        assert changes > 0


def test_hysteresis_margin_keeps_a_user_until_clearly_better() -> None:
    m, _ = trained(k=2, hysteresis_margin=0.2)
    assert m.centres is not None
    a, b = m.centres
    slightly_b = 0.48 * a + 0.52 * b
    assert m.assign(slightly_b).segment_id == m.slot_ids[1]
    stay = m.assign(slightly_b, previous=m.slot_ids[0])
    assert stay.segment_id == m.slot_ids[0] and not stay.changed and stay.reason == "stayed"
    move = m.assign(0.1 * a + 0.9 * b, previous=m.slot_ids[0])
    assert move.segment_id == m.slot_ids[1] and move.changed and move.margin > 0
    assert move.previous_distance is not None and move.previous_distance > move.distance


def test_assign_many_equals_one_by_one_assign_and_changes_nothing() -> None:
    m, s = trained(k=4, batches=10)
    obs, _ = s.batch(axes(range(4)), 60)
    previous = [None, *m.slot_ids] * 12
    batch = [Observation(o.key, o.vector, o.text, p) for o, p in zip(obs, previous[:60],
                                                                     strict=True)]
    before = json.dumps(m.to_dict(), sort_keys=True)
    many = m.assign_many(batch)
    one = [m.assign(o.vector, o.previous) for o in batch]
    assert json.dumps(m.to_dict(), sort_keys=True) == before  # read-only
    assert len(many) == len(one) == 60
    for a, b, o in zip(many, one, batch, strict=True):
        assert a.key == o.key and a.text == o.text
        assert (a.segment_id, a.previous_segment_id, a.changed, a.reason, a.tier_path) == \
            (b.segment_id, b.previous_segment_id, b.changed, b.reason, b.tier_path)
        assert a.confidence == pytest.approx(b.confidence)
        assert a.distance == pytest.approx(b.distance) and a.margin == pytest.approx(b.margin)
        assert [sid for sid, _ in a.memberships] == [sid for sid, _ in b.memberships]
    assert {a.reason for a in many} >= {"first", "stayed"}
    assert m.assign_many([]) == []
    with pytest.raises(StateError, match="cold start"):
        OnlineSegmenter(SegConfig(k=3)).assign_many(batch)


def test_memberships_are_topk_and_confidence_is_the_top_weight() -> None:
    m, s = trained(k=4, top_k=3)
    a = m.assign(s.batch(axes(range(4)), 1)[0][0].vector)
    weights = [w for _, w in a.memberships]
    assert len(a.memberships) == 3 and weights == sorted(weights, reverse=True)
    assert a.memberships[0][0] == a.segment_id and a.confidence == pytest.approx(weights[0])
    assert 0.5 < a.confidence <= 1.0 and sum(weights) <= 1.0 + 1e-9


def test_ids_stay_put_on_a_stationary_stream() -> None:
    m, s = trained(k=4, half_life=400)
    ids = list(m.slot_ids)
    m.drain_events()
    for t in range(20, 80):
        m.observe(s.batch(axes(range(4)), 40)[0], now_ms=t)
    assert m.slot_ids == ids
    assert [e for e in m.drain_events() if not e["event"].startswith("family")] == []


def test_refit_keeps_ids_even_when_sklearn_orders_centres_differently() -> None:
    m, s = trained(k=4)
    obs, _ = s.batch(axes(range(4)), 400)
    before = {o.key: m.assign(o.vector).segment_id for o in obs}
    for seed in (1, 2, 3):  # other seeds -> k-means++ finds the modes in another order
        m2 = OnlineSegmenter.from_dict({**m.to_dict(),
                                        "config": {**m.to_dict()["config"], "seed": seed}})
        out = m2.fit(obs, now_ms=50)
        assert sorted(m2.slot_ids) == sorted(m.slot_ids)
        assert {a.key: a.segment_id for a in out} == before


def test_reassigned_centre_gets_a_new_id_and_lineage() -> None:
    m, s = trained(k=5, half_life=200, batches=30)
    m.drain_events()
    first_ids = set(m.segments)
    for t in range(30, 90):  # mode 4 disappears: its centre starves and sklearn reassigns it
        m.observe(s.batch(axes(range(5)), 40, mode_ids=[0, 1, 2, 3])[0], now_ms=t)
    events = [e for e in m.drain_events() if not e["event"].startswith("family")]
    born = [e for e in events if e["event"] in ("birth", "split")]
    gone = [e for e in events if e["event"] in ("retire", "merge")]
    assert born and gone
    assert all(e["segment_id"] not in first_ids for e in born)  # never reused
    assert all(e["segment_id"] in first_ids for e in gone)
    old = m.segments[gone[0]["segment_id"]]
    assert not old.active and old.retired_ms is not None
    numbers = [int(sid[1:]) for sid in m.segments]
    assert len(numbers) == len(set(numbers)) and m.next_segment > max(numbers)
    split = [e for e in born if e["event"] == "split"]
    for e in split:
        assert e["segment_id"] in m.segments[e["parents"][0]].children


def test_refit_in_a_new_space_keeps_ids_by_member_overlap() -> None:
    m, s = trained(k=3)
    obs, _ = s.batch(axes(range(3)), 300)
    prev = {o.key: m.assign(o.vector).segment_id for o in obs}
    rot, _ = np.linalg.qr(np.random.default_rng(5).normal(size=(D, D)))
    moved = [Observation(o.key, o.vector @ rot, o.text, prev[o.key]) for o in obs]
    out = m.refit_by_members(moved, now_ms=99)
    assert {a.key: a.segment_id for a in out} == prev
    assert not any(a.changed for a in out)


def test_hierarchy_groups_nearby_segments_and_keeps_family_ids() -> None:
    base = np.eye(D)
    modes = np.stack([base[0], base[0] + 0.3 * base[1], base[2], base[2] + 0.3 * base[3],
                      base[4], base[4] + 0.3 * base[5]])
    m = OnlineSegmenter(SegConfig(k=6, families=3, normalise=False, half_life_points=500))
    s = Stream(3, noise=0.02)
    for t in range(10):
        m.observe(s.batch(modes, 60)[0], now_ms=t)
    fams = {fid: set(f.members) for fid, f in m.families.items() if f.retired_ms is None}
    assert len(fams) == 3 and all(len(v) == 2 for v in fams.values())
    slot = {sid: j for j, sid in enumerate(m.slot_ids)}
    assert m.centres is not None
    for members in fams.values():
        a, b = (m.centres[slot[x]] for x in members)
        assert np.linalg.norm(a - b) < 0.5  # the close pairs share a family
    for t in range(10, 40):
        m.observe(s.batch(modes, 60)[0], now_ms=t)
    assert {fid: set(f.members) for fid, f in m.families.items()
            if f.retired_ms is None} == fams
    sid = m.slot_ids[0]
    assert m.tier_path(sid) == [m.segments[sid].family, sid]


def test_labels_name_the_distinguishing_words_and_survive_empty_batches() -> None:
    m, s = trained(k=3)
    obs, lab = s.batch(axes(range(3)), 30)
    for o, mode in zip(obs, lab, strict=True):
        seg = m.segments[m.assign(o.vector).segment_id]
        assert WORDS[mode] in seg.label, seg.label
        assert "weekday" not in seg.label  # shared by everyone: not distinguishing
    labels = {sid: m.segments[sid].label for sid in m.slot_ids}
    m.observe(s.batch(axes(range(3)), 40, mode_ids=[0])[0], now_ms=500)  # only mode 0
    assert all(m.segments[sid].label == labels[sid] for sid in m.slot_ids)
    assert all(m.segments[sid].description for sid in m.slot_ids)
    assert all(m.families[f].label != "unlabelled" for f in
               {m.segments[sid].family for sid in m.slot_ids if m.segments[sid].family})


def test_bad_input_is_a_one_line_error() -> None:
    m, _ = trained(k=3)
    with pytest.raises(DataError, match="dimension"):
        m.observe([Observation("x", np.ones(D + 1))], now_ms=0)
    with pytest.raises(DataError, match="finite"):
        m.observe([Observation("x", np.full(D, np.nan))], now_ms=0)
    with pytest.raises(StateError, match="cold start"):
        OnlineSegmenter(SegConfig(k=3)).assign(np.ones(D))
    with pytest.raises(StateError, match="format"):
        OnlineSegmenter.from_dict({"format": 0})
    with pytest.raises(ConfigError, match="k must be"):
        OnlineSegmenter(SegConfig(k=1))


def test_maintenance_refit_leaves_a_poor_local_optimum_and_keeps_good_ids() -> None:
    m, s = trained(k=4, refit_every=100)
    obs, lab = s.batch(axes(range(4)), 400)
    assert m.maintain(obs, now_ms=1) == []  # already optimal: nothing changes
    assert m.centres is not None
    a, b, c, d = axes(range(4))
    stuck = np.stack([a, a + 0.05 * axes([5])[0], (c + d) / 2, b])  # two on A, one on C+D
    m.centres = stuck.copy()
    for sid, row in zip(m.slot_ids, stuck, strict=True):
        m.segments[sid].anchor = row.copy()
    kept = m.slot_ids[3]  # the segment on B means the same after the repair
    m.drain_events()
    m.since_refit = 100
    assert m.maintenance_due
    out = m.maintain(obs, now_ms=2)
    assert len(out) == 400 and not m.maintenance_due
    gap = np.linalg.norm(axes(range(4))[:, None] - m.centres[None], axis=2).min(axis=1)
    assert gap.max() < 0.1
    assert kept in m.slot_ids
    seg = {o.key: a_.segment_id for o, a_ in zip(obs, out, strict=True)}
    assert len(set(zip(lab.tolist(), seg.values(), strict=True))) == 4
    kinds = [e["event"] for e in m.drain_events()]
    assert "refit" in kinds and {"birth", "split"} & set(kinds)
    numbers = [int(x[1:]) for x in m.segments]
    assert len(numbers) == len(set(numbers))


def test_recent_users_are_bounded_and_round_trip() -> None:
    m, _ = trained(k=3, refit_sample=50)
    assert len(m.recent_keys()) == 50
    again = OnlineSegmenter.from_dict(json.loads(json.dumps(m.to_dict())))
    assert again.recent_keys() == m.recent_keys() and again.since_refit == m.since_refit


def test_catalog_entries_carry_lineage_and_match_the_schema() -> None:
    import jsonschema

    from segstream import records

    m, s = trained(k=5, half_life=200, batches=30)
    for t in range(30, 90):  # mode 4 starves: its centre is reassigned (split + retire)
        m.observe(s.batch(axes(range(5)), 40, mode_ids=[0, 1, 2, 3])[0], now_ms=t)
    m.model_version = "test@1"
    entries = records.catalog_entries(m, now_ms=1_000)
    schema = records.load_schema("catalog_entry")
    for entry in entries.values():
        jsonschema.validate(entry, schema)
    retired = [e for e in entries.values() if e["status"] == "retired"]
    assert retired and all(e["lineage"]["retired_at"] for e in retired)
    born = [e for e in entries.values() if e["lineage"]["origin"] in ("split", "birth")]
    assert born
    for e in born:
        if e["lineage"]["split_from"]:
            assert e["segment_id"] in entries[e["lineage"]["split_from"]]["children"]
    families = [e for e in entries.values() if e["tier"] == 1 and e["status"] == "active"]
    assert {c for f in families for c in f["children"]} == set(m.slot_ids)
