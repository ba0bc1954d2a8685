"""Model backends behind the `ChatModel` seam.

`local` is the in-process transformers runtime (scheduler, decoder, quantization, our CPU kernels,
weight preparation). Callers outside this package use only the functions here, so another backend
is a module added beside `local`, chosen in `load_model`: `openai_server` is a model on an
OpenAI-compatible model server.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from bot.seams import ChatModel
from config import Settings


def load_model(settings: Settings, progress: bool = True) -> ChatModel:
    """Prepare (first time: assemble, verify, convert, with a progress bar) and load the model;
    with `model.backend = "openai"`, connect to the model server instead (no local weights)."""
    if settings.model.backend == "openai":
        from bot.inference.openai_server import OpenAIServerModel, api_key_from

        return OpenAIServerModel.load(settings.model, settings.model_cache_dir, api_key_from(os.environ))
    from bot.inference.local import TransformersModel

    return TransformersModel.load(
        settings.model, settings.model_cache_dir, progress=progress, scheduler=settings.scheduler
    )


def prepare(settings: Settings, progress: bool = True) -> Iterator[str]:
    """Do the slow first-time work ahead of a chat; yields one line per part that is ready."""
    if settings.model.backend == "openai":
        from bot.inference.openai_server import display_url

        server = display_url(settings.model.base_url or "")
        yield f"{settings.model.name} runs on the model server at {server}: nothing to prepare"
        return
    from bot.inference.local import resolve_device, resolve_quantization
    from bot.inference.weights import prepare_model

    path = prepare_model(settings.model, settings.model_cache_dir, progress)
    yield f"{settings.model.name} is ready: {path}"
    scheme = resolve_quantization(settings.model.quantization, resolve_device(settings.model.device))
    if scheme is None:
        return
    from bot.inference.quantize import label, prepare_quantized

    quantized = prepare_quantized(path, scheme, settings.model_cache_dir, progress)
    yield f"{settings.model.name} ({label(scheme)} weights) is ready: {quantized}"
    if settings.model.kernels != "torch":
        from bot.inference import kernels

        yield kernels.prepare(settings.model_cache_dir, progress, settings.model.simd)


def prepare_weights(settings: Settings, progress: bool = True) -> None:
    """Assemble, verify and convert the configured model's weights (quick when already done; nothing
    to do for a model on a model server)."""
    if settings.model.backend == "openai":
        return
    from bot.inference.weights import prepare_model

    prepare_model(settings.model, settings.model_cache_dir, progress)
