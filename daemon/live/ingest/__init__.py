"""Ingest: message sources, the payload parser, routing and per-device ring buffers."""
