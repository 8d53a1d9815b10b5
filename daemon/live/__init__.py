"""The live service: MQTT ingest -> ring buffers -> batching worker -> sinks.

Ingest never sees torch, the worker never sees MQTT, sinks see only `ScoreEvent`s;
`service.py` wires them together.
"""
