"""The autoencoder family (from the LSTM-autoencoder anomaly-detection literature).

Every architecture honours one contract, checked by tests/test_model_conformance.py:
`[batch, window, features]` in, a reconstruction of the same shape out, and `losses(x)`
giving the reconstruction loss and any extra training term (the sparse AE's penalty), so
training does not need to know which network it is training.
"""

from __future__ import annotations

import inspect

import torch
from torch import nn


class AutoEncoder(nn.Module):
    """Base: `forward(x) = decode(encode(x))`; `penalty(z)` is the extra training loss term."""

    def __init__(self, window: int, n_features: int) -> None:
        super().__init__()
        self.window = window
        self.n_features = n_features

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    def penalty(self, z: torch.Tensor) -> torch.Tensor:
        return z.new_zeros(())

    def losses(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean squared reconstruction error, extra loss term) for one training batch."""
        z = self.encode(x)
        return torch.mean((self.decode(z) - x) ** 2), self.penalty(z)


class LSTMAutoEncoder(AutoEncoder):
    """Encoder-decoder LSTM (Malhotra et al. 2016): the last encoder state, projected to a
    latent vector, is repeated over the window and decoded back to the sensor values."""

    def __init__(self, window: int, n_features: int, hidden: int = 64, latent: int = 16,
                 layers: int = 1, dropout: float = 0.0) -> None:
        super().__init__(window, n_features)
        between = dropout if layers > 1 else 0.0
        self.encoder = nn.LSTM(n_features, hidden, layers, batch_first=True, dropout=between)
        self.to_latent = nn.Linear(hidden, latent)
        self.decoder = nn.LSTM(latent, hidden, layers, batch_first=True, dropout=between)
        self.output = nn.Linear(hidden, n_features)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        _, (h, _) = self.encoder(x)
        return self.to_latent(h[-1])

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        repeated = z.unsqueeze(1).repeat(1, self.window, 1)
        out, _ = self.decoder(repeated)
        return self.output(out)


class ConvAutoEncoder(AutoEncoder):
    """1-D convolutional AE over time (the SKAB leaderboard's Conv-AE layout): two stride-2
    convolutions down, two transposed convolutions up, cropped back to the window."""

    def __init__(self, window: int, n_features: int, channels: int = 32, kernel: int = 7,
                 dropout: float = 0.2) -> None:
        super().__init__(window, n_features)
        pad = kernel // 2
        half = channels // 2
        self.encoder = nn.Sequential(
            nn.Conv1d(n_features, channels, kernel, stride=2, padding=pad), nn.ReLU(), nn.Dropout(dropout),
            nn.Conv1d(channels, half, kernel, stride=2, padding=pad), nn.ReLU(),
        )
        self.decoder = nn.Sequential(
            nn.ConvTranspose1d(half, half, kernel, stride=2, padding=pad, output_padding=1), nn.ReLU(),
            nn.Dropout(dropout),
            nn.ConvTranspose1d(half, channels, kernel, stride=2, padding=pad, output_padding=1), nn.ReLU(),
            nn.Conv1d(channels, n_features, kernel, padding=pad),
        )

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x.transpose(1, 2))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)[:, :, : self.window].transpose(1, 2)


class MLPAutoEncoder(AutoEncoder):
    """Dense AE on the flattened window: the fastest member, and a strong baseline when the
    window is short."""

    def __init__(self, window: int, n_features: int, hidden: int = 128, latent: int = 16) -> None:
        super().__init__(window, n_features)
        flat = window * n_features
        self.encoder = nn.Sequential(nn.Flatten(), nn.Linear(flat, hidden), nn.ReLU(), nn.Linear(hidden, latent))
        self.decoder = nn.Sequential(nn.ReLU(), nn.Linear(latent, hidden), nn.ReLU(), nn.Linear(hidden, flat))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z).view(-1, self.window, self.n_features)


class SparseAutoEncoder(MLPAutoEncoder):
    """Over-complete dense AE kept honest by a sparsity penalty on the latent code: L1 on the
    activations, or KL divergence of the mean sigmoid activation from a target rate `rho`."""

    SPARSITY = ("l1", "kl")

    def __init__(self, window: int, n_features: int, hidden: int = 128, latent: int = 64,
                 sparsity: str = "l1", weight: float = 1e-3, rho: float = 0.05) -> None:
        if sparsity not in self.SPARSITY:
            raise ValueError(f"sparsity {sparsity!r} unknown (use one of: {', '.join(self.SPARSITY)})")
        super().__init__(window, n_features, hidden, latent)
        self.sparsity, self.weight, self.rho = sparsity, weight, rho

    def penalty(self, z: torch.Tensor) -> torch.Tensor:
        if self.sparsity == "l1":
            return self.weight * z.abs().mean()
        rho_hat = torch.sigmoid(z).mean(dim=0).clamp(1e-6, 1 - 1e-6)
        rho = self.rho
        kl = rho * torch.log(rho / rho_hat) + (1 - rho) * torch.log((1 - rho) / (1 - rho_hat))
        return self.weight * kl.sum()


SINGLE: dict[str, type[AutoEncoder]] = {
    "lstm": LSTMAutoEncoder,
    "conv": ConvAutoEncoder,
    "mlp": MLPAutoEncoder,
    "sparse": SparseAutoEncoder,
}


class EnsembleAutoEncoder(AutoEncoder):
    """Several single autoencoders (default parameters each) whose reconstructions are
    averaged. Each member is trained on its own reconstruction loss, so they stay independent
    models and their errors partly cancel: one LSTM and two Conv AEs reach a better F1 at a
    given false-alarm rate than any of them alone (docs/quality.md), at the sum of their
    inference costs. `members` is a list of names, or a comma-separated
    string as `--param members=lstm,conv` gives it."""

    def __init__(self, window: int, n_features: int, members: str | list = "lstm,conv,conv") -> None:
        super().__init__(window, n_features)
        names = [m.strip() for m in members.split(",")] if isinstance(members, str) else list(members)
        unknown = [m for m in names if m not in SINGLE]
        if len(names) < 2 or unknown:
            raise ValueError(f"members must name at least two of {', '.join(SINGLE)}, got {names}")
        self.members = nn.ModuleList([SINGLE[m](window, n_features) for m in names])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([member(x) for member in self.members]).mean(dim=0)

    def losses(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        parts = [member.losses(x) for member in self.members]
        return sum(loss for loss, _ in parts) / len(parts), sum(extra for _, extra in parts)


ARCHITECTURES: dict[str, type[AutoEncoder]] = {**SINGLE, "ensemble": EnsembleAutoEncoder}


def default_params(arch: str) -> dict:
    """The architecture's hyper-parameters and their defaults, read from its signature."""
    signature = inspect.signature(_architecture(arch).__init__)
    return {name: p.default for name, p in signature.parameters.items()
            if p.default is not inspect.Parameter.empty}


def build_model(arch: str, window: int, n_features: int, params: dict | None = None) -> AutoEncoder:
    """Instantiate `arch`; unknown hyper-parameter names are an error naming them."""
    merged = default_params(arch)
    unknown = sorted(set(params or {}) - set(merged))
    if unknown:
        raise ValueError(f"architecture {arch!r}: unknown parameter(s) {', '.join(unknown)} "
                         f"(known: {', '.join(merged)})")
    merged.update(params or {})
    return _architecture(arch)(window, n_features, **merged)


def _architecture(arch: str) -> type[AutoEncoder]:
    try:
        return ARCHITECTURES[arch]
    except KeyError:
        raise ValueError(f"architecture {arch!r} unknown (use one of: {', '.join(ARCHITECTURES)})") from None
