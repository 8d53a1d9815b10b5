"""`anomalyd check-config`: every problem of a config file, each with its field path.

It checks what `run` checks before it starts (the same functions), so a config it calls ok is
one `run` starts with: the file's own rules, every bundle it names, and what the host must
offer (the metrics port, the directory scores are written to).
"""

from __future__ import annotations

import argparse
import sys

from daemon.core.bundle import Bundle, load_bundle
from daemon.commands.common import formatter
from daemon.core.errors import UserError
from daemon.live.assembly import check_candidate_shape
from daemon.live.config import ModelConfig, build, example_yaml, read_yaml, validate
from daemon.live.preflight import start_problems


def add_parser(sub: argparse._SubParsersAction, summary: str) -> None:
    p = sub.add_parser("check-config", help=summary,
                       formatter_class=formatter,
                       description="Print every problem of a config file with its field path; exit 2 if any. "
                                   "Checks what 'anomalyd run' needs at start: valid fields, loadable "
                                   "bundles, a free metrics port, a writable spool or score file.",
                       epilog="examples:\n  anomalyd check-config config.yaml\n"
                              "  anomalyd check-config --running /etc/anomalyd/config.yaml   # before a reload\n"
                              "  anomalyd check-config --example > config.yaml   # all defaults, commented\n")
    p.add_argument("file", nargs="?", default="config.yaml", help="config file (default: %(default)s)")
    p.add_argument("--example", action="store_true", help="print a complete commented config and exit")
    p.add_argument("--running", action="store_true",
                   help="the service is running with this config (checking before a reload or restart): "
                        "skip the metrics port and spool lock, which the running instance holds")
    p.set_defaults(run=run)


def bundle_problems(raw: object) -> list[str]:
    """Load every bundle the config names (model.path, model.devices.*, model.candidate) and
    report the bad ones, and a candidate that does not take model.path's windows."""
    model = raw.get("model") if isinstance(raw, dict) else None
    model = model if isinstance(model, dict) else {}
    paths = {"model.path": model.get("path", ModelConfig.path)}
    devices = model.get("devices")
    if isinstance(devices, dict):
        paths.update({f"model.devices.{pattern}": path for pattern, path in devices.items()})
    if model.get("candidate") is not None:
        paths["model.candidate"] = model["candidate"]
    problems = []
    loaded: dict[str, Bundle] = {}
    for where, path in paths.items():
        if isinstance(path, str):
            try:
                loaded[where] = load_bundle(path)
            except UserError as exc:
                problems.append(f"{where}: {exc}")
    served, candidate = loaded.get("model.path"), loaded.get("model.candidate")
    if served is not None and candidate is not None:
        try:
            check_candidate_shape(paths["model.candidate"], candidate, paths["model.path"], served.window,
                                  served.features)
        except UserError as exc:
            problems.append(str(exc))
    return problems


def run(args: argparse.Namespace) -> int:
    if args.example:
        print(example_yaml(), end="")
        return 0
    raw = read_yaml(args.file)
    invalid = validate(raw)
    problems = invalid + bundle_problems(raw)
    if not invalid:  # the host checks need a config that builds
        problems.extend(start_problems(build(raw), exclusive=not args.running))
    for problem in problems:
        print(f"{args.file}: {problem}", file=sys.stderr)
    if problems:
        return 2
    print(f"{args.file}: ok")
    return 0
