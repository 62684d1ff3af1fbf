"""The ``ntfy`` sink: one push notification per alert on the technicians' phones (ntfy's JSON publishing).

Each event is one ``POST`` of a JSON body to the server's root URL (:func:`ntfy_message`, pure).
Every event of one alert carries the same ``sequence_id``, so the phone replaces the alert's
notification (raised, updated, acknowledged, cleared) instead of stacking them (ntfy 2.16 or newer;
older servers ignore the field and the notifications stack).

Answers (:func:`judge`): 2xx accepts. 429 (ntfy's rate limit; it sends no ``Retry-After``), 408,
5xx and connection errors: the same event again later, with backoff, at least
:data:`RATE_LIMIT_WAIT` after a 429 (ntfy's default refill is one message every 5 s), or the
sink's ``retry_max`` if that is shorter. 400, 413 and
422 refuse that one event (set aside) - except ntfy's answers that say the *topic* is invalid or
not allowed, which are the configuration's fault. Every other 4xx (401, 403: the token or the
topic's access; 404) is the endpoint's or the credentials' fault: the events wait.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import string
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import quote

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

TOPIC = re.compile(r"^[-_A-Za-z0-9]{1,64}$")  # ntfy's own topic rule
PRIORITY = {"critical": 5, "warning": 4, "info": 3}
CLEARED_PRIORITY = 2  # low: shows in the list, no sound
ACKNOWLEDGED_PRIORITY = 2  # someone is on it: the replaced notification no longer rings
TEST_PRIORITY = 3
MAX_MESSAGE_BYTES = 4096  # ntfy's default message size limit (longer ones become attachments)
MAX_TITLE_CHARS = 250
RATE_LIMIT_WAIT = 5.0  # after a 429: ntfy's default refill is one request every 5 s
CLICK_FIELDS = frozenset({"alert", "machine", "rule"})
TOPIC_REFUSED = frozenset({40009, 40010})  # ntfy: "topic invalid", "topic name is not allowed"

_RAISED, _UPDATED, _CLEARED, _ACK = (f"andon.alert.{t}" for t in ("raised", "updated", "cleared", "acknowledged"))
_TEST = "andon.test"
_WORDS = re.compile(r"[-_.\s]+")
_LETTER_DIGIT = re.compile(r"(?<=[A-Za-z])(?=\d)|(?<=\d)(?=[A-Za-z])")


class NtfySinkConfig(SinkConfigBase):
    kind: Literal["ntfy"]
    url: str = Field(pattern=r"^https?://[^/]")  # the server's root URL: JSON publishing goes there
    topic: str = Field(pattern=TOPIC.pattern)  # ntfy's rule: 1-64 of letters, digits, - and _
    token_env: str | None = None  # access token ("tk_...") from this environment variable
    token_file: Path | None = None  # ...or from this file (e.g. a systemd credential)
    click: str | None = None  # opened when the notification is tapped: {alert} {machine} {rule}
    ca_file: Path | None = None  # trust this CA (PEM) instead of the system store

    @field_validator("url")
    @classmethod
    def _url(cls, url: str) -> str:
        return check_http_url(url)

    @field_validator("click")
    @classmethod
    def _check_click(cls, click: str | None) -> str | None:
        return click if click is None else check_click(click)

    @model_validator(mode="after")
    def _check(self) -> NtfySinkConfig:
        if self.token_env and self.token_file:
            raise KeyProblem("token_file", "set at most one of `token_env` and `token_file`")
        return self


def sequence_id(gateway: str, alert: str) -> str:
    """The same for every event of one alert of one gateway, and ntfy-safe (``[-_A-Za-z0-9]{1,64}``):
    alert keys hold ``/`` and ``:``, so it is a hash of ``<gateway>/<alert>``."""
    return "andon-" + hashlib.sha256(f"{gateway}/{alert}".encode()).hexdigest()[:32]


def humanize(rule: str) -> str:
    """A rule id as words for a title: ``tool1-wear`` -> ``tool 1 wear``."""
    return " ".join(_LETTER_DIGIT.sub(" ", _WORDS.sub(" ", rule)).split())


def check_click(template: str) -> str:
    """Validate a ``click`` template at load time (only ``{alert}``, ``{machine}``, ``{rule}``)."""
    if not re.match(r"^https?://", template):
        raise ValueError(f"not an http(s) URL: {template!r}")
    try:
        names = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as exc:
        raise ValueError(f"not a valid template: {exc}") from None
    unknown = names - CLICK_FIELDS
    if unknown:
        raise ValueError(f"unknown field(s) {sorted(unknown)} in {template!r}; use {{alert}}, {{machine}}, {{rule}}")
    return template


def render_click(template: str, alert: str, machine: str, rule: str) -> str:
    """The click URL for one alert; each value is URL-quoted (``/`` and ``:`` kept)."""
    values = {"alert": alert, "machine": machine, "rule": rule}
    return template.format(**{k: quote(v, safe="/:@") for k, v in values.items()})


def _clip_bytes(text: str, limit: int) -> str:
    raw = text.encode()
    if len(raw) <= limit:
        return text
    return raw[: limit - 3].decode(errors="ignore") + "..."


def _title(kind: str, data: Mapping[str, Any], gateway: str, alert: str) -> str:
    if kind == _TEST:
        return f"{gateway}: test notification"
    what = humanize(str(data.get("rule") or "alert"))
    _, _, *part = alert.split("/", 2)
    if part:  # one of a rule's several alerts (an OPC UA condition): the key's third part names it
        what += f" {part[0]}"
    severity = str(data.get("severity") or "")
    state = {_CLEARED: "cleared", _ACK: f"{severity}, acknowledged"}.get(kind, severity)
    return f"{data.get('machine') or gateway}: {what} {state}"[:MAX_TITLE_CHARS]


def _message(kind: str, data: Mapping[str, Any], gateway: str) -> str:
    message = str(data.get("message") or "")
    if kind == _ACK:
        note = f": {data['note']}" if data.get("note") else ""
        return f"Acknowledged by {data.get('by') or 'someone'}{note}\n{message}"
    if kind == _TEST and not message:
        return f"andon-agent on {gateway}: notifications reach this topic"
    return message


def _priority(kind: str, data: Mapping[str, Any]) -> int:
    if kind == _CLEARED:
        return CLEARED_PRIORITY
    if kind == _ACK:
        return ACKNOWLEDGED_PRIORITY
    if kind == _TEST:
        return TEST_PRIORITY
    return PRIORITY.get(str(data.get("severity")), TEST_PRIORITY)


def _tags(kind: str, data: Mapping[str, Any]) -> list[str]:
    if kind == _TEST:
        return ["test_tube"]
    tags = [str(data.get("severity") or "info")]
    if kind == _CLEARED:
        tags.append("white_check_mark")
    elif kind == _ACK:
        tags.append("eyes")
    return tags


def ntfy_message(event: Mapping[str, Any], *, topic: str, click: str | None) -> dict[str, Any]:
    """The JSON publish body of one event (a CloudEvent as the sink gets it). Pure."""
    kind = str(event.get("type", ""))
    data = event.get("data")
    if not isinstance(data, dict):
        data = {}
    gateway = gateway_of(event)
    alert = str(event.get("subject") or data.get("alert") or "_gateway")
    body: dict[str, Any] = {
        "topic": topic,
        "title": _title(kind, data, gateway, alert),
        "message": _clip_bytes(_message(kind, data, gateway), MAX_MESSAGE_BYTES),
        "priority": _priority(kind, data),
        "tags": _tags(kind, data),
        "sequence_id": sequence_id(gateway, alert),
    }
    if click and kind != _TEST:
        body["click"] = render_click(click, alert, str(data.get("machine") or ""), str(data.get("rule") or ""))
    return body


def judge(response: httpx.Response, rate_limit_wait: float = RATE_LIMIT_WAIT) -> None:
    """Accept (return) or raise for one answer of an ntfy server; see the module docstring."""
    status = response.status_code
    if 200 <= status < 300:
        return
    text = error_text(response)
    if status == 429:
        wait = parse_retry_after(response.headers.get("retry-after"), 0.0)
        raise RetryLater(f"{text} (ntfy's rate limit)", max(wait or 0.0, rate_limit_wait))
    if status in (400, 413, 422) and _ntfy_code(response) not in TOPIC_REFUSED:
        raise Rejected(text, status)
    if status in (401, 403):
        raise RetryLater(f"{text}: ntfy refuses the gateway's token or its access to the topic")
    if 400 <= status < 500 and status not in (408,):
        raise RetryLater(f"{text}: check the sink's url and topic")
    raise RetryLater(text, parse_retry_after(response.headers.get("retry-after"), 0.0))


def _ntfy_code(response: httpx.Response) -> int | None:
    try:
        code = response.json().get("code")
    except (ValueError, AttributeError):
        return None
    return code if isinstance(code, int) else None


class NtfySink:
    """Publishes each event to one topic. The client is passed in (and closed by whoever made it)."""

    max_batch = PER_EVENT_BATCH

    def __init__(
        self,
        cfg: NtfySinkConfig,
        client: httpx.AsyncClient,
        token: str | None,
        *,
        rate_limit_wait: float | None = None,
    ) -> None:
        self.id = cfg.id
        self.url = cfg.url.rstrip("/") + "/"  # JSON publishing goes to the server's root URL
        self.topic = cfg.topic
        self.click = cfg.click
        self.timeout = cfg.timeout  # each request, start to end
        if rate_limit_wait is None:  # ntfy's refill, but never above the sink's own cap of the backoff
            rate_limit_wait = min(RATE_LIMIT_WAIT, cfg.retry_max)
        self._judge = functools.partial(judge, rate_limit_wait=rate_limit_wait)
        self._client = client
        self._headers = {"Content-Type": "application/json", "User-Agent": "andon-agent"}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"

    def __repr__(self) -> str:  # never shows the token
        return f"NtfySink(id={self.id!r}, url={self.url!r}, topic={self.topic!r})"

    def message(self, event: StoredEvent) -> dict[str, Any]:
        return ntfy_message(json.loads(event.body), topic=self.topic, click=self.click)

    async def send(self, events: Sequence[StoredEvent]) -> None:
        requests = [[self.message(e)] for e in events]
        await post_each(self._client, self.url, requests, self._headers, self.timeout, self._judge)


def _secrets(cfg: NtfySinkConfig, index: int) -> Secrets:
    token = sink_secret(index, "token", cfg.token_env, cfg.token_file)
    return {"token": token} if token else {}


@asynccontextmanager
async def open_sink(cfg: NtfySinkConfig, secrets: Secrets, origin: Origin) -> AsyncIterator[Sink]:
    """The sink with its own HTTP client, closed on leaving."""
    async with make_client(cfg.timeout, cfg.ca_file) as client:
        yield NtfySink(cfg, client, secrets.get("token"))


def describe(cfg: NtfySinkConfig) -> str:
    click = f", click {cfg.click}" if cfg.click else ""
    return f"ntfy topic {cfg.topic} on {cfg.url}{secret_source('token', cfg.token_env, cfg.token_file)}{click}"


PLUGIN = SinkPlugin(
    kind="ntfy", config=NtfySinkConfig, secrets=_secrets, open=open_sink, describe=describe, alerts_only=True
)
