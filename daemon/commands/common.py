"""Options and helpers shared by the offline commands, so they read data the same way."""

from __future__ import annotations

import argparse

from daemon.offline.frames import DEFAULT_LABEL_COLUMN, NAN_POLICIES, Frame, load_csv

EXAMPLE_HEADER = "example:\n"


def formatter(prog: str) -> argparse.HelpFormatter:
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=32)


def add_data_options(parser: argparse.ArgumentParser, *, labels_default: str | None = DEFAULT_LABEL_COLUMN) -> None:
    group = parser.add_argument_group("reading CSV files")
    group.add_argument("--time-column", metavar="NAME",
                       help="time column (epoch seconds or ISO 8601); default: a column named "
                            "timestamp/time/datetime/ts/date, else the first column")
    group.add_argument("--label-column", metavar="NAME", default=labels_default,
                       help="0/1 anomaly label column, used when present (default: %(default)s)")
    group.add_argument("--nan", choices=NAN_POLICIES, default="fail", dest="nan_policy",
                       help="rows with NaN/inf/empty feature values: 'fail' names the first bad cell, "
                            "'drop' removes those rows (default: %(default)s)")


def read_frames(paths: list[str], args: argparse.Namespace, features: list[str] | None = None,
                ignore: tuple[str, ...] = ()) -> list[Frame]:
    return [load_csv(p, features=features, time_column=args.time_column, label_column=args.label_column,
                     ignore_columns=ignore, nan_policy=args.nan_policy) for p in paths]


def split_list(text: str | None) -> list[str] | None:
    return [part.strip() for part in text.split(",") if part.strip()] if text else None
