"""Export a bundle's model to ONNX (`model.onnx` next to `model.safetensors`).

The ONNX runtime backend (`model.runtime: onnx`) then serves the bundle without importing
torch: faster at small batches and a much smaller daemon on an edge box (figures in
docs/performance.md).

The legacy TorchScript-based exporter (`dynamo=False`) writes one self-contained file with a
dynamic batch axis. The export is checked before it is kept: ONNX Runtime must reproduce
torch's reconstruction of random windows within `tolerance`, otherwise nothing is written.
The weights' sha256 from bundle.json is stored in the file's metadata, so the runtime refuses
an ONNX file exported from other weights (a bundle retrained in place without re-exporting).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from daemon.core.bundle import Bundle, load_bundle
from daemon.core.errors import BundleError, UserError
from daemon.core.runtime import ONNX_WEIGHTS_KEY

INPUT_NAME = "windows"
OUTPUT_NAME = "reconstruction"
OPSET = 17
TOLERANCE = 1e-5


def export_onnx(bundle_dir: str | os.PathLike[str], tolerance: float = TOLERANCE) -> Path:
    """Write `<bundle_dir>/model.onnx` from the bundle's weights and return its path.

    Raises BundleError for an unreadable bundle, and when ONNX Runtime's output differs from
    torch's by more than `tolerance` (the file is then not written)."""
    import torch

    from daemon.core.runtime import load_torch_model

    try:
        import onnx  # noqa: F401 - the exporter and _stamp need it
        import onnxruntime  # noqa: F401 - _check needs it
    except ImportError as exc:
        raise UserError(f"exporting to ONNX needs the onnx and onnxruntime packages ({exc.name} is missing; "
                        f"pip install 'anomalyd[onnx]')") from None
    bundle = load_bundle(bundle_dir)
    model = load_torch_model(bundle)
    target = bundle.onnx_path
    tmp = target.with_name(target.name + ".tmp")
    example = torch.zeros(1, bundle.window, len(bundle.features))
    try:
        with torch.inference_mode(), warnings.catch_warnings():
            # The tracer warns about shape checks it freezes and about LSTM batch sizes; both are
            # covered by _check, which compares batches 1, 7 and 64 against torch.
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", message="Exporting a model to ONNX with a batch_size other than 1")
            # The legacy exporter is chosen on purpose (one self-contained file, LSTM support).
            warnings.filterwarnings("ignore", category=DeprecationWarning, message="You are using the legacy")
            warnings.filterwarnings("ignore", category=DeprecationWarning, message="The feature will be removed")
            torch.onnx.export(model, (example,), str(tmp), dynamo=False, opset_version=OPSET,
                              input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
        _stamp(tmp, bundle)
        _check(tmp, bundle, model, tolerance)
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def _stamp(path: Path, bundle: Bundle) -> None:
    """Record which weights the file was exported from (checked by the onnx runtime)."""
    import onnx

    proto = onnx.load(str(path))
    entries = {p.key: p for p in proto.metadata_props}
    entry = entries.get(ONNX_WEIGHTS_KEY) or proto.metadata_props.add()
    entry.key, entry.value = ONNX_WEIGHTS_KEY, bundle.weights_sha256
    proto.doc_string = f"anomalyd bundle {bundle.name!r} ({bundle.arch}, window {bundle.window}, " \
                       f"{len(bundle.features)} features)"
    onnx.save(proto, str(path))


def _check(path: Path, bundle: Bundle, model, tolerance: float) -> None:
    """ONNX Runtime must reproduce torch on random windows of several batch sizes."""
    import onnxruntime as ort
    import torch

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    for batch in (1, 7, 64):
        x = rng.normal(size=(batch, bundle.window, len(bundle.features))).astype(np.float32)
        with torch.inference_mode():
            expected = model(torch.from_numpy(x)).numpy()
        got = session.run(None, {INPUT_NAME: x})[0]
        worst = float(np.max(np.abs(got - expected)))
        if got.shape != expected.shape or not worst <= tolerance:
            raise BundleError(f"{bundle.path}: ONNX export of {bundle.arch!r} does not reproduce torch "
                              f"(batch {batch}: max difference {worst:.3g} > {tolerance:g}); model.onnx not written")
