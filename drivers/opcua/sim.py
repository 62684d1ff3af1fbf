"""Simulated OPC UA alarms for the tests and benchmarks: real condition nodes on an asyncua server.

asyncua 2.1 has no condition state machine of its own. What it does have, and what this module
builds on:

- the condition *types* (AlarmConditionType, OffNormalAlarmType, ...) in the standard address
  space: :meth:`SimCondition.create` instantiates one as a node under its source object (with its
  ActiveState, AckedState, Severity, Message, Retain ... children, and a HasCondition reference);
- event classes for those types (``asyncua.common.event_objects``) and an ``EventGenerator`` that
  sends them: every change of the condition is one event, with the condition's node id as its
  ConditionId;
- ConditionRefresh: with ``server.iserver.bind_condition_methods = True`` set *before*
  ``server.init()``, the server answers ``ConditionType.ConditionRefresh`` (and ``ConditionRefresh2``)
  by sending a RefreshStartEvent, the last event of every condition it retains (``Retain`` true)
  and a RefreshEndEvent. It sends the two markers only to monitored items on the Server object.

The test (or benchmark) drives the condition: :meth:`~SimCondition.activate`,
:meth:`~SimCondition.change`, :meth:`~SimCondition.clear` (inactive and acknowledged: no longer
retained), or :meth:`~SimCondition.clear` with ``acknowledged=False`` (inactive but retained until
acknowledged, as Part 9 has it).
"""

from __future__ import annotations

from datetime import UTC, datetime

from asyncua import ua
from asyncua.common.node import Node
from asyncua.server.event_generator import EventGenerator
from asyncua.server.server import Server
from asyncua.ua.object_ids import ObjectIds


def enable_condition_refresh(server: Server) -> None:
    """Call before ``server.init()``: the server then answers ConditionRefresh (asyncua's own switch)."""
    server.iserver.bind_condition_methods = True


class SimCondition:
    """One alarm condition of a simulated machine. Make it with :meth:`create`."""

    def __init__(self, node: Node, source: Node, generator: EventGenerator, variables: dict[str, Node]) -> None:
        self.node = node  # the condition instance in the address space
        self.source = source
        self._gen = generator
        self._vars = variables  # browse path -> the condition's variable
        self.active = False

    @classmethod
    async def create(
        cls,
        server: Server,
        source: Node,
        name: str,
        nodeid: ua.NodeId,
        *,
        condition_type: int = ObjectIds.OffNormalAlarmType,
        notifier: ua.NodeId | int = ObjectIds.Server,
    ) -> SimCondition:
        """A condition ``name`` of ``source`` (an object), inactive, whose events ``notifier`` sends."""
        ns = nodeid.NamespaceIndex
        node = await source.add_object(nodeid, ua.QualifiedName(name, ns), objecttype=condition_type)
        await source.add_reference(node.nodeid, ObjectIds.HasCondition)
        gen = EventGenerator(server.iserver.isession)
        await gen.init(condition_type, emitting_node=notifier, add_generates_event=False)
        source_name = (await source.read_browse_name()).Name
        event = gen.event
        event.NodeId = node.nodeid  # the ConditionId
        event.SourceNode = source.nodeid
        event.SourceName = source_name
        event.ConditionName = name
        event.BranchId = ua.NodeId()
        variables = {path: await _child(node, path) for path, _ in _MIRRORED}
        await (await _child(node, "ConditionName")).write_value(ua.DataValue(ua.Variant(name, ua.VariantType.String)))
        cond = cls(node, source, gen, variables)
        cond._set(active=False, retain=False, acked=True, severity=1, message="")
        await cond._mirror()
        return cond

    def _set(self, *, active: bool, retain: bool, acked: bool, severity: int, message: str) -> None:
        event = self._gen.event
        self.active = active
        event.Severity = severity
        event.Message = ua.LocalizedText(message)
        event.Retain = retain
        event.ActiveState = ua.LocalizedText("Active" if active else "Inactive", "en")
        setattr(event, "ActiveState/Id", active)
        event.AckedState = ua.LocalizedText("Acknowledged" if acked else "Unacknowledged", "en")
        setattr(event, "AckedState/Id", acked)
        event.EnabledState = ua.LocalizedText("Enabled", "en")
        setattr(event, "EnabledState/Id", True)

    async def _mirror(self) -> None:
        """Write the condition's state into its node's variables (what a client reading it sees)."""
        event = self._gen.event
        for path, vtype in _MIRRORED:
            await self._vars[path].write_value(ua.DataValue(ua.Variant(getattr(event, path), vtype)))

    async def _send(self) -> None:
        await self._mirror()
        await self._gen.trigger(time_attr=datetime.now(UTC))

    async def activate(self, severity: int, message: str) -> None:
        """The condition becomes active (unacknowledged, retained)."""
        self._set(active=True, retain=True, acked=False, severity=severity, message=message)
        await self._send()

    async def change(self, *, severity: int | None = None, message: str | None = None) -> None:
        """A new severity or message while the condition stays as it is."""
        event = self._gen.event
        self._set(
            active=self.active,
            retain=bool(event.Retain),
            acked=bool(getattr(event, "AckedState/Id")),
            severity=event.Severity if severity is None else severity,
            message=event.Message.Text if message is None else message,
        )
        await self._send()

    async def acknowledge(self) -> None:
        """An operator acknowledged it: an event, but the condition stays active (or ends if inactive)."""
        event = self._gen.event
        self._set(
            active=self.active,
            retain=self.active,
            acked=True,
            severity=event.Severity,
            message=event.Message.Text,
        )
        await self._send()

    async def clear(self, *, message: str | None = None, acknowledged: bool = True) -> None:
        """The condition returns to normal; unacknowledged it stays retained (still of interest)."""
        event = self._gen.event
        self._set(
            active=False,
            retain=not acknowledged,
            acked=acknowledged,
            severity=event.Severity,
            message=event.Message.Text if message is None else message,
        )
        await self._send()


# The condition's variables that follow its state: (browse path, type).
_MIRRORED: tuple[tuple[str, ua.VariantType], ...] = (
    ("Severity", ua.VariantType.UInt16),
    ("Message", ua.VariantType.LocalizedText),
    ("Retain", ua.VariantType.Boolean),
    ("ActiveState", ua.VariantType.LocalizedText),
    ("ActiveState/Id", ua.VariantType.Boolean),
    ("AckedState", ua.VariantType.LocalizedText),
    ("AckedState/Id", ua.VariantType.Boolean),
    ("EnabledState", ua.VariantType.LocalizedText),
    ("EnabledState/Id", ua.VariantType.Boolean),
)


async def _child(node: Node, path: str) -> Node:
    return await node.get_child([ua.QualifiedName(part, 0) for part in path.split("/")])
