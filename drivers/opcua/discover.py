"""``andon-agent discover opcua``: browse a server and say what a config for it could hold.

:func:`discover` connects with the driver's own code (:func:`drivers.opcua.driver.open_client`:
the same security, certificates and user), then

1. browses the address space breadth first from the Objects folder (the Server object and the
   standard's own nodes in namespace 0 left out), many nodes per Browse request, until every node
   is seen or ``max_nodes`` are;
2. reads, in a few Read requests, the data type, value rank and access level of every variable,
   and the values of the properties it needs (EngineeringUnits, a ToolLife entry's LimitValue,
   WarningValue, StartValue, IsCountingUp);
3. keeps as signals the variables the rules can use: scalar, readable, of a Boolean, numeric,
   String or enumeration type (a type's supertypes are followed to tell);
4. makes a ``tool_life`` rule from every ToolLife entry of OPC 40501 MachineTool (a variable of
   ``ToolLifeType``) that has a ``LimitValue``;
5. proposes an ``alarms`` rule when the address space holds condition objects (of ConditionType
   or a subtype).

It returns a :class:`Found`; turning that into a config file is the command line's job
(``agent/cli/discover.py``). Pure helpers (:func:`signal_ids`, :func:`tool_rule`) are table-tested.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from asyncua import ua
from asyncua.client.client import Client
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.object_ids import ObjectIds

from agent.errors import ConnectionLost
from drivers.opcua.conditions import node_text
from drivers.opcua.config import OpcuaMachine
from drivers.opcua.driver import NETWORK_ERRORS, close_client, open_client

MACHINE_TOOL_URI = "http://opcfoundation.org/UA/MachineTool/"
TOOL_LIFE_TYPE = 61  # MachineTool's ToolLifeType
LIFE_PROPERTIES = ("LimitValue", "WarningValue", "StartValue", "IsCountingUp")
CHUNK = 200  # nodes per Browse or Read request (fewer when the server says so)
_BUILTIN = {
    1: "Boolean", 2: "SByte", 3: "Byte", 4: "Int16", 5: "UInt16", 6: "Int32", 7: "UInt32", 8: "Int64",
    9: "UInt64", 10: "Float", 11: "Double", 12: "String", 26: "Number", 27: "Integer", 28: "UInteger",
}  # fmt: skip
_ENUMERATION = 29
_STOP = {24, 22, 13, 14, 15, 16, 17, 18, 19, 20, 21, 25}  # BaseDataType, Structure, DateTime, ...: not usable
_ID_PART = re.compile(r"[^A-Za-z0-9_.:-]+")


@dataclass
class Seen:
    """One node the browse found."""

    node_id: ua.NodeId
    path: tuple[str, ...]  # browse names from the Objects folder down
    display: str
    node_class: ua.NodeClass
    type_definition: ua.NodeId
    is_property: bool
    parent: ua.NodeId


@dataclass
class FoundSignal:
    id: str
    node: str  # nsu=... node id
    display: str
    type_name: str
    unit: str = ""


@dataclass
class FoundTool:
    """A ToolLife entry of a MachineTool tool: its signal and what its properties say."""

    signal: str
    tool: str  # the tool's browse name ("T1")
    entry: str  # the entry's browse name ("Time")
    properties: dict[str, Any]
    unit: str = ""


@dataclass
class Found:
    endpoint: str
    browsed: int = 0
    truncated: bool = False
    signals: list[FoundSignal] = field(default_factory=list)
    tools: list[FoundTool] = field(default_factory=list)
    has_alarms: bool = False
    skipped: int = 0  # variables the rules cannot use (arrays, structures, unreadable, ...)


# -- pure helpers --------------------------------------------------------------------------------


def signal_ids(paths: Sequence[tuple[str, ...]]) -> list[str]:
    """A config id per browse path: its last parts joined with ``.`` (as many as fit in 64
    characters), made safe for an id, unique (``-2``, ``-3`` ... where two would be equal)."""
    out: list[str] = []
    taken: set[str] = set()
    for path in paths:
        parts = [p for p in (_ID_PART.sub("_", part).strip("_.:-") for part in path) if p] or ["signal"]
        text = parts[-1][:60]
        for part in reversed(parts[:-1]):
            if len(part) + 1 + len(text) > 60 or len(text.split(".")) >= 3:
                break
            text = f"{part}.{text}"
        text = text if text[0].isalnum() else f"s{text}"
        candidate, n = text, 1
        while candidate in taken:
            n += 1
            candidate = f"{text}-{n}"
        taken.add(candidate)
        out.append(candidate)
    return out


def tool_rule(tool: FoundTool) -> tuple[dict[str, Any] | None, str]:
    """The ``tool_life`` rule's keys for a ToolLife entry (None if none can be made), and why / what."""
    props = tool.properties
    limit, warning = props.get("LimitValue"), props.get("WarningValue")
    up = props.get("IsCountingUp") is not False
    if not isinstance(limit, int | float) or isinstance(limit, bool):
        return None, f"{tool.tool} {tool.entry}: no LimitValue on the server, so no tool_life rule (add `limit`)"
    rule: dict[str, Any] = {"kind": "tool_life", "limit": float(limit), "direction": "up" if up else "down"}
    if isinstance(warning, int | float) and not isinstance(warning, bool):
        rule["warning_remaining"] = float(abs(limit - warning))
    start = props.get("StartValue")
    what = f"counting {'up' if up else 'down'} to {limit:g}"
    what += f" from {start:g}" if isinstance(start, int | float) and not isinstance(start, bool) else ""
    what += f", warning at {warning:g}" if "warning_remaining" in rule else ""
    return rule, f"tool {tool.tool} {tool.entry}: {what} (from its ToolLife entry)"


