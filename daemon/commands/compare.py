"""`anomalyd compare`: the served model against its shadow candidate (`model.candidate`), from
the points both wrote, so a candidate is promoted on what it would have raised on live data.

An episode is a run of windows in alert (a 0 -> 1 step of the `alert` field starts one).
Agreement is the share of windows scored by both whose alert states are equal. With labels, an
episode that overlaps no labelled interval of its device is a false alarm.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field
from pathlib import Path

from daemon.commands.common import formatter
from daemon.core.errors import UserError
from daemon.live.sinks.file import read_points
from daemon.live.sinks.line_protocol import SCHEMA
from daemon.offline.incidents import read_incidents

SERVED, CANDIDATE = "served", "candidate"


def add_parser(sub: argparse._SubParsersAction, summary: str) -> None:
    p = sub.add_parser("compare", help=summary, formatter_class=formatter,
                       description="Compare the served model's alerts with its shadow candidate's "
                                   "(points tagged shadow=1), per device and in total.",
                       epilog="examples:\n  anomalyd compare --points demo-out/scores.lp --labels incidents.csv\n"
                              "  anomalyd compare --from-influx http://127.0.0.1:8086 --database anomalyd --since 7d\n"
                              "  anomalyd compare --points scores.lp --labels incidents.csv --check   # promotion gate\n")
    add_points_source(p)
    p.add_argument("--labels", type=Path, metavar="CSV",
                   help="known incidents: columns device,start,end (epoch seconds); alert episodes "
                        "overlapping none of their device's are counted as false alarms")
    p.add_argument("--check", action="store_true",
                   help="the promotion gate: exit 1 when the candidate alarms more than the served model "
                        "(more false alarms with --labels, else more alert episodes), 0 otherwise")
    p.set_defaults(run=run)


def add_points_source(p: argparse.ArgumentParser) -> None:
    """Where anomalyd's points are read from: the file sink's file or the store (shared with
    `anomalyd alerts`)."""
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--points", type=Path, metavar="FILE",
                        help="line-protocol file written by the file sink (local_store.path)")
    source.add_argument("--from-influx", metavar="URL",
                        help="read the points from this InfluxQL server (/query), e.g. http://127.0.0.1:8086")
    group = p.add_argument_group("reading from InfluxDB (with --from-influx)")
    group.add_argument("--database", metavar="DB", help="database the service writes to")
    group.add_argument("--since", default="7d", metavar="TIME",
                       help="from: a duration before now (7d, 12h), epoch seconds or RFC 3339 (default: %(default)s)")
    group.add_argument("--influx-token-file", metavar="FILE", help="file holding the token (or set "
                       "$ANOMALYD_INFLUXDB_TOKEN)")
    group.add_argument("--influx-user", metavar="USER", help="user for basic auth (1.x); the password comes from "
                       "$ANOMALYD_INFLUXDB_PASSWORD or --influx-password-file")
    group.add_argument("--influx-password-file", metavar="FILE", help="file holding --influx-user's password")
    group.add_argument("--influx-timeout", type=float, default=30.0, metavar="S",
                       help="seconds to wait for the server (default: %(default)s)")


def read_alert_points(args: argparse.Namespace) -> tuple[list[dict[str, object]], str]:
    """The points that `add_points_source`'s options name, and a name for where they came from."""
    if args.from_influx:
        return read_influx_points(args), f"{args.from_influx} database {args.database}"
    try:
        return read_points(args.points), str(args.points)
    except OSError as exc:
        raise UserError(f"cannot read points {args.points}: {exc.strerror}") from None
    except ValueError as exc:
        raise UserError(str(exc)) from None


@dataclass
class Episode:
    start: float
    end: float  # data time of its last window in alert


@dataclass
class DeviceComparison:
    """One device's alert states by window time, for the served model and the candidate."""

    alerts: dict[str, dict[float, bool]] = field(default_factory=lambda: {SERVED: {}, CANDIDATE: {}})
    models: dict[str, set[str]] = field(default_factory=lambda: {SERVED: set(), CANDIDATE: set()})

    def episodes(self, role: str) -> list[Episode]:
        found: list[Episode] = []
        previous = False
        for ts, alert in sorted(self.alerts[role].items()):
            if alert and not previous:
                found.append(Episode(ts, ts))
            elif alert:
                found[-1].end = ts
            previous = alert
        return found

    def shared_windows(self) -> tuple[int, int]:
        """(windows scored by both, of which both alert states agree)."""
        served, candidate = self.alerts[SERVED], self.alerts[CANDIDATE]
        both = served.keys() & candidate.keys()
        return len(both), sum(served[ts] == candidate[ts] for ts in both)


