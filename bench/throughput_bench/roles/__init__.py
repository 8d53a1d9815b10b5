"""The child processes of the throughput bench, one role each.

A child is `bench/throughput.py ROLE SPEC_JSON`; it answers the parent with JSON lines on
stdout (and, when interactive, reads commands as JSON lines on stdin). Roles are imported
only in the child that runs them: the parent, the publisher and the bare subscriber never
load the daemon package, numpy or torch.
"""

from __future__ import annotations

import importlib
from typing import Callable

# role name -> (module in this package, function)
ROLES = {
    "_publish": ("publisher", "role_publish"),
    "_bare": ("bare_subscriber", "role_bare"),
    "_daemon": ("daemon_process", "role_daemon"),
    "_scoring": ("scoring", "role_scoring"),
    "_shapes": ("model_alone", "role_shapes"),
    "_model_threads": ("model_alone", "role_model_threads"),
    "_train": ("training", "role_train"),
}


def role(name: str) -> Callable[[dict], None]:
    module, function = ROLES[name]
    return getattr(importlib.import_module(f"{__name__}.{module}"), function)
