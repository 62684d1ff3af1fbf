"""The one small interface every protocol driver implements, and what a protocol plugs in.

``agent/`` uses drivers only through :class:`Driver` (and :class:`PushDriver`) and the protocol
list in :mod:`drivers.registry`; it never imports a protocol library. A protocol is one folder,
``drivers/<name>/``, whose ``plugin.py`` holds its :class:`ProtocolPlugin`: its config model, the
factory of its drivers, its lines for ``andon-agent check`` and, optionally, a cross-check of its
machines and a ``check --connect`` probe. The protocol library is imported only when a driver (or
a probe) of that protocol is made.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Generic, Protocol, Self, TypeVar, runtime_checkable

from agent.config.base import MachineBase
from agent.model import ConditionEvent, Sample

M = TypeVar("M", bound=MachineBase)
M_contra = TypeVar("M_contra", bound=MachineBase, contravariant=True)


class Driver(Protocol):
    """One connection to one machine.

    Caller guarantees: ``read`` is called only inside ``async with`` and never concurrently.
    ``__aenter__`` connects or raises :class:`~agent.errors.ConnectionLost`. ``read`` returns one
    sample per configured signal it could plan a read for (a device error gives bad-quality samples,
    not an exception) or raises :class:`~agent.errors.ConnectionLost` when the connection is no
    longer usable; the caller then leaves the context and reconnects with backoff. Every call is
    bounded in time by the machine's ``timeout``.
    """

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...

    async def read(self) -> list[Sample]: ...


@runtime_checkable
class PushDriver(Driver, Protocol):
    """A driver whose source pushes changes (e.g. OPC UA subscriptions).

    ``updates()`` yields lists of samples as they arrive (the first list holds every signal's
    current value) and raises :class:`~agent.errors.ConnectionLost` when the session is gone. The
    runtime iterates it instead of calling ``read`` on a timer.
    """

    def updates(self) -> AsyncIterator[list[Sample]]: ...


@runtime_checkable
class AlarmDriver(Driver, Protocol):
    """A driver that also reports the machine's own alarms (OPC UA Alarms & Conditions).

    ``conditions(notifiers)`` subscribes, inside ``async with`` and alongside ``read``/``updates``,
    to the events of the given event notifiers (node ids), asks for the current conditions (their
    events come between ``refresh_start`` and ``refresh_end`` markers) and yields lists of
    :class:`~agent.model.ConditionEvent` as they arrive; it raises
    :class:`~agent.errors.ConnectionLost` when the session is gone.
    """

    def conditions(self, notifiers: Sequence[str]) -> AsyncIterator[list[ConditionEvent]]: ...


class MachineDrivers(Protocol[M_contra]):
    """Makes the drivers of one protocol for one agent run, and owns what they share.

    Calling it gives a new, unconnected driver for a machine of the protocol; connections that
    machines share (Modbus units on one serial port or gateway) are shared here. The caller calls
    :meth:`aclose` once, after every driver it made has left its ``async with``.
    """

    def __call__(self, machine: M_contra) -> Driver: ...

    async def aclose(self) -> None: ...


CrossCheck = Callable[[Sequence[tuple[int, M]]], list[tuple[str, str]]]


def no_cross_check(machines: Sequence[tuple[int, MachineBase]]) -> list[tuple[str, str]]:
    """For a protocol whose machines need no check against each other."""
    return []


def no_devices(machine: MachineBase) -> list[tuple[str, str]]:
    """For a protocol that opens no local device (it talks over the network)."""
    return []


def nothing_missing(machine: MachineBase) -> str | None:
    """For a protocol that needs no optional software (its library is always installed)."""
    return None


@dataclass(frozen=True)
class Probe(Generic[M]):
    """``andon-agent check --connect`` for one protocol.

    ``run`` connects to every given machine (all of this protocol) once, reads every signal and
    returns the lines to print, in config order, and whether every signal could be read. ``all_read``
    and ``not_all_read`` finish the command's verdict line ("every OPC UA node resolves").
    """

    run: Callable[[Sequence[M]], Awaitable[tuple[list[str], bool]]]
    all_read: str
    not_all_read: str


@dataclass(frozen=True)
class ProtocolPlugin(Generic[M]):
    """What the agent knows of one protocol; :data:`drivers.registry.PROTOCOLS` lists them all.

    * ``name``: the value of ``protocol`` in the config; ``title``: the protocol's name for people.
    * ``config``: the machine model, a :class:`~agent.config.base.MachineBase` with
      ``protocol: Literal[name]``; the config schema's machine union is made of these.
    * ``drivers``: makes a :class:`MachineDrivers` (one per agent run).
    * ``describe(machine, machines)``: the lines ``check`` prints for the machine (``machines``
      are all of the config's, for what the machine shares with others).
    * ``cross_check``: gets every machine of this protocol with its index in ``machines`` and
      returns (key path, problem) pairs for what no single machine's model can check.
    * ``probe``: ``check --connect``, if the protocol has one.
    * ``devices(machine)``: the local devices the machine's driver opens, as (key, path) pairs
      (a serial port: ``("serial", "/dev/ttyUSB0")``), so ``check`` can say whether this user may.
    * ``missing(machine)``: None when the software the machine's driver needs is installed (it may
      import it to find out); otherwise one line naming the machine, what failed to import and
      exactly what to install (the OPC UA stack is an optional extra).
    """

    name: str
    title: str
    config: type[M]
    drivers: Callable[[], MachineDrivers[M]]
    describe: Callable[[M, Sequence[MachineBase]], list[str]]
    cross_check: CrossCheck[M] = no_cross_check
    probe: Probe[M] | None = None
    devices: Callable[[M], list[tuple[str, str]]] = no_devices
    missing: Callable[[M], str | None] = nothing_missing
