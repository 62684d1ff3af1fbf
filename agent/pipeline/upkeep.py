"""Keeping the outbox in step with the config: the sinks' cursors, the alerts of removed rules, and
the machines the usage fold watches.

At start and after each reload the outbox must know the configured sinks (a cursor each; a removed
sink's cursor goes, so the events only it still wanted are freed), the usage fold must watch the
configured machines with their tool rules (:meth:`~agent.pipeline.usagelog.UsageLog.configure`; the
history older than ``[usage] keep`` goes, also when the fold is off), and every active alert whose
rule or machine is no longer configured must be cleared upstream. Both are writes, so a full disk
refuses them. :class:`Upkeep` then says so once (and reminds now and then), and tries again with
capped backoff in the background: the agent keeps running and catches up once there is space,
as it does with every other commit (README "Outbox and delivery").
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection, Iterable, Mapping

from agent.errors import OutboxError
from agent.model import Transition, TransitionKind, split_key
from agent.ops.logs import Trouble
from agent.pipeline.alertlog import ActiveAlert, AlertLog
from agent.pipeline.outbox import AsyncOutbox
from agent.pipeline.usagelog import ToolRules, prune

log = logging.getLogger("andon.runtime")

RETRY_FIRST = 0.5  # seconds before the first retry after the outbox refused; doubling ...
RETRY_MAX = 30.0  # ... up to this


def orphans(active: Iterable[ActiveAlert], known: Collection[str]) -> list[ActiveAlert]:
    """The active alerts whose ``<machine>/<rule>`` is not among ``known`` (a condition's alert,
    ``<machine>/<rule>/<condition>``, belongs to its rule)."""
    out = []
    for a in active:
        machine, rule, _ = split_key(a.key)
        if f"{machine}/{rule}" not in known:
            out.append(a)
    return out


def cleared(alert: ActiveAlert, wall: float) -> Transition:
    """The ``cleared`` transition of an alert whose rule or machine was removed from the config."""
    machine, rule, part = split_key(alert.key)
    return Transition(
        machine=machine,
        rule=rule,
        signal=alert.signal,
        kind=TransitionKind.CLEARED,
        severity=alert.severity,
        value=None,
        threshold=alert.threshold,
        message=f"{alert.key} cleared: its rule or machine is no longer in the configuration",
        time=wall,
        part=part,
    )


class Upkeep:
    """Registers the configured sinks and clears orphaned alerts; retried until the outbox takes it.

    Caller guarantees: :meth:`want` and :meth:`apply` are called from the event loop; :meth:`run`
    runs as one task for the agent's life.
    """

    def __init__(
        self,
        outbox: AsyncOutbox,
        alerts: AlertLog,
        *,
        wall: Callable[[], float],
        on_done: Callable[[], None],
        usage_keep: float | None = None,
    ) -> None:
        self._outbox = outbox
        self._alerts = alerts
        self._wall = wall
        self._on_done = on_done
        self._keep = usage_keep  # [usage] keep: the history is pruned to it (None: not touched)
        self._sinks: list[str] = []
        self._known: frozenset[str] = frozenset()
        self._machines: dict[str, ToolRules] = {}
        self._due = asyncio.Event()  # a try failed: the background task tries again
        self._trouble = Trouble(log, "outbox upkeep (sink cursors, alerts of rules no longer in the configuration)")

    @property
    def pending(self) -> bool:
        """True while the last try failed (and another is due)."""
        return self._due.is_set()

    def want(self, sinks: Iterable[str], known: Iterable[str], machines: Mapping[str, ToolRules] | None = None) -> None:
        """What the outbox must match: the configured sink ids, the ``<machine>/<rule>`` keys known,
        and the machines with their tool rules (for the usage fold)."""
        self._sinks = list(sinks)
        self._known = frozenset(known)
        self._machines = dict(machines or {})

    async def apply(self) -> bool:
        """Try now. False (logged, and retried in the background) when the outbox refused."""
        try:
            await self._outbox.call(self._outbox.sync.set_sinks, self._sinks)
            await self._usage()
            gone = orphans(self._alerts.active.values(), self._known)
            if gone:
                await self._alerts.commit([cleared(a, self._wall()) for a in gone])
        except OutboxError as exc:
            self._trouble.fail(exc, "tried again with backoff; the agent goes on")
            self._due.set()
            return False
        self._due.clear()
        self._trouble.ok("done")
        self._on_done()
        return True

    async def _usage(self) -> None:
        """The usage fold watches the configured machines from now (before orphans are cleared, so a
        removed rule's clear is counted); without the fold the old history is still pruned."""
        alerts, now = self._alerts, self._wall()
        if alerts.usage is not None:
            alerts.usage.configure(self._machines)
            await alerts.commit_usage(lambda u: u.seen(now, list(alerts.active), prune=True))
        elif self._keep is not None:
            keep = self._keep
            await self._outbox.call(self._outbox.sync.write, lambda db: prune(db, now - keep))

    async def run(self) -> None:
        """Try again, with capped backoff, whenever a try failed."""
        delay = RETRY_FIRST
        while True:
            await self._due.wait()
            await asyncio.sleep(delay)
            delay = RETRY_FIRST if await self.apply() else min(RETRY_MAX, delay * 2)
