"""The OPC UA driver (poll mode): one asyncua client; all of a machine's nodes in one Read per poll.

asyncua is imported only when this module is, i.e. only when an OPC UA machine is configured.
Its own auto-reconnect stays off: the agent's supervisor reconnects with capped, jittered backoff.
"""

from __future__ import annotations

import asyncio
import math
import time
from types import TracebackType
from typing import Any, Self

from asyncua.client.client import Client
from asyncua.ua.uaerrors import UaError

from agent.config import OpcuaMachine
from agent.errors import ConnectionLost
from agent.model import Quality, Sample


def to_value(variant_value: Any) -> tuple[Any, str | None]:
    """A Python value from an OPC UA value, or (None, why) when a rule cannot use it."""
    v = variant_value
    if isinstance(v, bool | int | str):
        return v, None
    if isinstance(v, float):
        return (v, None) if math.isfinite(v) else (None, f"not a finite number ({v})")
    if hasattr(v, "value") and isinstance(v.value, int):  # enumerations
        return int(v.value), None
    return None, f"unsupported value type {type(v).__name__}"


class OpcuaDriver:
    """One OPC UA session with one server. See :class:`drivers.base.Driver`."""

    def __init__(self, machine: OpcuaMachine) -> None:
        self.machine = machine
        self._client: Client | None = None
        self._nodes: list[Any] = []

    async def __aenter__(self) -> Self:
        m = self.machine
        client = Client(m.endpoint, timeout=m.timeout)
        try:
            async with asyncio.timeout(m.timeout + 2.0):
                await client.connect()
        except (TimeoutError, OSError, UaError, ConnectionError) as exc:
            raise ConnectionLost(m.id, f"cannot connect to {m.endpoint}: {exc or type(exc).__name__}") from exc
        self._client = client
        self._nodes = [client.get_node(s.node) for s in m.signals]
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            try:
                async with asyncio.timeout(2.0):
                    await client.disconnect()
            except (TimeoutError, OSError, UaError, ConnectionError):
                pass

    async def read(self) -> list[Sample]:
        if self._client is None:
            raise ConnectionLost(self.machine.id, "not connected")
        try:
            async with asyncio.timeout(self.machine.timeout + 0.5):
                results = await self._client.read_attributes(self._nodes)
        except (TimeoutError, OSError, UaError, ConnectionError) as exc:
            raise ConnectionLost(self.machine.id, f"read failed: {exc or type(exc).__name__}") from exc
        now = time.time()
        out = []
        for signal, dv in zip(self.machine.signals, results, strict=True):
            status = dv.StatusCode
            if status is not None and not status.is_good():
                out.append(Sample(self.machine.id, signal.id, None, Quality.BAD, now, error=status.name))
                continue
            value, why = to_value(dv.Value.Value if dv.Value is not None else None)
            quality = Quality.GOOD if why is None else Quality.BAD
            out.append(Sample(self.machine.id, signal.id, value, quality, now, error=why))
        return out