def comparisons(points: list[dict[str, object]]) -> dict[str, DeviceComparison]:
    """Per device, the alert states of anomalyd's points, by role."""
    devices: dict[str, DeviceComparison] = {}
    for point in points:
        if point.get("measurement") != SCHEMA.measurement or "alert" not in point:
            continue
        role = CANDIDATE if point.get(SCHEMA.shadow_tag) == "1" else SERVED
        device = devices.setdefault(str(point["device"]), DeviceComparison())
        device.alerts[role][float(point["ts"])] = bool(point["alert"])
        device.models[role].add(str(point["model"]))
    return devices


def read_influx_points(args: argparse.Namespace) -> list[dict[str, object]]:
    """The `alert` field of anomalyd's points in the store from `--since` on, shaped like the
    dicts `read_points` returns (daemon.offline.influx_source does the HTTP and the auth)."""
    from daemon.offline.influx_source import Credentials, InfluxQL, parse_time, quote_identifier, time_literal

    if not args.database:
        raise UserError("--from-influx needs --database DB")
    credentials = Credentials.resolve(args.influx_token_file, args.influx_user, args.influx_password_file)
    client = InfluxQL(args.from_influx, args.database, credentials, args.influx_timeout)
    start = parse_time(args.since, "--since", time.time())
    tags = ",".join(quote_identifier(tag) for tag in (*SCHEMA.tag_keys, SCHEMA.shadow_tag))
    statement = (f"SELECT {quote_identifier('alert')} FROM {quote_identifier(SCHEMA.measurement)} "
                 f"WHERE time >= {time_literal(start)} GROUP BY {tags}")
    return [{"measurement": SCHEMA.measurement, "ts": ms / 1000.0, "alert": alert,
             **{key: value for key, value in series.tags.items() if value}}
            for series in client.query(statement) for ms, alert in series.values if alert is not None]


def false_alarms(episodes: list[Episode], labelled: list[tuple[float, float]]) -> int:
    return sum(not any(e.start <= end and start <= e.end for start, end in labelled) for e in episodes)


def report(devices: dict[str, DeviceComparison], labels: dict[str, list[tuple[float, float]]] | None) -> list[str]:
    """The comparison table: one row per device and a total row."""
    header = f"{'device':<24} {'served':>7} {'cand.':>7} {'agree':>7} {'windows':>8}"
    if labels is not None:
        header += f" {'FA served':>10} {'FA cand.':>9}"
    lines = [header]
    totals = [0, 0, 0, 0, 0, 0]
    for name, device in sorted(devices.items()):
        served, candidate = device.episodes(SERVED), device.episodes(CANDIDATE)
        both, agree = device.shared_windows()
        row = [len(served), len(candidate), agree, both]
        if labels is not None:
            row += [false_alarms(served, labels.get(name, [])), false_alarms(candidate, labels.get(name, []))]
        totals = [t + r for t, r in zip(totals, row + [0] * (6 - len(row)))]
        lines.append(_row(name, row))
    lines.append(_row("total", totals[:6 if labels is not None else 4]))
    return lines


def _row(name: str, values: list[int]) -> str:
    served, candidate, agree, both = values[:4]
    share = f"{agree / both:.1%}" if both else "-"
    text = f"{name:<24} {served:>7} {candidate:>7} {share:>7} {both:>8}"
    if len(values) > 4:
        text += f" {values[4]:>10} {values[5]:>9}"
    return text


def run(args: argparse.Namespace) -> int:
    points, source = read_alert_points(args)
    devices = comparisons(points)
    if not any(d.alerts[CANDIDATE] for d in devices.values()):
        raise UserError(f"{source}: no candidate points (tagged {SCHEMA.shadow_tag}=1): "
                        "set model.candidate to score one in shadow")
    models = {role: sorted(set().union(*(d.models[role] for d in devices.values()))) for role in (SERVED, CANDIDATE)}
    print(f"served model {', '.join(models[SERVED]) or '-'}; candidate {', '.join(models[CANDIDATE])}")
    print("alert episodes per model; agree = share of windows scored by both whose alert states are equal")
    labels = read_incidents(args.labels) if args.labels else None
    for line in report(devices, labels):
        print(line)
    if args.check:
        served, candidate = alarm_totals(devices, labels)
        what = "false alarms" if labels is not None else "alert episodes"
        if candidate > served:
            print(f"check: the candidate raises more {what} than the served model ({candidate} > {served}): "
                  "do not promote it")
            return 1
        print(f"check: the candidate raises no more {what} than the served model ({candidate} <= {served})")
    return 0


def alarm_totals(devices: dict[str, DeviceComparison],
                 labels: dict[str, list[tuple[float, float]]] | None) -> tuple[int, int]:
    """(served, candidate) totals the promotion gate compares: false alarms against the labels
    when there are labels (a candidate that catches more incidents is not penalised for it),
    else every alert episode."""
    totals = [0, 0]
    for name, device in devices.items():
        for i, role in enumerate((SERVED, CANDIDATE)):
            episodes = device.episodes(role)
            totals[i] += len(episodes) if labels is None else false_alarms(episodes, labels.get(name, []))
    return totals[0], totals[1]
