"""Options and helpers shared by the offline commands, so they read data the same way."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import TYPE_CHECKING

from daemon.core.errors import UserError
from daemon.offline.incidents import Incidents, read_incidents
from daemon.offline.frames import (DEFAULT_DEVICE_COLUMN, DEFAULT_LABEL_COLUMN, LABEL_AUTO, LABEL_COLUMN_NAMES,
                                   NAN_POLICIES, Frame, load_device_runs)

if TYPE_CHECKING:
    from daemon.offline.influx_source import History

EXAMPLE_HEADER = "example:\n"


def formatter(prog: str) -> argparse.HelpFormatter:
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=32)


def add_data_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("reading CSV files")
    group.add_argument("--time-column", metavar="NAME",
                       help="time column (epoch seconds or ISO 8601); default: a column named "
                            "timestamp/time/datetime/ts/date, else the first column")
    group.add_argument("--label-column", metavar="NAME", default=DEFAULT_LABEL_COLUMN,
                       help=f"0/1 anomaly label column, used when present; '{LABEL_AUTO}': the first of "
                            f"{', '.join(LABEL_COLUMN_NAMES)} holding only 0/1 (default: %(default)s). "
                            f"Columns named like labels (changepoint, fault, ...) are never read as sensors "
                            f"unless --features names them")
    group.add_argument("--device-column", metavar="NAME",
                       help=f"column naming each row's device, for a fleet's readings in one file: each "
                            f"device's rows are a run of their own (default: a column named "
                            f"'{DEFAULT_DEVICE_COLUMN}' when there is one, else the file is one device's run)")
    group.add_argument("--nan", choices=NAN_POLICIES, default="fail", dest="nan_policy",
                       help="rows with NaN/inf/empty feature values: 'fail' names the first bad cell, "
                            "'drop' removes those rows (default: %(default)s)")


def read_frames(paths: list[str], args: argparse.Namespace, features: list[str] | None = None,
                ignore: tuple[str, ...] = ()) -> list[Frame]:
    """Every file's runs: one per device named in its device column, or the file as one run."""
    return [run for p in paths
            for run in load_device_runs(p, features=features, time_column=args.time_column,
                                        label_column=args.label_column, ignore_columns=ignore,
                                        nan_policy=args.nan_policy, device_column=args.device_column)]


def split_list(text: str | None) -> list[str] | None:
    return [part.strip() for part in text.split(",") if part.strip()] if text else None


def add_influx_options(parser: argparse.ArgumentParser, *, fields_help: str) -> None:
    """Reading history from a time-series store instead of CSV files (daemon.offline.influx_source)."""
    from daemon.offline.influx_source import DEFAULT_PAGE, ENV_INFLUXDB_PASSWORD, ENV_INFLUXDB_TOKEN, GAP_FACTOR

    group = parser.add_argument_group(
        "reading from InfluxDB (InfluxQL on /query: InfluxDB 1.x, 2.x with a DBRP mapping, 3.x)")
    group.add_argument("--from-influx", metavar="URL", help="read the history from this server, e.g. "
                       "http://127.0.0.1:8086, instead of --data files")
    group.add_argument("--database", metavar="DB", help="database to read (2.x: the bucket's DBRP database)")
    group.add_argument("--measurement", metavar="M", help="measurement holding the readings (e.g. Telegraf's)")
    group.add_argument("--fields", metavar="A,B,C", help=fields_help)
    group.add_argument("--device", action="append", default=[], metavar="D",
                       help="read only this device (repeat for several; default: every device)")
    group.add_argument("--device-tag", default="device", metavar="TAG",
                       help="tag naming the device; each device is read as its own series (default: %(default)s)")
    group.add_argument("--start", metavar="TIME", help="from: RFC 3339, epoch seconds, or a duration before now "
                       "(7d, 12h)")
    group.add_argument("--stop", default="now", metavar="TIME", help="until (exclusive; default: %(default)s)")
    group.add_argument("--query", metavar="INFLUXQL", help="read what this SELECT answers instead of --measurement/"
                       "--start/--stop (GROUP BY the device tag to keep devices apart; read in chunks, not pages)")
    group.add_argument("--page", default=DEFAULT_PAGE, metavar="DURATION",
                       help="time range per request when reading --measurement (default: %(default)s)")
    group.add_argument("--keep-alert-periods", action="store_true",
                       help="also use rows from periods where anomalyd had the device in alert (measurement "
                            "'anomaly', field alert=1, same database); by default they are left out, so a fault "
                            "is never learnt as normal")
    group.add_argument("--gap-factor", type=float, default=GAP_FACTOR, metavar="X",
                       help="a step longer than X x a device's median sample period ends a run (default: %(default)s)")
    group.add_argument("--influx-token-file", metavar="FILE",
                       help=f"file holding an API token (sent as 'Authorization: Token'); or set ${ENV_INFLUXDB_TOKEN}")
    group.add_argument("--influx-user", metavar="USER", help=f"user for basic auth (1.x); the password comes from "
                       f"${ENV_INFLUXDB_PASSWORD} or --influx-password-file")
    group.add_argument("--influx-password-file", metavar="FILE", help="file holding --influx-user's password")
    group.add_argument("--influx-timeout", type=float, default=30.0, metavar="S",
                       help="seconds to wait for each answer (default: %(default)s)")


