"""Telemetry: Prometheus metrics, the HTTP server, sd_notify, logging and rate-limited logs."""
