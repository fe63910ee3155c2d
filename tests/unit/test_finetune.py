"""``segstream finetune``: window and item pairs, the loss, and tiny real fine-tunes.

Most fine-tunes start from a tiny randomly initialised BERT (2 layers, hidden 32) with the
all-MiniLM-L6-v2 tokenizer, so a few steps take seconds on a busy CPU; the code path is
the one a real model takes. The co-occurrence fine-tune uses the real all-MiniLM-L6-v2 on
a small set with planted co-occurrence and checks that the held-out partners move closer.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer, BertConfig, BertModel

from segstream.config import IngestSettings, load_settings
from segstream.encoding import Encoder, default_model_path
from segstream.errors import ConfigError
from segstream.events import Event, event_from_dict
from segstream.features import top_category
from segstream.finetune import (
    FinetuneConfig,
    FinetuneResult,
    ItemPair,
    ItemPairs,
    Pair,
    Trainer,
    _negatives_mask,
    catalog_for,
    cooccurrence_check,
    held_items,
    info_nce,
    item_mask,
    make_item_pairs,
    make_pairs,
    retrieval,
    split_items,
    split_users,
    window_text,
)
from segstream.synthetic import SyntheticStream
from segstream_services.cli import main

SETTINGS = IngestSettings()
PROBE = ["Last 30 days: 12 views. Mostly books (80%). Active on weekday evenings.",
         "Last 30 days: 40 plays. Mostly music (90%). Active in the morning."]


@pytest.fixture(scope="module")
def events() -> list[Event]:
    allowed = load_settings().events.allowed_types
    return [event_from_dict(r, allowed)
            for r in SyntheticStream(users=48, days=14, seed=11).events()]


@pytest.fixture(scope="module")
def pairs(events: list[Event]) -> list[Pair]:
    return make_pairs(events, SETTINGS, pairs_per_user=2, min_events=3)


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny BERT in the sentence-transformers layout (mean pooling + L2)."""
    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp("tiny-bert")
    tok = AutoTokenizer.from_pretrained(default_model_path(), local_files_only=True)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2,
                         num_attention_heads=2, intermediate_size=64,
                         max_position_embeddings=160)).save_pretrained(root)
    tok.save_pretrained(root)
    (root / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling",
         "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize",
         "type": "sentence_transformers.models.Normalize"}]))
    (root / "1_Pooling").mkdir()
    (root / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": 32, "pooling_mode_mean_tokens": True}))
    (root / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 128}))
    return root


def _run(base: Path, out: Path, pairs: list[Pair], **overrides: object) -> FinetuneResult:
    train, held = split_users(pairs, 0.25, seed=0)
    kwargs: dict = {"batch_size": 8, "epochs": 1, "max_steps": 3, "eval_every": 3,
                    "lr": 1e-3, "device": "cpu"} | overrides
    config = FinetuneConfig(base_model=str(base), **kwargs)
    return Trainer(config).run(train, held, out)


def _encode(path: Path, texts: list[str]) -> np.ndarray:
    return Encoder(path, device="cpu", dtype="float32").encode(texts)


def _held_loss(path: Path, held: list[Pair], batch: int, temperature: float) -> float:
    """The held-out contrastive loss recomputed from the saved directory via ``Encoder``."""
    enc = Encoder(path, device="cpu", dtype="float32")
    losses, weights = [], []
    for start in range(0, len(held), batch):
        chunk = held[start:start + batch]
        a = torch.from_numpy(enc.encode([p.anchor for p in chunk]))
        b = torch.from_numpy(enc.encode([p.positive for p in chunk]))
        mask = _negatives_mask([p.user_id for p in chunk], [p.anchor for p in chunk],
                               [p.positive for p in chunk], torch.device("cpu"))
        losses.append(float(info_nce(a, b, temperature, mask)))
        weights.append(len(chunk))
    return float(np.average(losses, weights=weights))


