"""The OPC UA protocol as the agent sees it: its model, its drivers, its ``check`` lines and probe.

asyncua is imported only when a driver or the probe is made, or ``missing`` is asked (``check``, the
start of ``run``, a reload), never by importing this module.
"""

from __future__ import annotations

from collections.abc import Sequence

from agent.config.base import MachineBase
from drivers.base import Driver, Probe, ProtocolPlugin
from drivers.opcua import missing_stack
from drivers.opcua.config import OpcuaMachine


class OpcuaDrivers:
    """The OPC UA drivers of one agent run: one session per machine, nothing shared."""

    def __call__(self, machine: OpcuaMachine) -> Driver:
        from drivers.opcua.driver import OpcuaDriver  # asyncua: only when an OPC UA machine is made

        return OpcuaDriver(machine)

    async def aclose(self) -> None:
        """Nothing to close: each driver closes its own session."""


def session(m: OpcuaMachine) -> str:
    """How the agent talks to an OPC UA machine, in one line (no protocol library needed)."""
    if m.mode == "subscribe":
        text = f"subscribe to data changes (sampling and publishing every {m.poll_interval:g}s)"
    else:
        text = f"poll: all {len(m.signals)} node(s) in one Read every {m.poll_interval:g}s"
    if m.security_policy == "None":
        text += ", no security"
    else:
        text += f", security {m.security_policy} {m.message_security_mode}"
        text += f", client certificate {m.certificate}" if m.certificate else f" (client certificate in {m.pki_dir})"
        text += f", server certificate {m.server_certificate}" if m.server_certificate else ""
    if m.username is not None:
        where = f"${m.password_env}" if m.password_env else str(m.password_file)
        text += f", user {m.username} (password from {where})"
    return text


def describe(m: OpcuaMachine, machines: Sequence[MachineBase]) -> list[str]:
    """``check``'s lines: the endpoint, how the session reads, each signal's node."""
    return [
        f"machine {m.id}: opcua {m.endpoint}, every {m.poll_interval:g}s, offline after {m.offline_after:g}s",
        "  " + session(m),
        *(f"  signal {s.id}: node {s.node}" for s in m.signals),
    ]


def missing(m: OpcuaMachine) -> str | None:
    """What ``check`` and ``run`` say when the OPC UA stack (an optional extra) is not installed."""
    return missing_stack(m.id)  # imports asyncua when it is there


async def probe(machines: Sequence[OpcuaMachine]) -> tuple[list[str], bool]:
    """Connect to each machine, all at once, resolve every node and show its type and value."""
    from drivers.opcua.probe import probe_all  # asyncua

    return await probe_all(list(machines))


PLUGIN = ProtocolPlugin(
    name="opcua",
    title="OPC UA",
    config=OpcuaMachine,
    drivers=OpcuaDrivers,
    describe=describe,
    probe=Probe(run=probe, all_read="every OPC UA node resolves", not_all_read="not every OPC UA node can be read"),
    missing=missing,
)
