"""Every architecture honours the same contract (river-style conformance suite)."""

import pytest
import torch

from daemon.core.models import ARCHITECTURES, build_model, default_params

WINDOW, FEATURES = 24, 5


@pytest.fixture(params=sorted(ARCHITECTURES))
def arch(request):
    return request.param


def test_output_has_the_input_shape(arch):
    model = build_model(arch, WINDOW, FEATURES).eval()
    for batch in (1, 7):
        assert model(torch.randn(batch, WINDOW, FEATURES)).shape == (batch, WINDOW, FEATURES)


def test_same_seed_same_weights_same_output(arch):
    x = torch.randn(3, WINDOW, FEATURES)
    outputs = []
    for _ in range(2):
        torch.manual_seed(123)
        outputs.append(build_model(arch, WINDOW, FEATURES).eval()(x))
    torch.testing.assert_close(outputs[0], outputs[1], rtol=0, atol=0)


def test_state_dict_round_trip_reproduces_output(arch, tmp_path):
    from safetensors.torch import load_file, save_file

    model = build_model(arch, WINDOW, FEATURES).eval()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "w.safetensors"))
    clone = build_model(arch, WINDOW, FEATURES).eval()
    clone.load_state_dict(load_file(str(tmp_path / "w.safetensors")))
    x = torch.randn(2, WINDOW, FEATURES)
    torch.testing.assert_close(model(x), clone(x), rtol=0, atol=0)


def test_the_inference_trace_reconstructs_every_batch_size_exactly_like_the_model(arch):
    """The torch runtime serves the trace, so the trace must not depend on the batch size it
    was traced with (2) nor round differently from the eager model, on its first calls (which
    TorchScript profiles) or later ones."""
    from daemon.core.runtime import trace_for_inference

    model = build_model(arch, 61, 3).eval()
    graph = trace_for_inference(model)
    for batch in (1, 2, 7, 64) * 3:
        x = torch.randn(batch, 61, 3)
        with torch.inference_mode():
            assert (graph(x).numpy() == model(x).numpy()).all(), f"batch {batch}"


def test_the_torch_runtime_pads_a_batch_without_changing_its_windows(arch):
    """Padding only changes how the kernels block the batch: a few float32 ulps at most."""
    from daemon.core.runtime import torch_backend

    model = build_model(arch, 61, 3).eval()
    backend = torch_backend(model, threads=1)
    for batch in (1, 3, 7, 9, 33, 64):
        x = torch.randn(batch, 61, 3)
        with torch.inference_mode():
            expected = model(x).numpy()
        torch.testing.assert_close(backend(x.numpy()), expected, rtol=1e-5, atol=1e-6)


def test_without_a_tracer_the_model_runs_eagerly_and_says_so(monkeypatch, caplog):
    from daemon.core import runtime

    def no_tracer(*args, **kwargs):
        raise AttributeError("module 'torch.jit' has no attribute 'trace'")

    monkeypatch.setattr(torch.jit, "trace", no_tracer)
    model = build_model("lstm", WINDOW, FEATURES).eval()
    assert runtime.trace_for_inference(model) is model
    assert "running it eagerly" in caplog.text


def test_gradient_reaches_every_parameter(arch):
    model = build_model(arch, WINDOW, FEATURES).train()
    x = torch.randn(4, WINDOW, FEATURES)
    loss, extra = model.losses(x)
    (loss + extra).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_window_lengths_that_do_not_divide_evenly_are_reconstructed_whole(arch):
    model = build_model(arch, 61, 3).eval()
    assert model(torch.randn(2, 61, 3)).shape == (2, 61, 3)


def test_unknown_hyperparameter_is_named(arch):
    with pytest.raises(ValueError, match="unknown parameter.*bogus"):
        build_model(arch, WINDOW, FEATURES, {"bogus": 1})
    assert default_params(arch)


def test_only_sparse_has_a_penalty():
    x = torch.randn(2, WINDOW, FEATURES)
    for arch in ARCHITECTURES:
        model = build_model(arch, WINDOW, FEATURES)
        assert (model.losses(x)[1].item() > 0) == (arch == "sparse")


def test_ensemble_reconstructs_with_the_mean_of_its_members():
    torch.manual_seed(0)
    model = build_model("ensemble", WINDOW, FEATURES, {"members": "lstm,conv,mlp"}).eval()
    x = torch.randn(3, WINDOW, FEATURES)
    members = [member(x) for member in model.members]
    assert [type(m).__name__ for m in model.members] == ["LSTMAutoEncoder", "ConvAutoEncoder", "MLPAutoEncoder"]
    torch.testing.assert_close(model(x), sum(members) / 3)


def test_ensemble_trains_each_member_on_its_own_reconstruction():
    model = build_model("ensemble", WINDOW, FEATURES, {"members": ["mlp", "sparse"]})
    x = torch.randn(4, WINDOW, FEATURES)
    loss, extra = model.losses(x)
    alone = [member.losses(x) for member in model.members]
    torch.testing.assert_close(loss, (alone[0][0] + alone[1][0]) / 2)
    torch.testing.assert_close(extra, alone[1][1])


@pytest.mark.parametrize("members", ["lstm", "lstm,bogus", "ensemble,lstm"])
def test_ensemble_members_are_checked(members):
    with pytest.raises(ValueError, match="members must name at least two"):
        build_model("ensemble", WINDOW, FEATURES, {"members": members})


def test_kl_sparsity_is_available():
    model = build_model("sparse", WINDOW, FEATURES, {"sparsity": "kl"})
    assert model.penalty(model.encode(torch.randn(4, WINDOW, FEATURES))).item() > 0
