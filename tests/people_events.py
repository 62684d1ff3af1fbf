"""Test helpers: real CloudEvents (as the alert log writes them) for the people sinks' tests."""

from __future__ import annotations

import json
from typing import Any

from agent.model import Severity, StoredEvent, Transition, TransitionKind
from agent.pipeline.alertlog import cloudevent

NOW = 1_700_000_000.0
GATEWAY = "gw-press-line"
ROUTING_KEY = "R0UT1NGKEY0123456789abcdefABCDEF"  # 32 characters, like a real integration key
KINDS = {
    "raised": TransitionKind.RAISED,
    "updated": TransitionKind.UPDATED,
    "cleared": TransitionKind.CLEARED,
}


def alert_doc(
    seq: int,
    kind: str = "raised",
    severity: str = "critical",
    *,
    machine: str = "press-1",
    rule: str = "tool1-wear",
    message: str | None = None,
    site: str | None = "plant-a",
    rule_kind: str | None = None,
    part: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A CloudEvent dict; ``kind`` "acknowledged" builds the board's acknowledgement of the alert.
    ``rule_kind`` (``data.kind``) defaults to what the rule id suggests (offline, alarms, threshold)."""
    extra = {"kind": rule_kind or {"offline": "offline", "alarms": "alarms"}.get(rule, "threshold")} | extra
    t = Transition(
        machine,
        rule,
        "tool1_wear" if rule != "offline" else None,
        KINDS.get(kind, TransitionKind.UPDATED),
        Severity.parse(severity),
        96.5,
        95.0,
        message if message is not None else f"tool 1 wear on {machine} is 96.5 %, at or over the {severity} limit",
        NOW + seq,
        extra=extra,
        part=part,
    )
    doc = cloudevent(t, seq=seq, event_id=f"ev-{seq}", gateway=GATEWAY, site=site)
    if kind not in KINDS:
        doc["type"] = f"andon.alert.{kind}"
    return doc


def send_test_doc(seq: int, **data: Any) -> dict[str, Any]:
    """The ``andon.test`` event ``send-test`` commits."""
    return {
        "specversion": "1.0",
        "id": f"ev-{seq}",
        "source": f"/andon/{GATEWAY}",
        "type": "andon.test",
        "subject": "_gateway/test",
        "time": "2023-11-14T22:13:20.000Z",
        "datacontenttype": "application/json",
        "data": {"message": "andon-agent send-test", "severity": "info", "seq": seq, "gateway": GATEWAY} | data,
    }


def stored(doc: dict[str, Any]) -> StoredEvent:
    data = doc["data"]
    return StoredEvent(
        data["seq"],
        doc["id"],
        Severity.parse(data.get("severity") or "info"),
        json.dumps(doc).encode(),
        doc["type"],
        doc.get("subject"),
        data.get("machine"),
    )
