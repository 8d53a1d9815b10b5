#!/usr/bin/env python3
"""The shard of a device id, for whatever publishes readings (device firmware, a gateway, or a
small router that republishes sensors/<device>/data) when anomalyd runs as several instances.

    shard = crc32(utf-8 bytes of the device id) mod N      (CRC-32/IEEE, as zlib computes it)
    topic = sensors/shard<shard>/<device>/data             (instance k subscribes sensors/shard<k>/+/data)

CRC-32 is the same in every language (zlib, Go hash/crc32, Java CRC32, Node zlib.crc32), so a
C gateway and this script agree. Never use Python's hash(): it is salted per process. Changing N
moves most devices to another shard (each moved device restarts its window and alert state):
pick N with room to grow.

    python3 shard.py --shards 2 pump-001 pump-002      # prints: device shard topic
"""

from __future__ import annotations

import argparse
import zlib

TOPIC = "sensors/shard{shard}/{device}/data"


def shard_of(device: str, shards: int) -> int:
    if shards < 1:
        raise ValueError(f"shards must be >= 1, got {shards}")
    return zlib.crc32(device.encode("utf-8")) % shards


def topic_of(device: str, shards: int) -> str:
    return TOPIC.format(shard=shard_of(device, shards), device=device)


def main() -> None:
    parser = argparse.ArgumentParser(description="Print the shard and topic of each device id.")
    parser.add_argument("--shards", type=int, required=True, help="number of anomalyd instances")
    parser.add_argument("devices", nargs="+", metavar="DEVICE")
    args = parser.parse_args()
    for device in args.devices:
        print(device, shard_of(device, args.shards), topic_of(device, args.shards))


if __name__ == "__main__":
    main()
