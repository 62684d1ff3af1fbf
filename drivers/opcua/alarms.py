"""OPC UA Alarms & Conditions on an open session: an event subscription, ConditionRefresh, condition events out.

:func:`condition_events` subscribes to the events of each notifier (a rule's ``source``, by
default the Server object) with one event filter that selects exactly the fields the agent uses
(:data:`drivers.opcua.conditions.SELECT`) and lets through the condition types and the refresh
markers only, then calls ``ConditionType.ConditionRefresh`` so that the server sends every
condition it retains between a RefreshStartEvent and a RefreshEndEvent. It then yields the events
as :class:`~agent.model.ConditionEvent` lists as they arrive, and ends with
:class:`~agent.errors.ConnectionLost` when the session or the subscription dies (the caller opens a
new session, which subscribes and refreshes again).

The where clause lists ConditionType and every subtype the server has (asyncua's own
``where_clause_from_evtype``, as ``Subscription.subscribe_alarms_and_conditions`` does) rather
than ``OfType``: asyncua's server compares ``OfType`` with the exact event type only.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from asyncua import ua
from asyncua.client.client import Client
from asyncua.common.events import where_clause_from_evtype
from asyncua.common.subscription import Subscription
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.object_ids import ObjectIds
from asyncua.ua.uaerrors import UaStatusCodeError

from agent.errors import ConnectionLost, DriverError
from agent.model import ConditionEvent
from drivers.opcua.conditions import SELECT, condition_event
from drivers.opcua.config import OpcuaMachine
from drivers.opcua.driver import NETWORK_ERRORS, connect_budget, local_node_id, stale_limit, subscription_parameters

log = logging.getLogger("andon.opcua")

EVENT_QUEUE = 1000  # events the server keeps per notifier between two publish responses
INBOX_LIMIT = 10_000  # events waiting for the agent; beyond this the session is dropped and refreshed


def event_filter(where: ua.ContentFilter) -> ua.EventFilter:
    """The select clauses of :data:`~drivers.opcua.conditions.SELECT` with ``where``."""
    evfilter = ua.EventFilter()
    for path, type_name in SELECT:
        op = ua.SimpleAttributeOperand()
        op.TypeDefinitionId = ua.NodeId(ua.Int32(getattr(ObjectIds, type_name)))
        if path:
            op.BrowsePath = [ua.QualifiedName(part, 0) for part in path.split("/")]
            op.AttributeId = AttributeIds.Value
        else:
            op.AttributeId = AttributeIds.NodeId  # the ConditionId
        evfilter.SelectClauses.append(op)
    evfilter.WhereClause = where
    return evfilter


async def where_clause(client: Client) -> ua.ContentFilter:
    """EventType in (ConditionType and its subtypes, RefreshStartEventType, RefreshEndEventType)."""
    types = (ObjectIds.ConditionType, ObjectIds.RefreshStartEventType, ObjectIds.RefreshEndEventType)
    return await where_clause_from_evtype([client.get_node(ua.NodeId(ua.Int32(t))) for t in types])


async def condition_refresh(client: Client, subscription_id: int) -> str | None:
    """Ask the server for every condition it retains; None if it agreed, else why not (a status name)."""
    node = client.get_node(ua.NodeId(ua.Int32(ObjectIds.ConditionType)))
    method = ua.NodeId(ua.Int32(ObjectIds.ConditionType_ConditionRefresh))
    try:
        await node.call_method(method, ua.Variant(subscription_id, ua.VariantType.UInt32))
    except UaStatusCodeError as exc:
        return ua.StatusCode(exc.code).name
    return None


class _EventInbox:
    """asyncua subscription handler: (notifier, fields) into one queue, in the order they came."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self.notifiers: dict[int, str] = {}  # server handle of the monitored item -> its notifier
        self.overflow = False

    def event_notification(self, event: Any) -> None:
        if self.overflow:
            return
        if self.queue.qsize() >= INBOX_LIMIT:
            self.overflow = True
            self.lost(f"more than {INBOX_LIMIT} alarm events waiting")
            return
        notifier = self.notifiers.get(event.server_handle)
        if notifier is not None:
            fields = {k: v for k, v in vars(event).items() if k not in event.internal_properties}
            self.queue.put_nowait(("event", (notifier, fields)))

    def status_change_notification(self, status: ua.StatusChangeNotification) -> None:
        name = status.Status.name if isinstance(status.Status, ua.StatusCode) else str(status.Status)
        self.lost(f"alarm subscription status {name}")

    def lost(self, why: str) -> None:
        self.queue.put_nowait(("lost", why))


async def _subscribe(
    client: Client, m: OpcuaMachine, notifiers: Sequence[str], inbox: _EventInbox
) -> tuple[Subscription, float, list[str]]:
    """The subscription, its stale limit and the server's namespace array."""
    sub = Subscription(client.uaclient.session, subscription_parameters(m), inbox)
    revised = await sub.init()
    namespaces = list(await client.get_namespace_array())
    evfilter = event_filter(await where_clause(client))
    for notifier in dict.fromkeys(notifiers):
        text = local_node_id(notifier, namespaces)
        if text is None:
            raise DriverError(m.id, f"alarms: source {notifier}: the server has no such namespace")
        try:
            handle = await sub.subscribe_events(client.get_node(text), evfilter=evfilter, queuesize=EVENT_QUEUE)
        except UaStatusCodeError as exc:
            why = ua.StatusCode(exc.code).name
            raise DriverError(m.id, f"alarms: source {notifier}: the server refuses its events ({why})") from None
        inbox.notifiers[handle] = notifier
    return sub, stale_limit(m, revised), namespaces


async def condition_events(
    client: Client, m: OpcuaMachine, notifiers: Sequence[str], alive: Callable[[], object]
) -> AsyncIterator[list[ConditionEvent]]:
    """Subscribe to the notifiers' alarm events, refresh, and yield the events as they come.

    ``alive()`` raises :class:`~agent.errors.ConnectionLost` once the session is known to be gone;
    it is called before every wait. Caller guarantees: one iteration at a time per session.
    """
    inbox = _EventInbox()
    try:
        async with asyncio.timeout(connect_budget(m)):
            sub, stale_after, namespaces = await _subscribe(client, m, notifiers, inbox)
            assert sub.subscription_id is not None  # init() set it
            refused = await condition_refresh(client, sub.subscription_id)
    except NETWORK_ERRORS as exc:
        raise ConnectionLost(m.id, f"cannot subscribe to alarms: {str(exc) or type(exc).__name__}") from exc
    if refused is not None:
        log.warning(
            "machine %s: the server refuses ConditionRefresh (%s): alarms that were active before this "
            "connection are seen only when they change",
            m.id,
            refused,
        )
    subscribed = time.monotonic()
    while True:
        heard = sub.last_publish_at or subscribed
        if time.monotonic() - heard > stale_after:
            raise ConnectionLost(m.id, f"alarms: no publish response (events or keep-alive) for {stale_after:g}s")
        alive()
        try:
            async with asyncio.timeout(m.poll_interval):
                item = await inbox.queue.get()
        except TimeoutError:
            continue
        batch: list[ConditionEvent] = []
        while True:
            kind, what = item
            if kind == "lost":
                raise ConnectionLost(m.id, str(what))
            notifier, fields = what
            event = condition_event(fields, machine=m.id, notifier=notifier, now=time.time(), namespaces=namespaces)
            if event is not None:
                batch.append(event)
            try:
                item = inbox.queue.get_nowait()
            except asyncio.QueueEmpty:
                break
        if batch:
            yield batch
