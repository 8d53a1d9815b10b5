"""The ONNX export and the torch-free onnx runtime: same scores as torch, no torch in the daemon."""

import argparse
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from daemon.offline import synthetic  # noqa: E402
from daemon.commands import export_onnx as export_command  # noqa: E402
from daemon.core.errors import BundleError  # noqa: E402
from daemon.offline.frames import Frame  # noqa: E402
from daemon.offline.onnx_export import export_onnx  # noqa: E402
from daemon.core.runtime import ONNX_WEIGHTS_KEY  # noqa: E402
from daemon.core.scoring import Scorer  # noqa: E402
from daemon.offline.training import TrainConfig, save, train  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
WINDOW = 16
ARCHS = ("lstm", "conv", "mlp", "sparse", "ensemble")


def _frame() -> Frame:
    data = synthetic.normal(400, seed=5)
    return Frame("generated", data.timestamps, data.values, list(synthetic.FEATURES))


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> dict[str, Path]:
    """One tiny bundle per architecture, exported to ONNX."""
    root = tmp_path_factory.mktemp("onnx")
    frame = _frame()
    out = {}
    for arch in ARCHS:
        directory = root / arch
        save(train([frame], TrainConfig(arch=arch, window=WINDOW, epochs=1, seed=1, name=arch)), directory)
        export_onnx(directory)
        out[arch] = directory
    return out


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("batch", [1, 5, 64])
def test_onnx_reconstruction_and_scores_match_torch(bundles, arch, batch):
    torch_scorer = Scorer.load(bundles[arch], "torch")
    onnx_scorer = Scorer.load(bundles[arch], "onnx")
    rng = np.random.default_rng(batch)
    raw = (_frame().values[:WINDOW] + rng.normal(0, 0.5, size=(batch, WINDOW, len(synthetic.FEATURES))))
    raw = raw.astype(np.float32)
    scaled = np.ascontiguousarray(torch_scorer.bundle.scaler.transform(raw))
    np.testing.assert_allclose(onnx_scorer.backend(scaled), torch_scorer.backend(scaled), rtol=0, atol=1e-5)
    a, b = torch_scorer.score_windows(raw), onnx_scorer.score_windows(raw)
    np.testing.assert_allclose(b.scores, a.scores, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(b.feature_errors, a.feature_errors, rtol=1e-4, atol=1e-6)


def test_onnx_file_records_the_weights_it_was_exported_from(bundles):
    import onnx

    proto = onnx.load(str(bundles["mlp"] / "model.onnx"))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta[ONNX_WEIGHTS_KEY] == Scorer.load(bundles["mlp"], "onnx").bundle.weights_sha256


def test_stale_export_is_refused_with_the_command_that_fixes_it(bundles, tmp_path):
    import shutil

    import onnx

    directory = tmp_path / "stale"
    shutil.copytree(bundles["mlp"], directory)
    proto = onnx.load(str(directory / "model.onnx"))
    for prop in proto.metadata_props:
        if prop.key == ONNX_WEIGHTS_KEY:
            prop.value = "0" * 64  # as if the weights were retrained after the export
    onnx.save(proto, str(directory / "model.onnx"))
    with pytest.raises(BundleError, match="stale export.*anomalyd export-onnx --model"):
        Scorer.load(directory, "onnx")


def test_missing_onnx_file_names_the_export_command(bundles, tmp_path):
    import shutil

    directory = tmp_path / "no-onnx"
    shutil.copytree(bundles["mlp"], directory)
    (directory / "model.onnx").unlink()
    with pytest.raises(BundleError, match="missing.*anomalyd export-onnx --model"):
        Scorer.load(directory, "onnx")


def test_export_command_writes_model_onnx(bundles, tmp_path, capsys):
    import shutil

    directory = tmp_path / "cmd"
    shutil.copytree(bundles["conv"], directory)
    (directory / "model.onnx").unlink()
    parser = argparse.ArgumentParser()
    export_command.add_parser(parser.add_subparsers(dest="command"), "export a bundle's model to ONNX")
    args = parser.parse_args(["export-onnx", "--model", str(directory)])
    assert args.run(args) == 0
    assert (directory / "model.onnx").is_file()
    assert "matches torch within 1e-5" in capsys.readouterr().out
    Scorer.load(directory, "onnx")


def test_train_exports_model_onnx_unless_told_not_to(tmp_path):
    from daemon.cli import main
    from datafiles import normal_csv

    data = normal_csv(tmp_path, rows=300)
    base = ["train", "--data", str(data), "--arch", "mlp", "--window", "16", "--epochs", "1"]
    assert main([*base, "--out", str(tmp_path / "with")]) == 0
    Scorer.load(tmp_path / "with", "onnx")
    assert main([*base, "--out", str(tmp_path / "without"), "--no-onnx"]) == 0
    assert not (tmp_path / "without" / "model.onnx").exists()


def test_daemon_with_onnx_runtime_never_imports_torch(bundles, tmp_path):
    """`anomalyd run` on the onnx runtime, in a fresh interpreter where importing torch fails:
    the service starts, scores windows and stops without ever trying."""
    config = tmp_path / "config.yaml"
    config.write_text(json.dumps({
        "model": {"path": str(bundles["lstm"]), "runtime": "onnx"},
        "mqtt": {"host": "127.0.0.1", "port": 9, "persistent_session": False},  # nothing listens: fine
        "metrics": {"enabled": False}, "local_store": {"path": str(tmp_path / "scores.lp")},
        "logging": {"level": "ERROR"},
    }))
    script = textwrap.dedent(f"""
        import json, sys
        import numpy as np

        class NoTorch:
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ImportError("torch must not be imported with runtime onnx")
                return None

        sys.meta_path.insert(0, NoTorch())
        from daemon.live.config import load_config
        from daemon.live.service import Service
        from daemon.live.events import WindowJob

        service = Service(load_config({str(config)!r}))
        service.start()
        window = np.zeros(({WINDOW}, {len(synthetic.FEATURES)}), dtype=np.float32)
        for i in range(3):
            service.queue.put(WindowJob("dev-1", 1.7e9 + i, window, 1.7e9 + i))
        service.shutdown(10)
        scored = service.metrics.registry.get_sample_value("anomalyd_windows_scored_total")
        print(json.dumps({{"torch": "torch" in sys.modules, "scored": scored}}))
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {"torch": False, "scored": 3.0}
