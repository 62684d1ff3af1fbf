"""Local stand-ins for the hosted services the people sinks talk to, as real HTTP servers on 127.0.0.1.

They implement each service's documented request format and answer as the service does:

- :class:`FakeNtfy`: ntfy's JSON publishing (``POST /`` with ``topic``, ``title``, ``message``,
  ``priority`` 1-5, ``tags``, ``click``, ``sequence_id``; ntfy >= 2.16). Topic and sequence id must
  match ``[-_A-Za-z0-9]{1,64}``; a bad request is 400 with ntfy's JSON error (``code``, ``http``,
  ``error``, ``link``); a missing token is 403, a wrong one 401. Its per-visitor request limiter is
  a token bucket (``burst``, one more every ``refill`` seconds): when empty it answers 429 with a
  JSON error and no ``Retry-After``, as ntfy does. A published message is answered with 200 and the
  message as JSON. ``notifications`` is what a phone shows: the latest message per ``sequence_id``.
- :class:`FakePagerDuty`: the Events API v2 (``POST /v2/enqueue``): 202 ``{"status": "success",
  "message": "Event processed", "dedup_key": ...}``; 400 ``{"status": "invalid event", "message":
  "Event object is invalid", "errors": [...]}`` for a routing key that is not 32 characters, a bad
  ``event_action``, a trigger without ``payload.summary``/``source``/``severity`` or with a severity
  PagerDuty does not know, a summary over 1024 characters, or an acknowledge/resolve without
  ``dedup_key``; a body that is not JSON is 400 "Unrecognized object". ``incidents`` keeps each
  dedup key's state (triggered, acknowledged, resolved) as PagerDuty would.

``script`` (both) answers a request before the service logic when it returns a status: a test
scripts an outage (503), a slow answer or a rate limit with it. Both are meant to be shared per
test session: :meth:`reset` clears everything a test changed.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from agent.ops.httpserver import HttpServer, Request, Response

NTFY_NAME = re.compile(r"^[-_A-Za-z0-9]{1,64}$")
NTFY_LINK = "https://ntfy.sh/docs/publish/#limitations"
PD_SEVERITIES = ("critical", "warning", "error", "info")


@dataclass
class Scripted:
    """A scripted answer: ``status`` (with a JSON ``body``) after ``delay`` seconds; status 0 only delays."""

    status: int = 0
    body: dict[str, Any] = field(default_factory=dict)
    delay: float = 0.0


Script = Callable[[dict[str, Any] | None], Scripted | Awaitable[Scripted | None] | None]


@dataclass
class Received:
    body: dict[str, Any]
    headers: dict[str, str]
    at: float  # time.monotonic() when accepted


class _Fake:
    """What both fakes share: the server, the script hook, the record and waiting for it."""

    path = "/"

    def __init__(self) -> None:
        self._http = HttpServer(self._handle, "127.0.0.1", 0)
        self.changed = asyncio.Condition()
        self.reset()

    def reset(self) -> None:
        self.script: Script | None = None
        self.accepted: list[Received] = []
        self.answers: list[int] = []  # every request's status, in order

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._http.port}{self.path}"

    async def start(self) -> None:
        await self._http.start()

    async def stop(self) -> None:
        await self._http.stop()

    async def wait_for(self, predicate: Callable[[], bool], within: float = 10.0) -> None:
        async with asyncio.timeout(within), self.changed:
            await self.changed.wait_for(predicate)

    async def _handle(self, request: Request) -> Response:
        try:
            body = json.loads(request.body)
        except ValueError:
            body = None
        scripted = self.script(body if isinstance(body, dict) else None) if self.script else None
        if scripted is not None and not isinstance(scripted, Scripted):
            scripted = await scripted
        if scripted is not None and scripted.delay:
            await asyncio.sleep(scripted.delay)
        if scripted is not None and scripted.status:
            status, answer = scripted.status, scripted.body
        else:
            status, answer = self.answer(request, body)
        async with self.changed:
            self.answers.append(status)
            if 200 <= status < 300:
                assert isinstance(body, dict)
                self.accepted.append(Received(body, request.headers, time.monotonic()))
            self.changed.notify_all()
        return Response(status, json.dumps(answer).encode() + b"\n", "application/json")

    def answer(self, request: Request, body: Any) -> tuple[int, dict[str, Any]]:
        raise NotImplementedError


class FakeNtfy(_Fake):
    """An ntfy server's JSON publishing endpoint; see the module docstring."""

    def __init__(self, *, burst: int = 60, refill: float = 5.0) -> None:
        self._default_limit = (burst, refill)  # ntfy's defaults: a burst of 60, then one every 5 s
        super().__init__()

    def reset(self) -> None:
        super().reset()
        self.token: str | None = None  # when set, publishing needs "Authorization: Bearer <token>"
        self.limit(*self._default_limit)

    def limit(self, burst: int, refill: float) -> None:
        """The request limiter: ``burst`` requests at once, then one every ``refill`` seconds."""
        self.burst, self.refill = burst, refill
        self._tokens, self._last = float(burst), time.monotonic()

    @property
    def messages(self) -> list[dict[str, Any]]:
        return [r.body for r in self.accepted]

    @property
    def notifications(self) -> dict[str, dict[str, Any]]:
        """What a phone shows: per sequence id, the latest message (ntfy replaces it in place)."""
        return {m["sequence_id"]: m for m in self.messages}

    def _error(self, code: int, text: str, link: str = "") -> tuple[int, dict[str, Any]]:
        err: dict[str, Any] = {"code": code, "http": code // 100, "error": text}
        if link:
            err["link"] = link
        return code // 100, err

    def _allow(self) -> bool:
        now = time.monotonic()
        self._tokens = min(float(self.burst), self._tokens + (now - self._last) / self.refill)
        self._last = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True

    def answer(self, request: Request, body: Any) -> tuple[int, dict[str, Any]]:
        if request.method not in ("POST", "PUT") or request.path != "/":
            return self._error(40401, "page not found")
        if not isinstance(body, dict):
            return self._error(40024, "invalid request: request body must be valid JSON")
        if not isinstance(body.get("topic"), str) or not NTFY_NAME.match(body["topic"]):
            return self._error(40009, "invalid request: topic invalid")
        if not self._allow():  # ntfy limits requests before it looks at the token
            return self._error(42901, "limit reached: too many requests", NTFY_LINK)
        if self.token is not None:
            auth = request.headers.get("authorization")
            if auth is None:
                return self._error(40301, "forbidden", "https://ntfy.sh/docs/publish/#authentication")
            if auth != f"Bearer {self.token}":
                return self._error(40101, "unauthorized", "https://ntfy.sh/docs/publish/#authentication")
        problem = self._invalid(body)
        if problem:
            return problem
        message = {k: v for k, v in body.items() if k != "topic"}
        return 200, {
            "id": secrets.token_hex(6),
            "time": int(time.time()),
            "event": "message",
            "topic": body["topic"],
        } | (message)

    def _invalid(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]] | None:
        strings = ("title", "message", "click", "sequence_id")
        if any(k in body and not isinstance(body[k], str) for k in strings):
            return self._error(40024, "invalid request: request body must be valid JSON")
        if "tags" in body and not (isinstance(body["tags"], list) and all(isinstance(t, str) for t in body["tags"])):
            return self._error(40024, "invalid request: request body must be valid JSON")
        priority = body.get("priority", 0)
        if not isinstance(priority, int) or isinstance(priority, bool) or not 0 <= priority <= 5:
            return self._error(40007, "invalid priority parameter", "https://ntfy.sh/docs/publish/#message-priority")
        if "sequence_id" in body and not NTFY_NAME.match(body["sequence_id"]):
            return self._error(40049, "invalid request: sequence ID invalid")
        if "click" in body and not re.match(r"^https?://", body["click"]):
            return self._error(40000, "invalid request")
        if len(body.get("message", "").encode()) > 4096:
            return self._error(41303, "JSON body too large")
        return None


