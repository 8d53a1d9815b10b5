"""The client's ceiling: a paho-mqtt subscriber, created like the daemon's, whose on_message
only decodes the JSON."""

from __future__ import annotations

import json
import os
import sys
import threading
import time

from ..common import HOST, cpu_seconds, reply, rss_mb


def role_bare(spec: dict) -> None:
    """Subscribe, answer "ready", then answer every command on stdin with the counts so far
    until "stop"."""
    import paho.mqtt.client as mqtt

    state = {"count": 0, "last": 0.0}
    subscribed = threading.Event()

    def on_connect(client, userdata, flags, reason_code, properties):
        client.subscribe(spec["topic"], spec["qos"])

    def on_subscribe(client, userdata, mid, reason_codes, properties):
        subscribed.set()

    def on_message(client, userdata, msg):
        json.loads(msg.payload)
        state["count"] += 1
        state["last"] = time.time()

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-bare-{os.getpid()}",
                         clean_session=True, protocol=mqtt.MQTTv311)
    client.on_connect, client.on_subscribe, client.on_message = on_connect, on_subscribe, on_message
    client.connect_async(HOST, spec["port"], 30)
    client.loop_start()
    if not subscribed.wait(15):
        reply({"error": "bare subscriber: no SUBACK within 15 s"})
        return
    reply({"ready": True, "rss_mb": rss_mb()})
    for line in sys.stdin:
        command = json.loads(line)["cmd"]
        reply({"ok": state["count"], "last_ok": state["last"], "rss_mb": rss_mb(), "cpu_s": cpu_seconds()})
        if command == "stop":
            break
    client.disconnect()
    client.loop_stop()