# -- browsing -----------------------------------------------------------------------------------


def _description(node_id: ua.NodeId) -> ua.BrowseDescription:
    d = ua.BrowseDescription()
    d.NodeId = node_id
    d.BrowseDirection = ua.BrowseDirection.Forward
    d.ReferenceTypeId = ua.NodeId(ua.Int32(ObjectIds.HierarchicalReferences))
    d.IncludeSubtypes = True
    d.NodeClassMask = ua.NodeClass.Object | ua.NodeClass.Variable
    d.ResultMask = ua.BrowseResultMask.All
    return d


async def _browse(client: Client, nodes: list[ua.NodeId]) -> list[list[ua.ReferenceDescription]]:
    """The forward hierarchical references of each node (continuation points followed)."""
    params = ua.BrowseParameters()
    params.NodesToBrowse = [_description(n) for n in nodes]
    results = await client.uaclient.browse(params)
    refs = [list(r.References or []) for r in results]
    points = {i: r.ContinuationPoint for i, r in enumerate(results) if r.ContinuationPoint}
    while points:
        more = await client.uaclient.browse_next(
            ua.BrowseNextParameters(ReleaseContinuationPoints=False, ContinuationPoints=list(points.values()))
        )
        nxt = {}
        for i, r in zip(points, more, strict=True):
            refs[i] += list(r.References or [])
            if r.ContinuationPoint:
                nxt[i] = r.ContinuationPoint
        points = nxt
    return refs


def _visit(ref: ua.ReferenceDescription, parent: Seen | None, seen: set[ua.NodeId]) -> Seen | None:
    node_id = ua.NodeId(ref.NodeId.Identifier, ref.NodeId.NamespaceIndex, ref.NodeId.NodeIdType)
    if getattr(ref.NodeId, "ServerIndex", 0) or node_id.NamespaceIndex == 0 or node_id in seen:
        return None
    name = ref.BrowseName.Name or ""
    if name.startswith("<") and name.endswith(">"):  # a type's placeholder left in an instance, not a real node
        return None
    seen.add(node_id)
    return Seen(
        node_id,
        (*(parent.path if parent else ()), ref.BrowseName.Name),
        ref.DisplayName.Text or ref.BrowseName.Name,
        ref.NodeClass,
        ua.NodeId(ref.TypeDefinition.Identifier, ref.TypeDefinition.NamespaceIndex),
        ref.ReferenceTypeId == ua.NodeId(ua.Int32(ObjectIds.HasProperty)),
        parent.node_id if parent else ua.NodeId(ua.Int32(ObjectIds.ObjectsFolder)),
    )


async def browse_all(
    client: Client, max_nodes: int, chunk: int = CHUNK, leaves: frozenset[ua.NodeId] = frozenset()
) -> tuple[list[Seen], bool]:
    """Every object and variable under Objects (breadth first) up to ``max_nodes``; and whether it
    stopped there. Objects whose type is in ``leaves`` (conditions) are listed, not looked into."""
    root = ua.NodeId(ua.Int32(ObjectIds.ObjectsFolder))
    seen: set[ua.NodeId] = {root, ua.NodeId(ua.Int32(ObjectIds.Server))}
    found: list[Seen] = []
    frontier: list[Seen | None] = [None]  # None: the Objects folder
    while frontier:
        batch, frontier = frontier[:chunk], frontier[chunk:]
        results = await _browse(client, [b.node_id if b else root for b in batch])
        for parent, refs in zip(batch, results, strict=True):
            for ref in refs:
                node = _visit(ref, parent, seen)
                if node is None:
                    continue
                if len(found) >= max_nodes:
                    return found, True
                found.append(node)
                if node.type_definition not in leaves:
                    frontier.append(node)
    return found, False