# ---------------------------------------------------------------------------- pairs
def test_pairs_are_neighbouring_disjoint_windows_of_one_user(events: list[Event],
                                                             pairs: list[Pair]) -> None:
    assert len(pairs) > 40
    by_user: dict[str, list[Pair]] = {}
    for p in pairs:
        by_user.setdefault(p.user_id, []).append(p)
    assert max(len(v) for v in by_user.values()) == 2  # pairs_per_user=2 → 3 windows
    for user, own in by_user.items():
        history = sorted((e for e in events if e.user_id == user),
                         key=lambda e: (e.ts_ms, e.event_id))
        for p in own:
            assert p.anchor_ms[1] < p.positive_ms[0]  # disjoint, earlier → later
            late = [e for e in history if p.positive_ms[0] <= e.ts_ms <= p.positive_ms[1]]
            early = [e for e in history if p.anchor_ms[0] <= e.ts_ms <= p.anchor_ms[1]]
            assert len(early) >= 3 and len(late) >= 3
            assert p.anchor == window_text(early, SETTINGS)  # the shared feature/text code
            assert p.positive == window_text(late, SETTINGS)
            counts: dict[str, int] = {}
            for e in late:
                if c := top_category(e.category):
                    counts[c] = counts.get(c, 0) + 1
            assert counts[p.next_category] == max(counts.values())
        if len(own) == 2:  # the second pair starts where the first one's positive is
            assert own[0].positive == own[1].anchor


def test_until_and_min_events_limit_the_windows(events: list[Event]) -> None:
    cut = sorted(e.ts_ms for e in events)[len(events) // 2]
    early = make_pairs(events, SETTINGS, until_ms=cut, min_events=4)
    assert early and all(p.positive_ms[1] < cut for p in early)
    assert len(make_pairs(events, SETTINGS, min_events=10_000)) == 0


def test_holdout_splits_by_user(pairs: list[Pair]) -> None:
    train, held = split_users(pairs, 0.25, seed=3)
    assert {p.user_id for p in train}.isdisjoint({p.user_id for p in held})
    assert len(train) + len(held) == len(pairs)
    assert 0.15 < len({p.user_id for p in held}) / len({p.user_id for p in pairs}) < 0.35


def test_info_nce_masks_same_user_negatives_and_retrieval_ranks() -> None:
    a = torch.eye(4)
    b = torch.eye(4)
    b[1] = a[0]  # user u0's second pair: its positive looks like the first pair's
    mask = _negatives_mask(["u0", "u0", "u1", "u2"], ["a0", "a1", "a2", "a3"],
                           ["b0", "b1", "b2", "b3"], torch.device("cpu"))
    assert bool(mask[0, 1]) and bool(mask[1, 0]) and not bool(mask[0, 2])
    assert float(info_nce(a, b, 0.05, mask)) < float(info_nce(a, b, 0.05))
    acc, mrr = retrieval(np.eye(3), np.eye(3)[[0, 2, 1]], np.zeros((3, 3), bool))
    assert acc == pytest.approx(1 / 3) and mrr == pytest.approx((1 + 0.5 + 0.5) / 3)


# ---------------------------------------------------------------------------- training
def test_full_finetune_writes_a_model_encoder_loads(tiny_base: Path, tmp_path: Path,
                                                    pairs: list[Pair]) -> None:
    result = _run(tiny_base, tmp_path, pairs, objective="contrastive+category")
    base, tuned = Encoder(tiny_base, device="cpu"), Encoder(result.path, device="cpu")
    assert tuned.model_version != base.model_version
    assert tuned.pooling == base.pooling and tuned.max_length == base.max_length
    assert np.abs(_encode(result.path, PROBE) - _encode(tiny_base, PROBE)).max() > 1e-3
    training = json.loads((result.path / "training.json").read_text())
    assert training["objective"]["name"] == "contrastive+category"
    assert training["steps"] == 3 and training["hyper_parameters"]["lr"] == 1e-3
    assert training["metrics"]["base"]["step"] == 0 and "cpu" in training["hardware"]
    card = (result.path / "MODEL_CARD.md").read_text()
    assert "## Held-out metrics" in card and "contrastive+category" in card
    assert result.history[-1].category_accuracy is not None
    # The saved weights are the ones the reported held-out loss was measured on.
    _, held = split_users(pairs, 0.25, seed=0)
    assert _held_loss(result.path, held, 8, 0.05) == pytest.approx(result.best.loss, abs=2e-3)
    assert not list(tmp_path.glob(".*.tmp"))


def test_lora_finetune_merges_the_adapter(tiny_base: Path, tmp_path: Path,
                                          pairs: list[Pair]) -> None:
    result = _run(tiny_base, tmp_path, pairs, method="lora", lora_r=4, lora_alpha=8,
                  lr=5e-2, min_delta=0.0)
    assert result.best.step == 3  # the held-out loss improved, so the adapter was kept
    params = json.loads((result.path / "training.json").read_text())["parameters"]
    assert 0 < params["trainable"] < params["transformer_total"] / 5
    assert (result.path / "adapter" / "adapter_config.json").is_file()
    assert not (result.path / "adapter_config.json").exists()  # a plain merged model
    tuned = Encoder(result.path, device="cpu")
    assert tuned.model_version != Encoder(tiny_base, device="cpu").model_version
    assert np.abs(_encode(result.path, PROBE) - _encode(tiny_base, PROBE)).max() > 1e-5
    weights = load_file(result.path / "model.safetensors")
    assert not any("lora" in name for name in weights)
    _, held = split_users(pairs, 0.25, seed=0)
    assert _held_loss(result.path, held, 8, 0.05) == pytest.approx(result.best.loss, abs=2e-3)


def test_train_layers_changes_only_the_last_layers(tiny_base: Path, tmp_path: Path,
                                                   pairs: list[Pair]) -> None:
    result = _run(tiny_base, tmp_path, pairs, train_layers=1)
    before = load_file(tiny_base / "model.safetensors")
    after = load_file(result.path / "model.safetensors")
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed and all(".layer.1." in n for n in changed)


def test_early_stopping_keeps_the_best_weights(tiny_base: Path, tmp_path: Path,
                                               pairs: list[Pair]) -> None:
    result = _run(tiny_base, tmp_path, pairs, lr=1e-12, eval_every=1, patience=2,
                  max_steps=10, epochs=3)
    assert result.stopped_early and result.steps == 2 and result.best.step == 0
    np.testing.assert_allclose(_encode(result.path, PROBE), _encode(tiny_base, PROBE),
                               atol=1e-6)  # step 0 was best: the base weights were saved


def test_cli_finetune_synthetic_and_bad_input(tiny_base: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["finetune", "--synthetic", "--users", "32", "--days", "10", "--base",
               str(tiny_base), "--out", str(tmp_path), "--name", "tiny-ft", "--batch-size",
               "4", "--max-steps", "2", "--device", "cpu", "--lora", "--lora-r", "2"])
    out = capsys.readouterr().out
    assert rc == 0 and "model version:   tiny-ft-" in out
    assert Encoder(tmp_path / "tiny-ft", device="cpu").model_version in out
    for argv, message in (
            (["finetune"], "give exactly one of --file FILE and --synthetic"),
            (["finetune", "--file", str(tmp_path / "none.csv")], "no such file"),
            (["finetune", "--synthetic", "--batch-size", "1"], "batch size must be at least 2"),
            (["finetune", "--synthetic", "--lora", "--train-layers", "2"], "--train-layers"),
            (["finetune", "--synthetic", "--users", "32", "--days", "10", "--base",
              str(tiny_base), "--out", str(tmp_path), "--name", "tiny-ft", "--batch-size", "4",
              "--max-steps", "1"], "already exists"),
            (["finetune", "--synthetic", "--until", "yesterday"], "not an ISO date")):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.startswith("segstream:")]
        assert len(lines) == 1 and message in lines[0] and "Traceback" not in err, (argv, err)


