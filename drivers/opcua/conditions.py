"""Pure: the fields of one OPC UA event (Alarms & Conditions) -> a :class:`~agent.model.ConditionEvent`.

No asyncua import and no I/O: the values are read by duck typing (a NodeId's ``NamespaceIndex``,
``Identifier`` and ``to_string()``, a LocalizedText's ``Text``), so the table tests feed it the
same objects asyncua delivers. :data:`SELECT` names the fields the driver asks the server for, in
the order of its select clauses; :func:`condition_event` reads them back by those names.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from agent.model import ConditionEvent

REFRESH_START_EVENT_TYPE = 2787  # i=2787 RefreshStartEventType
REFRESH_END_EVENT_TYPE = 2788  # i=2788 RefreshEndEventType
CONDITION_ID = "NodeId"  # asyncua's name for the ConditionId operand (the NodeId attribute of the condition)

# (browse path, the type that defines it) for every field the agent selects. Paths are relative to
# the event type; "" selects the condition's NodeId attribute (its ConditionId).
SELECT: tuple[tuple[str, str], ...] = (
    ("EventType", "BaseEventType"),
    ("SourceName", "BaseEventType"),
    ("Message", "BaseEventType"),
    ("Severity", "BaseEventType"),
    ("ConditionName", "ConditionType"),
    ("BranchId", "ConditionType"),
    ("Retain", "ConditionType"),
    ("EnabledState/Id", "ConditionType"),
    ("ActiveState/Id", "AlarmConditionType"),
    ("", "ConditionType"),
)


def node_text(node_id: Any, namespaces: Sequence[str]) -> str | None:
    """A node id as text that survives a renumbering of the server's namespaces: ``nsu=<uri>;s=...``.

    Namespace 0 stays ``i=...``; an index the namespace array does not have stays ``ns=<n>;...``.
    None for a null (or missing) node id.
    """
    if node_id is None or _is_null(node_id):
        return None
    text = str(node_id.to_string())
    ns = int(node_id.NamespaceIndex)
    if ns == 0 or ns >= len(namespaces):
        return text
    _, _, rest = text.partition(";")
    return f"nsu={namespaces[ns]};{rest}"


def _is_null(node_id: Any) -> bool:
    return int(node_id.NamespaceIndex) == 0 and node_id.Identifier in (0, "", None)


def _text(value: Any) -> str:
    if value is None:
        return ""
    text = getattr(value, "Text", value)  # a LocalizedText, or already a string
    return "" if text is None else str(text)


def _event_type(value: Any) -> int | None:
    """The numeric id of a namespace-0 event type (the refresh markers are there), else None."""
    if value is None or int(getattr(value, "NamespaceIndex", -1)) != 0:
        return None
    ident = getattr(value, "Identifier", None)
    return ident if isinstance(ident, int) else None


def condition_event(
    fields: Mapping[str, Any], *, machine: str, notifier: str, now: float, namespaces: Sequence[str] = ()
) -> ConditionEvent | None:
    """The event as the agent sees it, or None when it is none of its business.

    - RefreshStartEvent / RefreshEndEvent -> ``refresh_start`` / ``refresh_end``.
    - An event with a ConditionId and no BranchId -> ``condition``: active while ``ActiveState/Id``
      is true (a condition without an ActiveState: while ``Retain`` is true), never while
      ``EnabledState/Id`` is false (a disabled condition).
    - Anything else (a plain event, a previous state's branch) -> None.
    """
    event_type = _event_type(fields.get("EventType"))
    if event_type == REFRESH_START_EVENT_TYPE:
        return ConditionEvent("refresh_start", machine, notifier, now)
    if event_type == REFRESH_END_EVENT_TYPE:
        return ConditionEvent("refresh_end", machine, notifier, now)
    condition_id = node_text(fields.get(CONDITION_ID), namespaces)
    branch = fields.get("BranchId")
    if condition_id is None or (branch is not None and not _is_null(branch)):
        return None
    retain = fields.get("Retain") is True
    active_state = fields.get("ActiveState/Id")
    active = bool(active_state) if active_state is not None else retain
    if fields.get("EnabledState/Id") is False:
        active = False
    severity = fields.get("Severity")
    return ConditionEvent(
        "condition",
        machine,
        notifier,
        now,
        condition_id=condition_id,
        source=_text(fields.get("SourceName")),
        name=_text(fields.get("ConditionName")),
        active=active,
        severity=int(severity) if isinstance(severity, int) and not isinstance(severity, bool) else 0,
        message=_text(fields.get("Message")),
        retain=retain,
    )
