"""The board's HTTP surface against a real server on 127.0.0.1: the page and its headers, the JSON,
the event stream, the acknowledgement API's status codes, cross-site refusal and the body bound."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from agent.model import Severity
from agent.ops.board.web import MAX_BODY, BoardServer
from agent.ops.httpserver import Response
from tests.board_helpers import StubSource

TOKEN = "s3cret-token-for-tests"
Make = Callable[..., contextlib.AbstractAsyncContextManager[tuple[BoardServer, StubSource, httpx.AsyncClient]]]


@pytest.fixture
def board() -> Make:
    @contextlib.asynccontextmanager
    async def make(
        token: str | None = TOKEN, **kw: Any
    ) -> AsyncIterator[tuple[BoardServer, StubSource, httpx.AsyncClient]]:
        source = StubSource(["press-1", "press-2"])
        source.ack_enabled = token is not None
        async with (
            BoardServer(source, "127.0.0.1", 0, token=token, **kw) as server,
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}", timeout=5) as client,
        ):
            yield server, source, client

    return make


def ack_headers(token: str | None = TOKEN, **extra: str) -> dict[str, str]:
    headers = {"Content-Type": "application/json", **extra}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return headers


async def test_page_and_its_files_are_served_with_strict_headers(board: Make) -> None:
    async with board() as (_, _, client):
        page = await client.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        csp = page.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
        assert page.headers["x-content-type-options"] == "nosniff"
        assert '<script src="/static/board.js" defer></script>' in page.text
        assert "http://" not in page.text and "https://" not in page.text  # no CDN: the gateway may be offline
        js = await client.get("/static/board.js")
        css = await client.get("/static/board.css")
        assert js.status_code == 200 and "javascript" in js.headers["content-type"]
        assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
        assert "innerHTML" not in js.text and "eval(" not in js.text  # every text goes in as text
        assert (await client.get("/static/")).status_code in (403, 404)  # no directory listing
        assert (await client.get("/static/../web.py")).status_code == 404


async def test_board_json_and_history(board: Make) -> None:
    async with board() as (_, source, client):
        source.raise_("press-2/fault", Severity.CRITICAL, "Spindle fault")
        doc = (await client.get("/api/board")).json()
        assert [(m["id"], m["state"]) for m in doc["machines"]] == [("press-1", "ok"), ("press-2", "critical")]
        assert doc["ack"] is True
        svg = await client.get("/api/machines/press-1/history.svg")
        assert svg.status_code == 200 and svg.headers["content-type"].startswith("image/svg+xml")
        assert svg.text.startswith("<svg")
        assert (await client.get("/api/machines/nope/history.svg")).status_code == 404
        assert (await client.get("/api/charts/tool-life.svg")).status_code == 404  # no usage history yet
        source.charts["tool-life"] = "<svg/>"
        assert (await client.get("/api/charts/tool-life.svg")).text == "<svg/>"


async def read_events(response: httpx.Response) -> AsyncIterator[tuple[str, Any]]:
    event = ""
    async for line in response.aiter_lines():
        if line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: "):
            yield event, json.loads(line[6:])


async def test_event_stream_sends_the_board_then_each_change_once(board: Make) -> None:
    async with board() as (server, source, client), client.stream("GET", "/api/events") as r:
        assert r.headers["content-type"].startswith("text/event-stream") and r.headers["cache-control"] == "no-store"
        events = read_events(r)
        kind, first = await anext(events)
        assert kind == "board" and abs(first["now"] / 1000 - time.time()) < 5  # the gateway's clock
        assert [m["state"] for m in first["board"]["machines"]] == ["ok", "ok"]
        assert server.streams == 1
        source.raise_("press-1/wear", Severity.WARNING, "wear 81 %")
        for _ in range(5):  # five commits in one go: the stream gets one board
            server.changed()
        async with asyncio.timeout(2):
            kind, second = await anext(events)
        assert kind == "board" and second["board"]["machines"][0]["state"] == "warning"
        source.clear("press-1/wear")
        server.changed()
        async with asyncio.timeout(2):
            _, third = await anext(events)
        assert third["board"]["machines"][0]["alerts"] == []
        assert server.version == 2  # nothing was sent twice


async def test_stream_picks_up_changes_that_are_not_commits_and_keeps_alive(board: Make) -> None:
    async with (
        board(check_every=0.05, keepalive=0.1) as (_, source, client),
        client.stream("GET", "/api/events") as r,
    ):
        events = read_events(r)
        await anext(events)
        kind, now = await anext(events)  # nothing changed: the gateway's clock as keepalive
        assert kind == "time" and isinstance(now, int)
        source.machines[0] = source.machines[0].__class__("press-1", "modbus", False, None)  # connection lost
        async with asyncio.timeout(2):
            while (item := await anext(events))[0] != "board":
                pass
        assert item[1]["board"]["machines"][0]["connected"] is False


async def test_stopping_the_server_ends_open_streams(board: Make) -> None:
    async with board() as (server, _, client):
        async with client.stream("GET", "/api/events") as r:
            events = read_events(r)
            await anext(events)
            await server.__aexit__(None, None, None)
            async with asyncio.timeout(3):
                with contextlib.suppress(httpx.RemoteProtocolError, httpx.ReadError):
                    async for _ in events:
                        pass
        assert server.streams == 0


# -- acknowledgement -----------------------------------------------------------------------------


async def test_ack_commits_and_answers_who_and_when(board: Make, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with board() as (_, source, client):
        source.raise_("press-1/fault", Severity.CRITICAL, "Spindle fault")
        r = await client.post(
            "/api/alerts/press-1/fault/ack",
            headers=ack_headers(Origin=str(client.base_url).rstrip("/"), **{"Sec-Fetch-Site": "same-origin"}),
            json={"by": "Ana", "note": "on it"},
        )
        assert r.status_code == 200, r.text
        body = r.json()
        assert (body["alert"], body["by"], body["note"]) == ("press-1/fault", "Ana", "on it")
        assert isinstance(body["at"], int)
        assert source.acks == [("press-1/fault", "Ana", "on it")]
        again = await client.post("/api/alerts/press-1/fault/ack", headers=ack_headers(), json={"by": "Bo"})
        assert again.status_code == 409 and "already acknowledged by Ana" in again.json()["error"]
        assert len(source.acks) == 1
    assert TOKEN not in caplog.text  # the token is never logged


async def test_ack_of_a_three_part_alert(board: Make) -> None:
    async with board() as (_, source, client):
        source.raise_("press-2/alarms/Door.Open", Severity.WARNING, "door open")
        r = await client.post("/api/alerts/press-2/alarms/Door.Open/ack", headers=ack_headers(), json={"by": "Bo"})
        assert r.status_code == 200 and source.acks == [("press-2/alarms/Door.Open", "Bo", None)]


@pytest.mark.parametrize(
    ("headers", "body", "status", "error"),
    [
        (ack_headers(None), {"by": "Ana"}, 401, "wrong or missing token"),
        (ack_headers("wrong"), {"by": "Ana"}, 401, "wrong or missing token"),
        (ack_headers(TOKEN + "x"), {"by": "Ana"}, 401, "wrong or missing token"),
        ({"Authorization": f"Basic {TOKEN}", "Content-Type": "application/json"}, {"by": "Ana"}, 401, "token"),
        (ack_headers(**{"Sec-Fetch-Site": "cross-site"}), {"by": "Ana"}, 403, "cross-site request refused"),
        (ack_headers(Origin="http://evil.example"), {"by": "Ana"}, 403, "cross-site request refused"),
        (ack_headers(**{"Content-Type": "text/plain"}), {"by": "Ana"}, 415, "application/json"),
        (ack_headers(**{"Content-Type": "application/x-www-form-urlencoded"}), {"by": "Ana"}, 415, "json"),
        (ack_headers(), {"who": "Ana"}, 400, "unknown key 'who'"),
        (ack_headers(), {"by": ""}, 400, '"by" must name who'),
        (ack_headers(), "not an object", 400, "must be a JSON object"),
    ],
)
async def test_ack_refusals(board: Make, headers: dict[str, str], body: Any, status: int, error: str) -> None:
    async with board() as (_, source, client):
        source.raise_("press-1/fault", Severity.CRITICAL, "Spindle fault")
        r = await client.post("/api/alerts/press-1/fault/ack", headers=headers, content=json.dumps(body))
        assert r.status_code == status and error in r.json()["error"], r.text
        if status == 401:
            assert r.headers["www-authenticate"].startswith("Bearer")
        assert source.acks == [] and not source.active["press-1/fault"].acknowledged


async def test_ack_of_an_alert_that_is_not_active_is_404(board: Make) -> None:
    async with board() as (_, _, client):
        r = await client.post("/api/alerts/press-1/fault/ack", headers=ack_headers(), json={"by": "Ana"})
        assert r.status_code == 404 and r.json()["error"] == "alert press-1/fault is not active"


async def test_ack_bodies_are_bounded(board: Make) -> None:
    async with board() as (_, source, client):
        source.raise_("press-1/fault", Severity.CRITICAL, "Spindle fault")
        big = json.dumps({"by": "Ana", "note": "x" * MAX_BODY})
        r = await client.post("/api/alerts/press-1/fault/ack", headers=ack_headers(), content=big)
        assert r.status_code == 413

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the read itself is bounded
            for _ in range(8):
                yield b" " * 1024

        r = await client.post("/api/alerts/press-1/fault/ack", headers=ack_headers(), content=chunks())
        assert r.status_code == 413 and source.acks == []


async def test_without_a_token_the_board_is_read_only(board: Make) -> None:
    async with board(token=None) as (_, source, client):
        source.raise_("press-1/fault", Severity.CRITICAL, "Spindle fault")
        assert (await client.get("/api/board")).json()["ack"] is False
        r = await client.post("/api/alerts/press-1/fault/ack", headers=ack_headers("anything"), json={"by": "Ana"})
        assert r.status_code == 403 and "not configured" in r.json()["error"] and source.acks == []


async def test_status_endpoints_share_the_listener(board: Make) -> None:
    asked: list[tuple[str, str]] = []

    async def status(method: str, path: str) -> Response:
        asked.append((method, path))
        return Response(503, b"machine m1: no good read\n", headers={"Retry-After": "5"})

    async with board(status=status) as (_, _, client):
        r = await client.get("/healthz")
        assert (r.status_code, r.text, r.headers["retry-after"]) == (503, "machine m1: no good read\n", "5")
        assert r.headers["content-type"].startswith("text/plain")
        await client.get("/metrics")
        await client.head("/status")
        assert asked == [("GET", "/healthz"), ("GET", "/metrics"), ("HEAD", "/status")]
        assert (await client.post("/status")).status_code == 405
    async with board() as (_, _, client):
        assert (await client.get("/healthz")).status_code == 404  # no status source given
