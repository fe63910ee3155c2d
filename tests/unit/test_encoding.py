"""The encoder library against a plain transformers forward pass (real model, CPU, fp32)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModel, AutoTokenizer, BertConfig, BertModel

from segstream.encoding import (
    Encoder,
    cosine_rows,
    default_model_path,
    read_layout,
    text_hash,
    vec_from_bytes,
    vec_to_bytes,
)
from segstream.errors import ConfigError

TEXTS = [
    "Last 30 days: 41 views, 3 purchases worth 1,000-2,000. Mostly electronics (60%) and "
    "books (20%). Active on weekday evenings. Recently: wireless earbuds, usb-c hub.",
    "New user: 2 views.",
    "Mostly jazz and classical music; plays late at night, rates albums highly.",
    "Recently: " + ", ".join(f"item number {i}" for i in range(120)),  # > 256 tokens
    "Active on weekends. Mostly garden (80%).",
]


@pytest.fixture(scope="module")
def encoder() -> Encoder:
    torch.set_num_threads(2)
    return Encoder(dtype="float32")


def reference(path: Path, texts: list[str], max_length: int, cls: bool = False,
              normalize: bool = True) -> np.ndarray:
    """A plain forward pass: one padded batch, pooling written out here."""
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModel.from_pretrained(path, local_files_only=True).eval()
    batch = tok(texts, padding=True, truncation=True, max_length=max_length,
                return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    if cls:
        vec = hidden[:, 0]
    else:
        mask = batch["attention_mask"].unsqueeze(-1).float()
        vec = (hidden * mask).sum(1) / mask.sum(1)
    if normalize:
        vec = vec / vec.norm(dim=1, keepdim=True)
    return vec.numpy()


def test_matches_reference_forward_pass(encoder: Encoder) -> None:
    assert encoder.pooling.mode == "mean" and encoder.pooling.normalize
    assert encoder.max_length == 256  # from sentence_bert_config.json
    ours = encoder.encode(TEXTS, batch_size=2)  # several length-sorted, padded batches
    ref = reference(default_model_path(), TEXTS, 256)
    assert ours.shape == (len(TEXTS), 384) and ours.dtype == np.float32
    assert cosine_rows(ours, ref).min() >= 0.999
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


def test_batching_does_not_change_vectors(encoder: Encoder) -> None:
    together = encoder.encode(TEXTS)
    alone = np.vstack([encoder.encode([t]) for t in TEXTS])
    assert cosine_rows(together, alone).min() >= 0.9999
    assert encoder.encode([]).shape == (0, 384)
    with pytest.raises(TypeError):
        encoder.encode("one string")  # type: ignore[arg-type]


def test_bf16_stays_close_to_fp32(encoder: Encoder) -> None:
    bf16 = Encoder(dtype="bfloat16")
    assert bf16.model_version == encoder.model_version
    assert cosine_rows(bf16.encode(TEXTS), encoder.encode(TEXTS)).min() >= 0.999


def test_model_version_names_the_model(encoder: Encoder) -> None:
    assert encoder.model_version.startswith("all-MiniLM-L6-v2-")
    assert len(encoder.model_version.rsplit("-", 1)[1]) == 12


def _tiny_bert(dest: Path, seed: int = 0) -> Path:
    """A randomly initialised 2-layer BERT with the MiniLM tokenizer, saved to ``dest``."""
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=4, intermediate_size=64,
                        max_position_embeddings=128)
    BertModel(config).save_pretrained(dest)
    AutoTokenizer.from_pretrained(default_model_path(), local_files_only=True
                                  ).save_pretrained(dest)
    return dest


def test_other_bert_directory_works_by_config(tmp_path: Path) -> None:
    path = _tiny_bert(tmp_path / "tiny-bert")
    enc = Encoder(path, dtype="float32")
    assert enc.dim == 32 and enc.max_length == 128  # no ST config: model's own limit
    assert enc.pooling.mode == "mean" and enc.pooling.normalize  # the fallback
    assert enc.model_version.startswith("tiny-bert-")
    texts = [*TEXTS[:3], TEXTS[4]]
    assert cosine_rows(enc.encode(texts), reference(path, texts, 128)).min() >= 0.999


def test_sentence_transformers_layout_selects_pooling(tmp_path: Path) -> None:
    path = _tiny_bert(tmp_path / "cls-model")
    (path / "1_Pooling").mkdir()
    (path / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling",
         "type": "sentence_transformers.models.Pooling"},
    ]))
    (path / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": 32, "pooling_mode_cls_token": True,
         "pooling_mode_mean_tokens": False}))
    (path / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 64}))
    _, pooling, max_len = read_layout(path)
    assert (pooling.mode, pooling.normalize, max_len) == ("cls", False, 64)
    enc = Encoder(path, dtype="float32")
    ours, ref = enc.encode(TEXTS[:3]), reference(path, TEXTS[:3], 64, cls=True,
                                                 normalize=False)
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4)


def test_model_version_follows_content(tmp_path: Path) -> None:
    a = _tiny_bert(tmp_path / "m")
    first = Encoder(a).model_version
    (a / "README.md").write_text("docs do not change embeddings")
    assert Encoder(a).model_version == first
    shutil.rmtree(a)
    _tiny_bert(a, seed=1)  # same files, different weights
    second = Encoder(a).model_version
    assert second != first and second.startswith("m-")
    assert Encoder(a, max_length=16).model_version == f"{second}-len16"
    assert Encoder(a, name="custom").model_version.startswith("custom-")


def test_bad_model_directories_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        Encoder(tmp_path / "missing")
    with pytest.raises(ConfigError, match=r"no config\.json"):
        Encoder(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError) as info:
        Encoder(tmp_path)
    assert "\n" not in str(info.value)


def test_float16_bytes_round_trip() -> None:
    vec = np.random.default_rng(0).normal(size=384).astype(np.float32)
    raw = vec_to_bytes(vec)
    assert len(raw) == 384 * 2
    np.testing.assert_allclose(vec_from_bytes(raw), vec, rtol=1e-3, atol=1e-3)
    assert text_hash("a") == text_hash("a") != text_hash("b")
    assert len(text_hash("a")) == 32


def test_encode_command(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from segstream_services.cli import main

    assert main(["encode", "hello world", "Mostly books (60%)."]) == 0
    out = capsys.readouterr().out
    assert "all-MiniLM-L6-v2-" in out and "cosine:" in out and "norm=1.000" in out
    assert main(["encode"]) == 2
    assert main(["encode", "x", "--model", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["segstream: give at least one TEXT or --file",
                   f"segstream: encoder model directory not found: {tmp_path / 'nope'}"]
