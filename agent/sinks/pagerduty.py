"""The ``pagerduty`` sink: the on-call rota, through PagerDuty's Events API v2.

Each event is one ``POST`` of a JSON body (:func:`pagerduty_events`, pure): ``raised`` and ``updated``
trigger (or update) the alert's incident, ``cleared`` resolves it and ``acknowledged`` acknowledges
it, all with the ``dedup_key`` ``<gateway_id>/<alert>``. ``andon.test`` (``send-test``) triggers an
``info`` incident with the key ``<gateway_id>/_gateway/test`` and resolves it at once: proof that
the routing key reaches the service, closed before anyone has to act on it.

Answers (:func:`judge`): 2xx (PagerDuty answers 202) accepts. 400 refuses that one event (set aside)
- except a 400 about the ``routing_key``, which is the configuration's fault; so does 413 (an event
too large on its own). 429, 408, 5xx and
connection errors: the same event again later, with backoff. Every other 4xx is the endpoint's
fault (a wrong ``url``): the events wait. The routing key is never logged, never shown.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, field_validator, model_validator

from agent.config.base import KeyProblem
from agent.errors import Rejected, RetryLater
from agent.model import StoredEvent
from agent.sinks.base import (
    Origin,
    Secrets,
    Sink,
    SinkConfigBase,
    SinkPlugin,
    check_http_url,
    secret_source,
    sink_secret,
)
from agent.sinks.http import parse_retry_after
from agent.sinks.posting import PER_EVENT_BATCH, error_text, gateway_of, make_client, post_each

if TYPE_CHECKING:
    import httpx

DEFAULT_URL = "https://events.pagerduty.com/v2/enqueue"
MAX_SUMMARY = 1024
MAX_DEDUP_KEY = 255
SEVERITIES = frozenset({"critical", "error", "warning", "info"})

_RAISED, _UPDATED, _CLEARED, _ACK = (f"andon.alert.{t}" for t in ("raised", "updated", "cleared", "acknowledged"))
_TEST = "andon.test"
TEST_ALERT = "_gateway/test"


class PagerDutySinkConfig(SinkConfigBase):
    kind: Literal["pagerduty"]
    url: str = Field(default=DEFAULT_URL, pattern=r"^https?://[^/]")  # the EU service has its own host
    routing_key_env: str | None = None  # the integration's routing key from this environment variable
    routing_key_file: Path | None = None  # ...or from this file (e.g. a systemd credential)
    ca_file: Path | None = None  # trust this CA (PEM) instead of the system store

    @field_validator("url")
    @classmethod
    def _url(cls, url: str) -> str:
        return check_http_url(url, "`routing_key_env` or `routing_key_file`")

    @model_validator(mode="after")
    def _check(self) -> PagerDutySinkConfig:
        if self.routing_key_env and self.routing_key_file:
            raise KeyProblem("routing_key_file", "set at most one of `routing_key_env` and `routing_key_file`")
        if not self.routing_key_env and self.routing_key_file is None:
            raise KeyProblem("routing_key_env", "set `routing_key_env` or `routing_key_file` (the routing key)")
        return self


def dedup_key(gateway: str, alert: str) -> str:
    """``<gateway_id>/<alert>``; a key over PagerDuty's 255 characters keeps its start and gains a hash."""
    key = f"{gateway}/{alert}"
    if len(key) <= MAX_DEDUP_KEY:
        return key
    return key[: MAX_DEDUP_KEY - 17] + "#" + hashlib.sha256(key.encode()).hexdigest()[:16]


def _trigger(
    event: Mapping[str, Any], data: Mapping[str, Any], routing_key: str, key: str, source: str, klass: str
) -> dict[str, Any]:
    severity = str(data.get("severity") or "info")
    summary = str(data.get("message") or f"{data.get('alert') or event.get('subject')} is {severity}")
    payload: dict[str, Any] = {
        "summary": summary[:MAX_SUMMARY],
        "source": source,
        "severity": severity if severity in SEVERITIES else "error",
        "timestamp": event.get("time"),
        "component": data.get("machine"),
        "group": data.get("site"),
        "class": klass,
        "custom_details": dict(data),
    }
    payload = {k: v for k, v in payload.items() if v is not None}  # PagerDuty wants strings or nothing
    return {"routing_key": routing_key, "event_action": "trigger", "dedup_key": key, "payload": payload}