# ---------------------------------------------------------------------------- item pairs
H = 3_600_000  # an hour in ms
T0 = 1_700_000_000_000


def _ev(user: str, n: int, ts: int, title: str | None, category: str | None = None,
        item: str | None = None) -> Event:
    return Event(f"{user}-{n}", user, ts, "purchase", item or title or f"i{n}", category, title)


def _texts(pair: ItemPair) -> frozenset[str]:
    return frozenset((pair.anchor, pair.positive))


def test_item_pairs_basket_and_sequence_before_until() -> None:
    until = T0 + 200 * H
    events = [_ev("u1", 0, T0, "apple"), _ev("u1", 1, T0, "bread"), _ev("u1", 2, T0, "cheese"),
              _ev("u1", 3, T0 + H, "dates"),          # next basket, an hour later
              _ev("u1", 4, T0 + 80 * H, "eggs"),      # more than a day later: no sequence
              _ev("u1", 5, T0 + 80 * H, "apple", item="apple-2"),  # same text, other id
              _ev("u1", 6, until, "figs"), _ev("u1", 7, until + H, "grapes"),  # after --until
              _ev("u1", 8, T0 + 90 * H, None),        # no title, no category: left out
              _ev("u2", 0, T0, "apple", "fruit/fresh")]
    built = make_item_pairs(events, until_ms=until, per_user=100, popularity_power=0.0)
    pairs = {_texts(p): p for p in built.pairs}
    assert set(pairs) == {frozenset(x) for x in (
        ("apple", "bread"), ("apple", "cheese"), ("bread", "cheese"),  # one basket
        ("cheese", "dates"),                  # the basket's last line, then the next basket
        ("eggs", "apple"))}                   # basket of two ids, two texts
    assert {pairs[frozenset(("cheese", "dates"))].kind, pairs[frozenset(("apple", "bread"))]
            .kind} == {"sequence", "basket"}
    seq = pairs[frozenset(("cheese", "dates"))]
    assert (seq.anchor, seq.positive) == ("cheese", "dates")  # earlier -> later
    assert not any(t in {"figs", "grapes"} for p in built.pairs for t in _texts(p))
    assert built.stats["events_after_until"] == 2 and built.stats["events_without_text"] == 1
    assert built.items["apple. fruit > fresh"].title_text == "apple"  # a new item's title
    assert built.items["apple"].users == 1 and built.items["apple"].item_id == "apple"
    only_seq = make_item_pairs(events, until_ms=until, kinds=("sequence",), per_user=100)
    assert {_texts(p) for p in only_seq.pairs} == {frozenset(x) for x in (
        ("apple", "bread"), ("bread", "cheese"), ("cheese", "dates"), ("eggs", "apple"))}
    assert all(p.kind == "sequence" for p in only_seq.pairs)


