"""The throughput bench of the live daemon (run it with bench/throughput.py).

    common.py        the workload's shape (window, features, batch) and /proc helpers
    daemon_api.py    everything taken from the daemon package: adapt here when it moves
    processes.py     children spoken to with JSON lines, the private mosquitto
    harness.py       the parent's plumbing shared by every phase
    phases/          what the parent measures: model (train, scoring, shapes), ingest,
                     sustained (highest sustained rate, latency), memory (RSS, growth),
                     threads (torch_threads 1 against 2, end to end; only when named)
    roles/           the child processes: publisher, bare subscriber, daemon, scoring
                     (model alone + worker runs), shapes, training
    report.py        the flat figures and the printed table
    record_path.py   a script of its own: instructions per record of the ingest record path
                     (callgrind, no broker)
"""
