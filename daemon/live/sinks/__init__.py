"""Sinks: where score events go (InfluxDB, a file), the disk spool and the line protocol."""