# -- reading what the browse found ----------------------------------------------------------------


async def _read(client: Client, ids: list[tuple[ua.NodeId, int]], chunk: int) -> list[ua.DataValue]:
    """One attribute per node, in Reads of at most ``chunk`` nodes."""
    out: list[ua.DataValue] = []
    for i in range(0, len(ids), chunk):
        params = ua.ReadParameters()
        for node_id, attribute in ids[i : i + chunk]:
            rv = ua.ReadValueId()
            rv.NodeId, rv.AttributeId = node_id, attribute
            params.NodesToRead.append(rv)
        out += await client.uaclient.read(params)
    return out


def _value(dv: ua.DataValue) -> Any:
    if dv.StatusCode is not None and not dv.StatusCode.is_good():
        return None
    return dv.Value.Value if dv.Value is not None else None


async def _supertypes(client: Client, types: set[ua.NodeId]) -> dict[ua.NodeId, ua.NodeId | None]:
    """Each data type's supertype (inverse HasSubtype), one Browse for all."""
    order = sorted(types, key=str)
    params = ua.BrowseParameters()
    for t in order:
        d = ua.BrowseDescription()
        d.NodeId, d.BrowseDirection = t, ua.BrowseDirection.Inverse
        d.ReferenceTypeId, d.IncludeSubtypes = ua.NodeId(ua.Int32(ObjectIds.HasSubtype)), False
        d.ResultMask = ua.BrowseResultMask.All
        params.NodesToBrowse.append(d)
    results = await client.uaclient.browse(params) if order else []
    return {t: (r.References[0].NodeId if r.References else None) for t, r in zip(order, results, strict=True)}


async def type_names(client: Client, types: set[ua.NodeId]) -> dict[ua.NodeId, str | None]:
    """Each data type -> the usable base type it is ("Double", "Enumeration", ...) or None (not for rules)."""
    names: dict[ua.NodeId, str | None] = {}
    chain: dict[ua.NodeId, ua.NodeId] = {}  # a type -> the type it was reached from
    todo = set(types)
    while todo:
        nxt: set[ua.NodeId] = set()
        for t in todo:
            ident = t.Identifier if t.NamespaceIndex == 0 and isinstance(t.Identifier, int) else None
            if ident in _BUILTIN or ident == _ENUMERATION or ident in _STOP:
                names[t] = _BUILTIN.get(ident) if ident != _ENUMERATION else "Enumeration"
        unknown = {t for t in todo if t not in names}
        for t, parent in (await _supertypes(client, unknown)).items():
            if parent is None or len(chain) > 1000:
                names[t] = None
            else:
                parent = ua.NodeId(parent.Identifier, parent.NamespaceIndex)
                chain[t] = parent
                if parent not in names:
                    nxt.add(parent)
        todo = nxt
    for t in types:  # follow each chain to its resolved base
        seen, cur = set(), t
        while cur not in names and cur in chain and cur not in seen:
            seen.add(cur)
            cur = chain[cur]
        names[t] = names.get(cur)
    return {t: names.get(t) for t in types}


# -- putting it together ------------------------------------------------------------------------


async def _chunk(client: Client) -> int:
    """Nodes per request: :data:`CHUNK`, or less if the server's MaxNodesPerBrowse / MaxNodesPerRead say so."""
    limits = (
        ObjectIds.Server_ServerCapabilities_OperationLimits_MaxNodesPerBrowse,
        ObjectIds.Server_ServerCapabilities_OperationLimits_MaxNodesPerRead,
    )
    values = await _read(client, [(ua.NodeId(ua.Int32(i)), AttributeIds.Value) for i in limits], CHUNK)
    return min([CHUNK, *(v for v in map(_value, values) if isinstance(v, int) and v > 0)])


async def _condition_types(client: Client) -> set[ua.NodeId]:
    """ConditionType and every subtype the server has."""
    from asyncua.common.ua_utils import get_node_subtypes

    nodes = await get_node_subtypes(client.get_node(ua.NodeId(ua.Int32(ObjectIds.ConditionType))))
    return {n.nodeid for n in nodes}


def _is_life_entry(v: Seen, props: dict[str, Seen], mt: int | None) -> bool:
    by_type = mt is not None and v.type_definition == ua.NodeId(ua.Int32(TOOL_LIFE_TYPE), ua.Int16(mt))
    return by_type or {"IsCountingUp", "LimitValue"} <= set(props)


async def _property_values(
    client: Client, wanted: list[tuple[ua.NodeId, str, Seen]], chunk: int
) -> dict[tuple[ua.NodeId, str], Any]:
    """(parent, property name) -> the property's value, for the properties asked for."""
    values = await _read(client, [(p.node_id, AttributeIds.Value) for _, _, p in wanted], chunk)
    return {(parent, name): _value(dv) for (parent, name, _), dv in zip(wanted, values, strict=True)}


