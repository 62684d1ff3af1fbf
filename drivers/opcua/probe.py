"""``andon-agent check --connect``: connect to an OPC UA machine, resolve every node, show type and value.

For an installer on site: one line per signal with the node's data type and current value, or why
it cannot be used. A node *resolves* when the server has it as a variable (its DataType can be read)
and its value is of a type the rules can use; a Bad status of the value itself (a broken sensor) is
shown but does not count against the config.
"""

from __future__ import annotations

import asyncio
from typing import Any

from asyncua import ua
from asyncua.ua.attribute_ids import AttributeIds

from agent.errors import DriverError
from drivers.opcua.config import OpcuaMachine
from drivers.opcua.driver import NETWORK_ERRORS, close_client, open_client, resolve_nodes, status_and_value
from drivers.opcua.values import describe, to_value


async def probe(m: OpcuaMachine) -> tuple[list[str], bool]:
    """Lines to print and whether every node resolved."""
    security = m.security_policy if m.security_policy == "None" else f"{m.security_policy} {m.message_security_mode}"
    head = f"machine {m.id}: {m.endpoint} (security {security}"
    head += f", user {m.username})" if m.username else ", anonymous)"
    try:
        client = await open_client(m)
    except DriverError as exc:
        return [f"{head}: cannot connect: {exc}"], False
    lines = [f"{head}: connected"]
    ok = True
    try:
        nodes, errors = await resolve_nodes(client, m)
        valid = [n for n in nodes if n is not None]
        async with asyncio.timeout(m.timeout * 3 + 1.0):
            types = await client.read_attributes(valid, AttributeIds.DataType) if valid else []
            values = await client.read_attributes(valid) if valid else []
            type_ids = {v for status, v in map(status_and_value, types) if status is None and v is not None}
            names = await _type_names(client, list(type_ids))
        found = iter(zip(types, values, strict=True))
        for i, (s, node) in enumerate(zip(m.signals, nodes, strict=True)):
            where = f"  signal {s.id}: node {s.node}: "
            if node is None:
                ok = False
                lines.append(where + describe(errors.get(i, "BadNodeIdInvalid")))
                continue
            (type_status, type_id), (status, raw) = map(status_and_value, next(found))
            if type_status is not None:
                ok = False
                lines.append(where + describe(type_status))
                continue
            type_name = names.get(type_id, str(type_id))
            if status is not None:
                lines.append(where + f"{type_name}, no value: {describe(status)}")
                continue
            value, why = to_value(raw)
            if why is not None:
                ok = False
                lines.append(where + f"{type_name} = {raw!r}: the rules cannot use it ({why})")
                continue
            lines.append(where + f"{type_name} = {value!r}")
    except NETWORK_ERRORS as exc:
        lines.append(f"  the connection broke: {exc or type(exc).__name__}")
        ok = False
    finally:
        await close_client(client)
    return lines, ok


async def _type_names(client: Any, type_ids: list[ua.NodeId]) -> dict[ua.NodeId, str]:
    """Data type node id -> its browse name ("Double", "Boolean", an enumeration's name), one Read."""
    if not type_ids:
        return {}
    results = await client.read_attributes([client.get_node(t) for t in type_ids], AttributeIds.BrowseName)
    names = {}
    for t, dv in zip(type_ids, results, strict=True):
        status, name = status_and_value(dv)
        if status is None and name is not None:
            names[t] = str(name.Name)
    return names


async def probe_all(machines: list[OpcuaMachine]) -> tuple[list[str], bool]:
    """Probe every machine, all at once; lines in config order."""
    results = await asyncio.gather(*(probe(m) for m in machines))
    lines = [line for ls, _ in results for line in ls]
    return lines, all(ok for _, ok in results)