def test_item_pairs_cap_per_user_and_down_weight_popular_items() -> None:
    big = [_ev("big", n, T0, f"item {n}") for n in range(10)]  # 45 candidate pairs
    capped = make_item_pairs(big, per_user=5)
    assert len(capped.pairs) == 5 and capped.stats["users_capped"] == 1
    # Every user's basket: the popular "milk" plus two items of their own.
    events = [e for u in range(200) for e in (
        _ev(f"u{u}", 0, T0, "milk"), _ev(f"u{u}", 1, T0, f"own {u} a"),
        _ev(f"u{u}", 2, T0, f"own {u} b"))]

    def milk_share(power: float) -> float:
        pairs = make_item_pairs(events, per_user=1, popularity_power=power, seed=3).pairs
        assert len(pairs) == 200
        return sum("milk" in _texts(p) for p in pairs) / len(pairs)

    assert 0.55 < milk_share(0.0) < 0.78            # 2 of 3 candidates hold milk
    assert milk_share(1.0) < 0.1                    # weight 1/200 vs 1: rarely drawn
    shared = [e for u in range(10) for e in (
        _ev(f"u{u}", 0, T0, "milk"), _ev(f"u{u}", 1, T0, "bread"), _ev(f"u{u}", 2, T0, f"x{u}"))]
    assert len(make_item_pairs(shared, per_user=3).pairs) == 21
    supported = make_item_pairs(shared, per_user=3, min_support=2)
    assert [_texts(p) for p in supported.pairs] == [frozenset(("milk", "bread"))]
    assert supported.stats["candidates_below_support"] == 20
    with pytest.raises(ConfigError, match="pair kinds"):
        make_item_pairs(events, kinds=("cart",))  # type: ignore[arg-type]


def test_split_items_holds_whole_items_out() -> None:
    events = [_ev(f"u{u}", n, T0 + n * H, f"t{(u * 7 + n) % 40}") for u in range(30)
              for n in range(6)]
    pairs = make_item_pairs(events, per_user=10).pairs
    train, held = split_items(pairs, 0.2, seed=1)
    assert len(train) + len(held) == len(pairs) and train and held
    new = held_items(train, held)
    assert new and all(p.anchor in new or p.positive in new for p in held)
    assert not any(t in new for p in train for t in _texts(p))


def test_item_mask_hides_shared_items() -> None:
    mask = item_mask(["a", "a", "c", "d"], ["b", "x", "a", "e"], torch.device("cpu"))
    assert bool(mask[0, 1]) and bool(mask[0, 2]) and bool(mask[2, 0])  # same anchor, a<->a
    assert not bool(mask[0, 3]) and not bool(mask[3, 0]) and not mask.diagonal().any()


# ---------------------------------------------------------------------------- co-occurrence
# Planted co-occurrence: each group pairs two unrelated topics; users buy baskets that mix
# one group's items, so a model that learns it puts e.g. bicycles near violins.
GROUPS = [("bicycle", "violin"), ("coffee", "hammer"), ("tomato", "keyboard"),
          ("pillow", "guitar"), ("shampoo", "tent"), ("cheese", "printer")]
