"""`anomalyd run`: the long-running service."""

from __future__ import annotations

import argparse
import logging

from daemon.commands.common import formatter
from daemon.core.errors import ConfigError
from daemon.live.config import (ENV_INFLUXDB_TOKEN, ENV_KAFKA_PASSWORD, ENV_MQTT_PASSWORD, first_problem,
                                 load_config)
from daemon.live.preflight import start_problems
from daemon.live.telemetry.logsetup import configure_logging
from daemon.live.service import Service

log = logging.getLogger(__name__)

EPILOG = f"""\
Subscribes to MQTT (or consumes Kafka with source: kafka), scores every device's windows with
the model bundle, writes scores to InfluxDB (or a local line-protocol file), serves /metrics
and /healthz. Signals: SIGTERM or SIGINT stop intake, score what is queued, flush the sink and
exit 0; SIGHUP reloads the config's model, stream and alerting sections (a bad new bundle keeps
the old one).

Secrets: {ENV_MQTT_PASSWORD}, {ENV_KAFKA_PASSWORD} and {ENV_INFLUXDB_TOKEN} override the config file.

examples:
  anomalyd check-config config.yaml
  anomalyd run --config config.yaml
  systemctl reload anomalyd        # = kill -HUP, after replacing the bundle
"""


def add_parser(sub: argparse._SubParsersAction, summary: str) -> None:
    p = sub.add_parser("run", help=summary, formatter_class=formatter,
                       description="Run the anomaly detection service.", epilog=EPILOG)
    p.add_argument("--config", default="config.yaml", metavar="YAML", help="config file (default: %(default)s)")
    p.add_argument("--duration", type=float, metavar="SECONDS", help="stop after this long (tests, benchmarks)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    problems = start_problems(config)
    if problems:
        raise ConfigError(f"{args.config}: {first_problem(problems)}")
    configure_logging(config.logging.level, config.logging.format)
    service = Service(config, args.config)
    service.install_signal_handlers()
    service.start()
    try:
        service.serve(args.duration)
    finally:
        service.shutdown()
    return 0
