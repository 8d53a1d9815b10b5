"""Sinks: where score events go. `base` holds the Sink protocol and the buffered writer every
sink that does I/O runs on; `influx` and `file` hold only their own write logic; `factory`
picks one from the config; `spool` and `line_protocol` are what they write."""
