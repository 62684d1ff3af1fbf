"""An OPC UA event's fields -> ConditionEvent (pure; table tests with the objects asyncua delivers)."""

from __future__ import annotations

from typing import Any

import pytest
from asyncua import ua

from drivers.opcua.conditions import condition_event, node_text

NAMESPACES = ["http://opcfoundation.org/UA/", "urn:server", "urn:mill"]
COND = ua.NodeId("Spindle.Overheat", 2)  # type: ignore[arg-type]
OFF_NORMAL = ua.NodeId(10637)  # type: ignore[arg-type]


def fields(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "EventType": OFF_NORMAL,
        "SourceName": "Spindle",
        "Message": ua.LocalizedText("Spindle too hot"),
        "Severity": 800,
        "ConditionName": "Overheat",
        "BranchId": ua.NodeId(),
        "Retain": True,
        "EnabledState/Id": True,
        "ActiveState/Id": True,
        "NodeId": COND,
    }
    base.update(changes)
    return base


def event(**changes: Any) -> tuple[Any, ...] | None:
    e = condition_event(fields(**changes), machine="mill", notifier="i=2253", now=5.0, namespaces=NAMESPACES)
    if e is None:
        return None
    return (e.kind, e.condition_id, e.source, e.name, e.active, e.severity, e.message, e.retain)


ID = "nsu=urn:mill;s=Spindle.Overheat"


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        pytest.param({}, ("condition", ID, "Spindle", "Overheat", True, 800, "Spindle too hot", True), id="active"),
        pytest.param(
            {"ActiveState/Id": False, "Retain": False},
            ("condition", ID, "Spindle", "Overheat", False, 800, "Spindle too hot", False),
            id="inactive",
        ),
        pytest.param(
            {"ActiveState/Id": False},
            ("condition", ID, "Spindle", "Overheat", False, 800, "Spindle too hot", True),
            id="inactive, retained (unacknowledged)",
        ),
        pytest.param(
            {"EnabledState/Id": False},
            ("condition", ID, "Spindle", "Overheat", False, 800, "Spindle too hot", True),
            id="disabled: not active",
        ),
        pytest.param(
            {"ActiveState/Id": None, "Retain": True},
            ("condition", ID, "Spindle", "Overheat", True, 800, "Spindle too hot", True),
            id="a condition without ActiveState: active while retained",
        ),
        pytest.param(
            {"ActiveState/Id": None, "Retain": False},
            ("condition", ID, "Spindle", "Overheat", False, 800, "Spindle too hot", False),
            id="a condition without ActiveState, not retained",
        ),
        pytest.param(
            {"Message": None, "SourceName": None, "ConditionName": None, "Severity": None},
            ("condition", ID, "", "", True, 0, "", True),
            id="fields the server left empty",
        ),
        pytest.param(
            {"Message": "plain text"}, ("condition", ID, "Spindle", "Overheat", True, 800, "plain text", True)
        ),
        pytest.param({"NodeId": None}, None, id="no ConditionId: a plain event"),
        pytest.param({"NodeId": ua.NodeId()}, None, id="a null ConditionId"),
        pytest.param({"BranchId": ua.NodeId("b1", 2)}, None, id="a branch (a previous state): not the condition"),  # type: ignore[arg-type]
        pytest.param({"BranchId": None}, ("condition", ID, "Spindle", "Overheat", True, 800, "Spindle too hot", True)),
        pytest.param({"EventType": ua.NodeId(2787)}, ("refresh_start", None, "", "", False, 0, "", False)),  # type: ignore[arg-type]
        pytest.param({"EventType": ua.NodeId(2788)}, ("refresh_end", None, "", "", False, 0, "", False)),  # type: ignore[arg-type]
    ],
)
def test_condition_event(changes: dict[str, Any], expected: tuple[Any, ...] | None) -> None:
    assert event(**changes) == expected


def test_event_carries_machine_notifier_and_arrival() -> None:
    e = condition_event(fields(), machine="mill", notifier="ns=2;s=Area", now=7.5, namespaces=NAMESPACES)
    assert e is not None and (e.machine, e.notifier, e.time) == ("mill", "ns=2;s=Area", 7.5)


@pytest.mark.parametrize(
    ("node", "text"),
    [
        (ua.NodeId("Spindle.Overheat", 2), "nsu=urn:mill;s=Spindle.Overheat"),  # type: ignore[arg-type]
        (ua.NodeId(1001, 1), "nsu=urn:server;i=1001"),  # type: ignore[arg-type]
        (ua.NodeId(2253), "i=2253"),  # type: ignore[arg-type]
        (ua.NodeId("x", 9), "ns=9;s=x"),  # type: ignore[arg-type]
        (ua.NodeId(), None),
        (None, None),
    ],
)
def test_node_text(node: Any, text: str | None) -> None:
    assert node_text(node, NAMESPACES) == text