class FakePagerDuty(_Fake):
    """PagerDuty's Events API v2; see the module docstring."""

    path = "/v2/enqueue"

    def reset(self) -> None:
        super().reset()
        self.incidents: dict[str, dict[str, Any]] = {}  # dedup key -> {"status": ..., "payload": ...}

    @property
    def events(self) -> list[dict[str, Any]]:
        return [r.body for r in self.accepted]

    def answer(self, request: Request, body: Any) -> tuple[int, dict[str, Any]]:
        if request.method != "POST" or request.path != self.path:
            return 404, {"status": "not found", "message": "Not found"}
        if not isinstance(body, dict):
            return 400, {
                "status": "Unrecognized object",
                "message": "Event object format is unrecognized",
                "errors": ["JSON parse error"],
            }
        errors = self._errors(body)
        if errors:
            return 400, {"status": "invalid event", "message": "Event object is invalid", "errors": errors}
        key = body.get("dedup_key") or secrets.token_hex(16)
        action = body["event_action"]
        if action == "trigger":
            prior = self.incidents.get(key)
            status = prior["status"] if prior and prior["status"] != "resolved" else "triggered"
            self.incidents[key] = {"status": status, "payload": body["payload"]}
        elif key in self.incidents and self.incidents[key]["status"] != "resolved":
            self.incidents[key]["status"] = "acknowledged" if action == "acknowledge" else "resolved"
        return 202, {"status": "success", "message": "Event processed", "dedup_key": key}

    def _errors(self, body: dict[str, Any]) -> list[str]:
        errors: list[str] = []
        key = body.get("routing_key")
        if not isinstance(key, str) or len(key) != 32:
            errors.append("Length of 'routing_key' is incorrect (should be 32 characters)")
        action = body.get("event_action")
        if action not in ("trigger", "acknowledge", "resolve"):
            errors.append(
                "'event_action' is invalid (must be one of the following: 'trigger', 'acknowledge' or 'resolve')"
            )
        dedup = body.get("dedup_key")
        if dedup is not None and (not isinstance(dedup, str) or len(dedup) > 255):
            errors.append("'dedup_key' is invalid (must be a string of at most 255 characters)")
        if action in ("acknowledge", "resolve") and not dedup:
            errors.append("'dedup_key' is missing or blank")
        if action == "trigger":
            errors += self._payload_errors(body.get("payload"))
        return errors

    @staticmethod
    def _payload_errors(payload: Any) -> list[str]:
        if not isinstance(payload, dict):
            return ["'payload' is missing or invalid"]
        errors = [f"'payload.{k}' is missing or blank" for k in ("summary", "source", "severity") if not payload.get(k)]
        if payload.get("severity") and payload["severity"] not in PD_SEVERITIES:
            errors.append(
                "'payload.severity' is invalid (must be one of the following: 'critical', 'warning', 'error' or 'info')"
            )
        if len(str(payload.get("summary", ""))) > 1024:
            errors.append("'payload.summary' is too long (must be at most 1024 characters)")
        for k in ("source", "component", "group", "class", "timestamp"):
            if k in payload and not isinstance(payload[k], str):
                errors.append(f"'payload.{k}' is invalid (must be a string)")
        if "custom_details" in payload and not isinstance(payload["custom_details"], dict | str):
            errors.append("'payload.custom_details' is invalid")
        return errors
