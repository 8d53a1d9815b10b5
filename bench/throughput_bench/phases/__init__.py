"""What the parent measures, one function per phase: each takes the run's `Harness` and returns
the phase's results (the key it has in the report and in --json)."""

from __future__ import annotations

from typing import Callable

from ..harness import Harness
from .ingest import ingest
from .memory import growth, memory
from .model import scoring, shapes, train
from .sustained import latency, sustained
from .threads import torch_threads

# In the order a full run takes them; --only picks some.
PHASES: dict[str, Callable[[Harness], dict]] = {
    "scoring": scoring, "ingest": ingest, "sustained": sustained, "latency": latency,
    "memory": memory, "growth": growth, "shapes": shapes, "threads": torch_threads,
}
# Run only when --only names them: a question about a setting, not a figure of the daemon.
OPT_IN = ("threads",)

__all__ = ["OPT_IN", "PHASES", "train"]
