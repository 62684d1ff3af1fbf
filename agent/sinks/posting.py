"""One JSON POST per event, for services that take events one at a time (ntfy, PagerDuty).

:func:`post_each` posts the events' requests one after the other, oldest first. The first request
that is not accepted stops the batch and the error says how many events before it were accepted
(``RetryLater.accepted``, ``Rejected.accepted``): delivery settles those and never sends an event
the service already took again (only an event in flight when the gateway dies may arrive twice).

Each request has its own timeout; a sink keeps its batches small (:data:`PER_EVENT_BATCH`) so that a
slow service holds a batch for a bounded time.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.errors import Rejected, RetryLater
from agent.sinks.base import SendTimeout

if TYPE_CHECKING:
    import httpx  # imported when a sink is made: loading a config (``check``) does not need it

PER_EVENT_BATCH = 10  # events per delivery batch for a sink that posts each event on its own


def make_client(timeout: float, ca_file: Path | None) -> httpx.AsyncClient:
    """An HTTP client with TLS verification on (the system store, or ``ca_file`` when given)."""
    import httpx

    verify: ssl.SSLContext | bool = True
    if ca_file is not None:
        verify = ssl.create_default_context(cafile=str(ca_file))
    return httpx.AsyncClient(
        verify=verify,
        timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
        limits=httpx.Limits(max_connections=2, max_keepalive_connections=1),
        follow_redirects=False,
    )


Judge = Callable[["httpx.Response"], None]  # returns for an accepted answer, raises RetryLater or Rejected


async def post_json(
    client: httpx.AsyncClient, url: str, body: Mapping[str, Any], headers: Mapping[str, str], seconds: float
) -> httpx.Response:
    """POST one JSON body; transport failures and timeouts become :class:`RetryLater`."""
    import httpx  # already loaded by make_client: a lookup

    content = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
    try:
        async with asyncio.timeout(seconds):
            return await client.post(url, content=content, headers=dict(headers))
    except httpx.TimeoutException as exc:
        raise SendTimeout(f"timeout ({type(exc).__name__})") from exc
    except TimeoutError as exc:
        raise SendTimeout(f"timeout (no answer within {seconds:g}s)") from exc
    except httpx.HTTPError as exc:  # connection, protocol and decoding errors alike; never the body
        raise RetryLater(f"{type(exc).__name__}: {exc or 'connection failed'}") from exc


async def post_each(
    client: httpx.AsyncClient,
    url: str,
    requests: Sequence[Sequence[Mapping[str, Any]]],
    headers: Mapping[str, str],
    seconds: float,
    judge: Judge,
) -> None:
    """Post each event's bodies (``requests[i]``: one or more, in order), each request within
    ``seconds``; see the module docstring."""
    for index, bodies in enumerate(requests):
        try:
            for body in bodies:
                judge(await post_json(client, url, body, headers, seconds))
        except (RetryLater, Rejected) as exc:
            exc.accepted = index
            raise


def error_text(response: httpx.Response, limit: int = 300) -> str:
    """``HTTP <status>`` and the service's own words, when its answer is JSON with an ``error``/``errors``
    or ``message`` (ntfy: ``{"error": ...}``, PagerDuty: ``{"message": ..., "errors": [...]}``)."""
    text = f"HTTP {response.status_code}"
    try:
        doc = response.json()
    except ValueError:
        return text
    if not isinstance(doc, dict):
        return text
    words = [str(doc[k]) for k in ("error", "message") if isinstance(doc.get(k), str)]
    errors = doc.get("errors")
    if isinstance(errors, list):
        words += [str(e) for e in errors]
    return f"{text}: {'; '.join(words)}"[:limit] if words else text


def gateway_of(event: Mapping[str, Any]) -> str:
    """The gateway an event comes from: ``data.gateway``, else its ``source`` (``/andon/<gateway>``)."""
    data = event.get("data")
    if isinstance(data, dict) and isinstance(data.get("gateway"), str) and data["gateway"]:
        return str(data["gateway"])
    return str(event.get("source") or "").removeprefix("/andon/") or "gateway"
