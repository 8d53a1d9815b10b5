"""What every process of the throughput bench shares: the workload's shape and a few helpers.

Kept free of the daemon package and of numpy, so that the parent, the publisher and the bare
subscriber stay small and their RSS and CPU are their own.
"""

from __future__ import annotations

import json
import math
import os
import socket
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "throughput.py"  # every child is this script with a role name

HOST = "127.0.0.1"
WINDOW = 60
FEATURES = [f"s{i}" for i in range(8)]
TOPIC = "sensors/{}/data"
MOSQUITTO = os.environ.get("ANOMALYD_MOSQUITTO", "/usr/sbin/mosquitto")
MAX_BATCH = 64
PART_LOAD = 0.25  # of the model's batch-64 rate: the worker at part load, where batching saves CPU
PYTHON_SWITCH_INTERVAL = 0.005  # sys.getswitchinterval() of a fresh interpreter


def rss_mb(pid: int | str = "self") -> float:
    """Resident set size of a process in MiB (VmRSS)."""
    return _status_kb(pid, "VmRSS") / 1024


def hwm_mb(pid: int | str = "self") -> float:
    """Peak resident set size (VmHWM) in MiB."""
    return _status_kb(pid, "VmHWM") / 1024


def _status_kb(pid: int | str, key: str) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return float(line.split()[1])
    return math.nan


def cpu_seconds() -> float:
    """User + system CPU time of this process."""
    return sum(os.times()[:2])


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def reply(obj: dict) -> None:
    """One JSON line on stdout: how every child answers the parent."""
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()