def add_incidents_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--incidents", type=Path, metavar="CSV",
                        help="confirmed incidents, columns device,start,end (epoch seconds, the file `compare "
                             "--labels` reads): their rows are left out; with --from-influx anomalyd's other "
                             "alert periods are then kept, as the false alarms they were")


def incidents_of(args: argparse.Namespace) -> Incidents | None:
    """The --incidents file, read. Given one, anomalyd's alert periods are read as any rows:
    the incidents say which of them were faults."""
    if not args.incidents:
        return None
    args.keep_alert_periods = True
    return read_incidents(args.incidents)


def left_out(args: argparse.Namespace, frames: list[Frame]) -> str:
    """Which rows of the data `train` or `calibrate` left out, for the bundle's record: an
    operator reading why a threshold moved needs to know whether false alarms were learnt from."""
    if args.incidents:
        what = f"the confirmed incidents in {args.incidents}" + (
            " and labelled rows" if args.data else " (anomalyd's other alert periods kept)")
    elif args.data:
        what = "labelled rows"
    elif args.keep_alert_periods:
        what = "nothing (--keep-alert-periods: anomalyd's alert periods kept)"
    else:
        what = "anomalyd's alert periods"
    rows = sum(int(f.labels.sum()) for f in frames if f.labels is not None)
    return f"{what}: {rows} rows"


def check_one_source(args: argparse.Namespace) -> None:
    """Exactly one of --data and --from-influx."""
    if bool(args.data) == bool(args.from_influx):
        raise UserError("give the history as --data CSV or --from-influx URL (one of the two)")


def read_influx(args: argparse.Namespace, fields: list[str] | None = None) -> History:
    """The history that the --from-influx options name (see `add_influx_options`)."""
    from daemon.offline.influx_source import (Credentials, HistoryQuery, InfluxQL, parse_duration, parse_time,
                                              read_history)

    if not args.database:
        raise UserError("--from-influx needs --database DB")
    if args.gap_factor < 1:
        raise UserError(f"--gap-factor must be >= 1 (got {args.gap_factor})")
    if args.query is not None:
        if args.measurement or args.start:
            raise UserError("--query replaces --measurement, --start and --stop: give one or the other")
        query = HistoryQuery(statement=args.query, fields=fields, devices=tuple(args.device),
                             device_tag=args.device_tag)
    else:
        if not args.measurement:
            raise UserError("--from-influx needs --measurement M (or --query 'SELECT ...')")
        if not args.start:
            raise UserError("--from-influx --measurement needs --start TIME")
        now = time.time()
        query = HistoryQuery(measurement=args.measurement, fields=fields, devices=tuple(args.device),
                             device_tag=args.device_tag, start=parse_time(args.start, "--start", now),
                             stop=parse_time(args.stop, "--stop", now), page_seconds=parse_duration(args.page, "--page"))
    credentials = Credentials.resolve(args.influx_token_file, args.influx_user, args.influx_password_file)
    client = InfluxQL(args.from_influx, args.database, credentials, args.influx_timeout)
    return read_history(client, query, exclude_alert_periods=not args.keep_alert_periods,
                        gap_factor=args.gap_factor, nan_policy=args.nan_policy)


def describe_history(history: History) -> str:
    """One line on what was read, for the commands' log."""
    devices = sorted(history.runs)
    return (f"{history.rows} rows of {len(devices)} device(s) ({', '.join(d or '-' for d in devices)}) in "
            f"{len(history.frames())} run(s), {history.rows_in_alert} of them in alert periods (left out), "
            f"features: {', '.join(history.features)}")
