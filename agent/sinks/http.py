"""The ``http`` sink: CloudEvents batches (``application/cloudevents-batch+json``) over HTTP(S)."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, field_validator, model_validator

from agent.config.base import KeyProblem
from agent.errors import EndpointRefused, Rejected, RetryLater
from agent.model import StoredEvent
from agent.sinks.base import (
    Origin,
    Secrets,
    SendTimeout,
    Sink,
    SinkConfigBase,
    SinkPlugin,
    check_http_url,
    secret_source,
    sink_secret,
)

if TYPE_CHECKING:
    import httpx  # imported when a sink is made: loading a config (``check``) does not need it

CONTENT_TYPE = "application/cloudevents-batch+json"
MAX_RETRY_AFTER = 3600.0  # a Retry-After beyond an hour is taken as an hour
EVENTS_REFUSED = (400, 422)  # the receiver refuses events: find them and set them aside
PAYLOAD_TOO_LARGE = 413  # smaller batches
ENDPOINT_HINTS = {
    401: "the upstream refuses the gateway's credentials (check the token)",
    403: "the upstream refuses the gateway's credentials (check the token and its rights)",
    404: "no such endpoint (check the sink's url; an ingress route may be missing)",
    405: "the endpoint does not take POST (check the sink's url)",
    410: "the endpoint is gone (check the sink's url)",
    415: "the endpoint does not take CloudEvents batches (check the sink's url)",
}


class HttpSinkConfig(SinkConfigBase):
    kind: Literal["http"]
    url: str = Field(pattern=r"^https?://")
    token_env: str | None = None  # bearer token read from this environment variable
    token_file: Path | None = None  # ...or from this file (e.g. a systemd credential)
    ca_file: Path | None = None  # trust this CA (PEM) instead of the system store

    @field_validator("url")
    @classmethod
    def _url(cls, url: str) -> str:
        return check_http_url(url)

    @model_validator(mode="after")
    def _check(self) -> HttpSinkConfig:
        if self.token_env and self.token_file:
            raise KeyProblem("token_file", "set at most one of `token_env` and `token_file`")
        return self


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP-date), or None."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - now
        except (TypeError, ValueError, IndexError):
            return None
    if seconds != seconds:  # NaN
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def classify(status: int, headers: Mapping[str, str], now: float) -> None:
    """Raise for a status that does not accept the batch; return for any 2xx.

    * 400 and 422 refuse the *events* (:class:`Rejected`: the batch is split to find them); 413
      finds the batch too large (:class:`Rejected`: smaller batches).
    * Every other 4xx (401, 403, 404, 405, 410, 415, ...) says that the endpoint or the
      credentials are wrong, not the events (:class:`EndpointRefused`): nothing is set aside and
      the same events are sent again later. A mistyped path or a route missing during a deploy
      must never turn the backlog into dead letters.
    * 408, 429 and 5xx (and the unexpected 1xx/3xx): the same events again later (:class:`RetryLater`).
    """
    if 200 <= status < 300:
        return
    if status in EVENTS_REFUSED or status == PAYLOAD_TOO_LARGE:
        raise Rejected(f"HTTP {status}", status)
    retry_after = parse_retry_after(headers.get("retry-after"), now)
    if 400 <= status < 500 and status not in (408, 429):
        hint = ENDPOINT_HINTS.get(status, "the endpoint refuses the request (check the sink's url and token)")
        raise EndpointRefused(f"HTTP {status}: {hint}", status, retry_after)
    raise RetryLater(f"HTTP {status}", retry_after)


def read_token(cfg: HttpSinkConfig, index: int) -> str | None:
    """The bearer token from the environment or a file, never from the config itself."""
    return sink_secret(index, "token", cfg.token_env, cfg.token_file)


def make_client(cfg: HttpSinkConfig) -> httpx.AsyncClient:
    """An HTTP client with TLS verification on (the system store, or ``ca_file`` when given)."""
    import httpx

    verify: ssl.SSLContext | bool = True
    if cfg.ca_file is not None:
        verify = ssl.create_default_context(cafile=str(cfg.ca_file))
    return httpx.AsyncClient(
        verify=verify,
        timeout=httpx.Timeout(cfg.timeout, connect=min(cfg.timeout, 5.0)),
        limits=httpx.Limits(max_connections=2, max_keepalive_connections=1),
        follow_redirects=False,
    )


class HttpSink:
    """POSTs batches to one URL. The client is passed in (and closed by whoever made it)."""

    def __init__(self, cfg: HttpSinkConfig, client: httpx.AsyncClient, token: str | None) -> None:
        self.id = cfg.id
        self.url = cfg.url
        self.timeout = cfg.timeout  # the whole request, not just each read: a slow drip cannot hang it
        self._client = client
        self._headers = {"Content-Type": CONTENT_TYPE, "User-Agent": "andon-agent"}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"

    def __repr__(self) -> str:  # never shows the token
        return f"HttpSink(id={self.id!r}, url={self.url!r})"

    async def send(self, events: Sequence[StoredEvent]) -> None:
        """POST the batch. A timeout before the request could be written (connecting, TLS, waiting for
        a pooled connection) is a plain :class:`RetryLater`: an unreachable upstream says nothing
        about the batch. Only a timeout once the request is on its way is a :class:`SendTimeout`
        (maybe too large for a slow link)."""
        import httpx  # already loaded by make_client: a lookup

        body = b"[" + b",".join(e.body for e in events) + b"]"
        sending = False

        async def trace(name: str, info: Mapping[str, Any]) -> None:
            nonlocal sending
            if name.endswith("send_request_headers.started"):  # connected (or a kept-alive connection)
                sending = True

        try:
            async with asyncio.timeout(self.timeout):
                response = await self._client.post(
                    self.url, content=body, headers=self._headers, extensions={"trace": trace}
                )
        except (httpx.TimeoutException, TimeoutError) as exc:
            if not sending or isinstance(exc, httpx.ConnectTimeout | httpx.PoolTimeout):
                raise RetryLater(f"cannot connect within {self.timeout:g}s ({type(exc).__name__})") from exc
            if isinstance(exc, httpx.TimeoutException):
                raise SendTimeout(f"timeout ({type(exc).__name__})") from exc
            raise SendTimeout(f"timeout (no answer within {self.timeout:g}s)") from exc
        except httpx.HTTPError as exc:  # connection, protocol and decoding errors alike
            raise RetryLater(f"{type(exc).__name__}: {exc or 'connection failed'}") from exc
        classify(response.status_code, response.headers, time.time())


def _secrets(cfg: HttpSinkConfig, index: int) -> Secrets:
    token = read_token(cfg, index)
    return {"token": token} if token else {}


@asynccontextmanager
async def open_sink(cfg: HttpSinkConfig, secrets: Secrets, origin: Origin) -> AsyncIterator[Sink]:
    """The sink with its own HTTP client, closed on leaving."""
    async with make_client(cfg) as client:
        yield HttpSink(cfg, client, secrets.get("token"))


def describe(cfg: HttpSinkConfig) -> str:
    return f"http POST {cfg.url}{secret_source('token', cfg.token_env, cfg.token_file)}"


PLUGIN = SinkPlugin(kind="http", config=HttpSinkConfig, secrets=_secrets, open=open_sink, describe=describe)
