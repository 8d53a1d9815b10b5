"""MQTT source: the paho client's lifecycle, feeding each message to a `MessageHandler`.

Everything here runs on paho's network thread, which also answers keepalives: a callback that
blocks gets the connection dropped by the broker, and an exception that escapes a callback
ends the thread silently. So the message path never blocks (the queue drops oldest instead),
and every callback is wrapped: unexpected exceptions are counted as
messages_total{result="internal_error"} and logged, rate-limited.

Subscriptions are made in on_connect, so they are restored after every reconnect, including
to a broker that restarted without persistence. MQTT 3.1.1 is used so that
`persistent_session` maps onto clean_session=False with a fixed client id: QoS>=1 messages
published while the daemon is away are then queued by the broker (mosquitto keeps at most
`max_queued_messages` per client, default 1000; raise it on the broker).

A broker that answers a reconnect with "session present: False" although a persistent session
was asked for has lost it (restarted without persistence, or expired it): what devices
published in between is gone for good. That is a WARNING naming the gap's length (since the
last message received) and counts in `anomalyd_mqtt_sessions_lost_total`, so the hole in the
data is visible where operators look, not only in an INFO line.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

import paho.mqtt.client as mqtt

from daemon.live.config import MqttConfig
from daemon.live.ingest.pipeline import MessageHandler
from daemon.live.telemetry.metrics import Metrics
from daemon.live.telemetry.ratelimit import RateLimitedLog

log = logging.getLogger(__name__)


class MqttIngest:
    """One paho client subscribed to `settings.topic`, feeding `handler` from its network thread."""

    def __init__(self, settings: MqttConfig, handler: MessageHandler, metrics: Metrics) -> None:
        self.settings = settings
        self._handler = handler
        self._metrics = metrics
        self._counts = metrics.messages.counts
        self._log = RateLimitedLog(log, interval=30.0)
        self._connected = False
        self._subscribed = False
        self._sub_mid: int | None = None
        self._stopping = False
        self._ever_connected = False
        self._last_message: float | None = None  # arrival time of the last message, any result
        self._disconnected_at: float | None = None

        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=settings.client_id,
                             clean_session=not settings.persistent_session, protocol=mqtt.MQTTv311)
        if settings.username is not None:
            client.username_pw_set(settings.username, settings.password)
        tls = settings.tls
        if tls.active:
            client.tls_set(ca_certs=tls.ca_file, certfile=tls.cert_file, keyfile=tls.key_file)
        client.reconnect_delay_set(1, 30)
        client.on_connect = self._guard(self._on_connect)
        client.on_connect_fail = self._guard(self._on_connect_fail)
        client.on_disconnect = self._guard(self._on_disconnect)
        client.on_subscribe = self._guard(self._on_subscribe)
        client.on_message = self._on_message  # guarded inline: it runs for every message
        self._client = client

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def subscribed(self) -> bool:
        """Connected and the broker granted the subscription (what /healthz should check)."""
        return self._connected and self._subscribed

    def swap_handler(self, handler: MessageHandler) -> None:
        """Route messages to `handler` from the next one on (config/model reload)."""
        self._handler = handler

    def start(self) -> None:
        """Connect in the background; paho retries with 1..30 s backoff until stopped."""
        s = self.settings
        log.info("connecting to mqtt://%s:%d as %r (persistent session: %s)", s.host, s.port, s.client_id,
                 s.persistent_session)
        self._client.connect_async(s.host, s.port, s.keepalive)
        self._client.loop_start()

    def stop(self) -> None:
        """Disconnect cleanly and end the network thread."""
        self._stopping = True
        self._client.disconnect()
        self._client.loop_stop()
        self._set_connected(False)

    # ---- paho callbacks (network thread) -------------------------------------------------

    def _guard(self, callback: Callable[..., None]) -> Callable[..., None]:
        def guarded(*args: object) -> None:
            try:
                callback(*args)
            except Exception as exc:  # an escaping exception would end paho's network thread
                self._counts["internal_error"] += 1
                self._log.error("internal:" + callback.__name__, "bug in MQTT callback %s: %r",
                                callback.__name__, exc, exc_info=True)
        return guarded

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        received = self._last_message = time.time()
        try:
            self._handler(msg.topic, msg.payload, received)
        except Exception as exc:  # as in _guard, without a wrapper call per message
            self._counts["internal_error"] += 1
            self._log.error("internal:_on_message", "bug in MQTT callback _on_message: %r", exc, exc_info=True)

    def _on_connect(self, client: mqtt.Client, userdata: object, flags: mqtt.ConnectFlags,
                    reason_code: mqtt.ReasonCode, properties: object) -> None:
        if reason_code.is_failure:
            self._log.warning("connect", "broker %s:%d refused the connection: %s", self.settings.host,
                              self.settings.port, reason_code)
            return
        self._set_connected(True)
        self._metrics.mqtt_reconnects.inc()
        if self.settings.persistent_session and self._ever_connected and not flags.session_present:
            self._session_lost()
        self._ever_connected = True
        log.info("connected to %s:%d (session present: %s); subscribing to %r qos %d", self.settings.host,
                 self.settings.port, flags.session_present, self.settings.topic, self.settings.qos)
        self._subscribed = False
        _, self._sub_mid = client.subscribe(self.settings.topic, self.settings.qos)

    def _session_lost(self) -> None:
        self._metrics.mqtt_sessions_lost.inc()
        since, event = ((self._last_message, "the last message received") if self._last_message is not None
                        else (self._disconnected_at, "the disconnect"))
        gap = time.time() - since if since is not None else float("nan")
        log.warning("broker %s:%d lost the persistent session of client %r (session present: False): messages "
                    "published in the %.1f s since %s are gone", self.settings.host, self.settings.port,
                    self.settings.client_id, gap, event)

    def _on_connect_fail(self, client: mqtt.Client, userdata: object) -> None:
        self._log.warning("connect", "cannot reach MQTT broker %s:%d; retrying", self.settings.host,
                          self.settings.port)

    def _on_subscribe(self, client: mqtt.Client, userdata: object, mid: int,
                      reason_codes: list[mqtt.ReasonCode], properties: object) -> None:
        if mid != self._sub_mid:
            return
        failed = [rc for rc in reason_codes if rc.is_failure]
        self._subscribed = not failed
        if failed:
            log.error("broker refused subscription to %r: %s (check the broker ACL)", self.settings.topic, failed[0])

    def _on_disconnect(self, client: mqtt.Client, userdata: object, flags: mqtt.DisconnectFlags,
                       reason_code: mqtt.ReasonCode, properties: object) -> None:
        self._set_connected(False)
        if not self._stopping:
            self._disconnected_at = time.time()
            self._log.warning("disconnect", "disconnected from MQTT broker %s:%d (%s); reconnecting",
                              self.settings.host, self.settings.port, reason_code)

    def _set_connected(self, connected: bool) -> None:
        self._connected = connected
        if not connected:
            self._subscribed = False
        self._metrics.mqtt_connected.set(1 if connected else 0)