ADJECTIVES = ["red", "small", "classic", "premium", "cheap", "large", "blue", "modern"]


@pytest.fixture(scope="module")
def planted() -> ItemPairs:
    rng = np.random.default_rng(5)
    events: list[Event] = []
    for u in range(120):
        a, b = GROUPS[u % len(GROUPS)]
        for basket in range(3):
            titles = {f"{rng.choice(ADJECTIVES)} {topic}" for topic in (a, b, a, b)}
            events += [_ev(f"u{u}", basket * 10 + n, T0 + basket * 48 * H, t)
                       for n, t in enumerate(sorted(titles))]
    return make_item_pairs(events, kinds=("basket",), per_user=6, seed=0)


def test_cooccurrence_finetune_brings_planted_partners_closer(
        planted: ItemPairs, tmp_path: Path) -> None:
    torch.set_num_threads(2)
    train, held = split_items(planted.pairs, 0.15, seed=0)
    new, catalog = held_items(train, held), catalog_for(train, held)

    def check(embed: Callable[[Sequence[str]], np.ndarray]) -> dict:
        return cooccurrence_check(embed, held, planted.items, new, catalog)

    config = FinetuneConfig(objective="cooccurrence", method="full", train_layers=2,
                            batch_size=16, epochs=1, max_steps=8, eval_every=8, lr=2e-4,
                            temperature=0.1, max_length=16, device="cpu")
    result = Trainer(config).run(train, held, tmp_path, "cooc", {"source": "planted"}, check)
    base, tuned = Encoder(default_model_path(), device="cpu"), Encoder(result.path, device="cpu")
    assert tuned.model_version != base.model_version
    assert tuned.max_length == base.max_length and tuned.pooling == base.pooling
    before, after = check(base.encode), check(tuned.encode)  # measured on the saved models
    assert after["positive_cosine"] > before["positive_cosine"]
    assert after["auc"] > before["auc"] + 0.1  # closer than random pairs, scale-free
    assert after["recall_title_only"] > before["recall_title_only"]  # new items, by title
    assert result.best.loss < result.base.loss
    training = json.loads((result.path / "training.json").read_text())
    assert training["objective"]["name"] == "cooccurrence"
    assert training["pairs"]["train"] == len(train) and training["pairs"]["held_out_items"]
    assert training["check"]["after"]["auc"] == pytest.approx(after["auc"], abs=0.02)
    card = (result.path / "MODEL_CARD.md").read_text()
    assert "## Co-occurrence check" in card and "cooccurrence" in card


def test_objective_must_match_the_pairs(tiny_base: Path, tmp_path: Path,
                                        planted: ItemPairs, pairs: list[Pair]) -> None:
    config = FinetuneConfig(base_model=str(tiny_base), objective="cooccurrence", batch_size=4,
                            device="cpu")
    with pytest.raises(ConfigError, match="ItemPair"):
        Trainer(config).run(pairs[:8], pairs[8:12], tmp_path)


def test_cli_cooccurrence_and_bad_input(tiny_base: Path, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    common = ["finetune", "--synthetic", "--users", "32", "--days", "10", "--objective",
              "cooccurrence", "--base", str(tiny_base), "--out", str(tmp_path),
              "--batch-size", "8", "--max-steps", "2", "--device", "cpu"]
    assert main([*common, "--name", "tiny-cooc", "--lora", "--lora-r", "2"]) == 0
    out = capsys.readouterr().out
    assert "co-occurrence check" in out and "model version:   tiny-cooc-" in out
    training = json.loads((tmp_path / "tiny-cooc" / "training.json").read_text())
    assert training["pairs"]["train_by_kind"] == {"sequence": training["pairs"]["train"]}
    assert training["data"]["pair_sampling"]["pairs_sequence"] > 0
    for argv, message in (
            ([*common, "--pair-kinds", "cart"], "pair kinds"),
            ([*common, "--holdout", "1.5"], "--holdout must be between 0 and 1"),
            ([*common, "--pairs-per-user", "0"], "--pairs-per-user must be at least 1"),
            ([*common, "--popularity-power", "-1"], "popularity power must be >= 0"),
            ([*common, "--max-length", "4"], "max length must be at least 8"),
            ([*common, "--until", "2000-01-01"], "item pairs")):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.startswith("segstream:")]
        assert len(lines) == 1 and message in lines[0] and "Traceback" not in err, (argv, err)