async def _variables(client: Client, variables: list[Seen], chunk: int) -> list[tuple[Seen, str]]:
    """The variables the rules can use, each with its type's name: scalar, readable, of a usable
    type, and holding a value (a variable whose value is null has nothing to judge)."""
    attrs = (AttributeIds.DataType, AttributeIds.ValueRank, AttributeIds.AccessLevel)
    values = await _read(client, [(v.node_id, a) for v in variables for a in (*attrs, AttributeIds.Value)], chunk)
    rows = [(*(_value(dv) for dv in values[i * 4 : i * 4 + 3]), values[i * 4 + 3]) for i in range(len(variables))]
    types = await type_names(client, {r[0] for r in rows if isinstance(r[0], ua.NodeId)})
    usable = []
    for v, (dtype, rank, access, current) in zip(variables, rows, strict=True):
        name = types.get(dtype) if isinstance(dtype, ua.NodeId) else None
        readable = isinstance(access, int) and access & ua.AccessLevel.CurrentRead.mask
        empty = current.StatusCode is not None and current.StatusCode.is_good() and _value(current) is None
        if name is not None and rank in (-1, None) and readable and not empty:
            usable.append((v, name))
    return usable


def _tool_name(path: tuple[str, ...]) -> str:
    """The tool a ToolLife entry belongs to: ``.../<tool>/ToolLife/<entry>``."""
    if len(path) >= 3 and path[-2] == "ToolLife":
        return path[-3]
    return path[-2] if len(path) > 1 else ""


def _assemble(
    found: Found,
    usable: list[tuple[Seen, str]],
    values: dict[tuple[ua.NodeId, str], Any],
    entries: set[ua.NodeId],
    namespaces: list[str],
) -> None:
    """The signals (ids, nsu= node ids, units) and the tools, into ``found``."""
    for (v, type_name), sid in zip(usable, signal_ids([v.path for v, _ in usable]), strict=True):
        eu = values.get((v.node_id, "EngineeringUnits"))
        unit = str(eu.DisplayName.Text or "") if eu is not None and getattr(eu, "DisplayName", None) else ""
        node = node_text(v.node_id, namespaces) or v.node_id.to_string()
        found.signals.append(FoundSignal(sid, node, v.display, type_name, unit))
        if v.node_id in entries:
            life = {k: values.get((v.node_id, k)) for k in LIFE_PROPERTIES if (v.node_id, k) in values}
            found.tools.append(FoundTool(sid, _tool_name(v.path), v.path[-1], life, unit))


async def _explore(client: Client, endpoint: str, max_nodes: int) -> Found:
    chunk = await _chunk(client)
    conditions = await _condition_types(client)
    nodes, truncated = await browse_all(client, max_nodes, chunk, frozenset(conditions))
    namespaces = list(await client.get_namespace_array())
    mt = namespaces.index(MACHINE_TOOL_URI) if MACHINE_TOOL_URI in namespaces else None
    props: dict[ua.NodeId, dict[str, Seen]] = {}
    for n in nodes:
        if n.is_property:
            props.setdefault(n.parent, {})[n.path[-1]] = n
    candidates = [n for n in nodes if n.node_class == ua.NodeClass.Variable and not n.is_property]
    usable = await _variables(client, candidates, chunk)
    entries = {v.node_id for v, _ in usable if _is_life_entry(v, props.get(v.node_id, {}), mt)}
    wanted = [
        (v.node_id, name, p)
        for v, _ in usable
        for name, p in props.get(v.node_id, {}).items()
        if name == "EngineeringUnits" or (v.node_id in entries and name in LIFE_PROPERTIES)
    ]
    values = await _property_values(client, wanted, chunk)
    found = Found(endpoint, len(nodes), truncated, skipped=len(candidates) - len(usable))
    _assemble(found, usable, values, entries, namespaces)
    found.has_alarms = any(n.node_class == ua.NodeClass.Object and n.type_definition in conditions for n in nodes)
    return found


async def discover(m: OpcuaMachine, max_nodes: int) -> Found:
    """Connect as ``m`` says (security, user), browse, read, and say what was found.

    Raises :class:`~agent.errors.ConnectionLost` (cannot connect, or the connection broke while
    browsing) or :class:`~agent.errors.DriverError` (a certificate or password problem).
    """
    client = await open_client(m)
    try:
        return await _explore(client, m.endpoint, max_nodes)
    except NETWORK_ERRORS as exc:
        raise ConnectionLost(m.id, f"browsing {m.endpoint} failed: {str(exc) or type(exc).__name__}") from exc
    finally:
        await close_client(client)