def pagerduty_events(event: Mapping[str, Any], *, routing_key: str) -> list[dict[str, Any]]:
    """The Events API v2 bodies of one event (a CloudEvent as the sink gets it), in order. Pure.

    ``payload.class`` is the rule's kind (``data.kind``; the rule id where an event has none). An
    event type the sink does not map gives no body.
    """
    kind = str(event.get("type", ""))
    raw = event.get("data")
    data: dict[str, Any] = raw if isinstance(raw, dict) else {}
    source = gateway_of(event)
    if kind == _TEST:
        key = dedup_key(source, TEST_ALERT)
        test = {**data, "severity": "info", "message": data.get("message") or f"andon-agent test from {source}"}
        return [
            _trigger(event, test, routing_key, key, source, "test"),
            {"routing_key": routing_key, "event_action": "resolve", "dedup_key": key},
        ]
    key = dedup_key(source, str(event.get("subject") or data.get("alert") or ""))
    if kind in (_RAISED, _UPDATED):
        klass = str(data.get("kind") or data.get("rule") or "alert")
        return [_trigger(event, data, routing_key, key, source, klass)]
    action = {_CLEARED: "resolve", _ACK: "acknowledge"}.get(kind)
    return [{"routing_key": routing_key, "event_action": action, "dedup_key": key}] if action else []


def judge(response: httpx.Response) -> None:
    """Accept (return) or raise for one answer of the Events API; see the module docstring."""
    status = response.status_code
    if 200 <= status < 300:
        return
    text = error_text(response)
    if status == 400 and ("routing_key" in text or "routing key" in text.lower()):
        raise RetryLater(f"{text}: PagerDuty refuses the routing key (check routing_key_env / routing_key_file)")
    if status in (400, 413):  # this event is refused (413: too large, alone)
        raise Rejected(text, status)
    if status in (408, 429) or status >= 500 or status < 400:
        raise RetryLater(text, parse_retry_after(response.headers.get("retry-after"), 0.0))
    raise RetryLater(f"{text}: check the sink's url")


class PagerDutySink:
    """Sends each event to one Events API v2 integration. The client is passed in (and closed by whoever
    made it)."""

    max_batch = PER_EVENT_BATCH

    def __init__(self, cfg: PagerDutySinkConfig, client: httpx.AsyncClient, routing_key: str) -> None:
        self.id = cfg.id
        self.url = cfg.url
        self.timeout = cfg.timeout  # each request, start to end
        self._routing_key = routing_key
        self._client = client
        self._headers = {"Content-Type": "application/json", "User-Agent": "andon-agent"}

    def __repr__(self) -> str:  # never shows the routing key
        return f"PagerDutySink(id={self.id!r}, url={self.url!r})"

    def bodies(self, event: StoredEvent) -> list[dict[str, Any]]:
        return pagerduty_events(json.loads(event.body), routing_key=self._routing_key)

    async def send(self, events: Sequence[StoredEvent]) -> None:
        requests = [self.bodies(e) for e in events]
        await post_each(self._client, self.url, requests, self._headers, self.timeout, judge)


def _secrets(cfg: PagerDutySinkConfig, index: int) -> Secrets:
    key = sink_secret(index, "routing_key", cfg.routing_key_env, cfg.routing_key_file)
    assert key is not None  # the model requires one of the two keys
    return {"routing_key": key}


@asynccontextmanager
async def open_sink(cfg: PagerDutySinkConfig, secrets: Secrets, origin: Origin) -> AsyncIterator[Sink]:
    """The sink with its own HTTP client, closed on leaving."""
    async with make_client(cfg.timeout, cfg.ca_file) as client:
        yield PagerDutySink(cfg, client, secrets["routing_key"])


def describe(cfg: PagerDutySinkConfig) -> str:
    where = secret_source("routing key", cfg.routing_key_env, cfg.routing_key_file)
    return f"pagerduty Events API v2 {cfg.url}{where}"


PLUGIN = SinkPlugin(
    kind="pagerduty", config=PagerDutySinkConfig, secrets=_secrets, open=open_sink, describe=describe, alerts_only=True
)
