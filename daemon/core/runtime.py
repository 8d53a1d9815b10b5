"""Inference runtimes: turn a bundle's weights into a function `[B, W, F] float32 -> same`.

Kept apart from scoring so the daemon can run on ONNX Runtime without importing torch (a
second of start-up and a large share of the memory on an edge box); imports happen inside the
loaders for that reason.
"""

from __future__ import annotations

import logging
import warnings
from typing import Callable, Iterator

import numpy as np

from daemon.core.bundle import Bundle
from daemon.core.errors import BundleError

log = logging.getLogger(__name__)

Backend = Callable[[np.ndarray], np.ndarray]
# The most windows one model call takes: past it no runtime gets faster per window on an edge
# CPU (docs/performance.md), and it bounds the shapes `padded_size` makes.
MAX_MODEL_BATCH = 64
RUNTIMES = ("torch", "onnx")
# ONNX metadata key holding the sha256 of the weights a model.onnx was exported from
# (written by daemon.offline.onnx_export), so a bundle retrained in place is not served stale.
ONNX_WEIGHTS_KEY = "anomalyd.weights_sha256"


def load_backend(bundle: Bundle, runtime: str = "torch", threads: int = 1) -> Backend:
    if runtime == "torch":
        return torch_backend(load_torch_model(bundle), threads)
    if runtime == "onnx":
        return _onnx_backend(bundle, threads)
    raise ValueError(f"runtime {runtime!r} unknown (use one of: {', '.join(RUNTIMES)})")


def load_torch_model(bundle: Bundle):
    """Build the bundle's architecture and load its safetensors weights (strictly)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from daemon.core.models import build_model

    try:
        model = build_model(bundle.arch, bundle.window, len(bundle.features), bundle.arch_params)
    except (ValueError, TypeError) as exc:
        raise BundleError(f"{bundle.path}/bundle.json: field 'architecture': {exc}") from None
    try:
        state = load_file(str(bundle.weights_path))
    except (SafetensorError, OSError) as exc:
        raise BundleError(f"{bundle.weights_path}: cannot read weights ({exc})") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise BundleError(f"{bundle.weights_path}: weights do not fit architecture {bundle.arch!r} ({first})") from None
    model.eval()
    return model


def model_batches(n: int) -> Iterator[slice]:
    """Slices cutting `n` windows into model calls of at most MAX_MODEL_BATCH: the one place a
    batch is cut, for `Scorer.score_windows` and the live worker alike."""
    for start in range(0, n, MAX_MODEL_BATCH):
        yield slice(start, min(start + MAX_MODEL_BATCH, n))


def padded_size(n: int) -> int:
    """The batch size the torch runtime runs `n` windows at: the next power of two up to 8,
    then the next multiple of 8.

    torch runs LSTM and Conv1d layers on oneDNN, which builds and keeps a kernel, and its memory,
    for every input shape it meets, and a live worker's batches take every size from 1 to
    MAX_MODEL_BATCH over hours of uneven traffic (bench/throughput.py, "every batch size";
    figures in docs/performance.md). Padding bounds that to 11 shapes at the price of at most 7
    padded windows a batch. ONNX Runtime keeps nothing per shape and is not padded."""
    if n <= 8:
        return 1 << max(n - 1, 0).bit_length()
    return -(-n // 8) * 8


def padded_sizes(max_batch: int) -> list[int]:
    """Every size `padded_size` gives for model calls of 1 to `max_batch` windows (at most
    MAX_MODEL_BATCH: larger batches are cut by `model_batches`)."""
    return sorted({padded_size(n) for n in range(1, min(max_batch, MAX_MODEL_BATCH) + 1)})


def torch_backend(model, threads: int) -> Backend:
    """The model as a batch function, run through `trace_for_inference` at `padded_size`."""
    import torch

    torch.set_num_threads(threads)
    graph = trace_for_inference(model)

    def run(batch: np.ndarray) -> np.ndarray:
        n = len(batch)
        size = padded_size(n)
        if size != n:
            batch = np.concatenate([batch, np.zeros((size - n, *batch.shape[1:]), batch.dtype)])
        with torch.inference_mode():
            return graph(torch.from_numpy(batch)).numpy()[:n]

    return run


def trace_for_inference(model):
    """The model as a TorchScript trace: one call from Python into C++ per batch, instead of
    one per layer and op.

    Each return from C++ to Python has to win back the GIL. While another thread runs Python
    (the MQTT thread under load, a sink), every such return waits up to the interpreter's switch
    interval, so the fewer returns, the closer the model runs to its own speed beside a busy
    thread (bench/throughput.py, "model beside a busy Python thread"; figures in
    docs/performance.md). The trace gives the same numbers to the last bit
    (tests/test_model_conformance.py).

    `torch.jit.trace` is deprecated in recent torch, and its successors (torch.compile,
    torch.export with AOTInductor) need a C++ compiler on the box. Where torch cannot trace, the
    model runs eagerly: same scores, slower under load, and it logs a warning."""
    import torch

    example = torch.zeros(2, model.window, model.n_features)
    try:
        with warnings.catch_warnings(), torch.inference_mode():
            warnings.simplefilter("ignore", DeprecationWarning)
            # nn.LSTM's input-size checks become constants of the trace: right for a model
            # whose shapes are fixed by its bundle.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            return torch.jit.trace(model, example, check_trace=False)
    except (AttributeError, RuntimeError) as exc:
        log.warning("torch runtime: cannot trace the model (%s); running it eagerly, which is slower "
                    "while other threads are busy", exc)
        return model


def _onnx_backend(bundle: Bundle, threads: int) -> Backend:
    try:
        import onnxruntime as ort
    except ImportError:
        raise BundleError("runtime 'onnx' needs the onnxruntime package (pip install 'anomalyd[onnx]')") from None
    path = bundle.onnx_path
    if not path.is_file():
        raise BundleError(f"{path}: missing (export it with: anomalyd export-onnx --model {bundle.path})")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own untyped errors for bad files
        raise BundleError(f"{path}: cannot load ONNX model ({str(exc).splitlines()[0]})") from None
    exported_from = session.get_modelmeta().custom_metadata_map.get(ONNX_WEIGHTS_KEY)
    if exported_from is not None and exported_from != bundle.weights_sha256:
        raise BundleError(f"{path}: exported from other weights than {bundle.weights_path.name} (stale export?); "
                          f"re-export it with: anomalyd export-onnx --model {bundle.path}")
    name = session.get_inputs()[0].name

    def run(batch: np.ndarray) -> np.ndarray:
        return session.run(None, {name: batch})[0]

    return run
