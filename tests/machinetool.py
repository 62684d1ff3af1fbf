"""A machine tool by OPC 40501 (MachineTool) on the session's asyncua test server, for ``discover``.

The official NodeSets (``tests/nodesets/``: DI, IA, Machinery, ISA-95 job control, Machinery Jobs,
MachineTool) are imported into the shared server once per session (about 2-3 s), then one
``MachineToolType`` instance is made in Machinery's ``Machines`` folder, with tools of
``ToolType`` in ``Equipment/Tools`` and ``ToolLifeType`` entries in each tool's ``ToolLife``:
the structure a real MachineTool server has, from the types themselves.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from asyncua import ua
from asyncua.common.instantiate_util import instantiate
from asyncua.common.node import Node
from asyncua.ua.attribute_ids import AttributeIds

from tests.opcua_fixtures import OpcuaSim

NODESETS = Path(__file__).resolve().parent / "nodesets"
FILES = (
    "Opc.Ua.Di.NodeSet2.xml",
    "Opc.Ua.IA.NodeSet2.xml",
    "Opc.Ua.Machinery.NodeSet2.xml",
    "opc.ua.isa95-jobcontrol.nodeset2.xml",
    "Opc.Ua.Machinery.Jobs.Nodeset2.xml",
    "Opc.Ua.MachineTool.NodeSet2.xml",
)
MT_URI = "http://opcfoundation.org/UA/MachineTool/"
MACHINERY_URI = "http://opcfoundation.org/UA/Machinery/"
MILL_URI = "urn:andon:test:mill"
MACHINE_TOOL_TYPE, TOOL_TYPE, TOOL_LIFE_TYPE = 13, 50, 61
MACHINES_FOLDER = 1001  # Machinery's Objects/Machines


@dataclass(frozen=True)
class LifeEntry:
    """One ToolLife entry: its browse name, counter value and properties (None: the property is left out)."""

    name: str
    value: float | int
    counting_up: bool
    limit: float | None
    warning: float | None
    start: float | None = None
    unit: str | None = None


@dataclass
class MachineTool:
    sim: OpcuaSim
    ns: int  # the mill's own namespace (urn:andon:test:mill)
    mt: int  # MachineTool's namespace index on this server
    entries: dict[str, Node] = field(default_factory=dict)  # "<tool>/<entry>" -> the entry variable

    def nsu(self, identifier: str) -> str:
        return f"nsu={MILL_URI};s={identifier}"


TOOLS: dict[str, list[LifeEntry]] = {
    "T1": [LifeEntry("Time", 1200.0, True, 3600.0, 3300.0, 0.0, "min")],
    "T2": [LifeEntry("NumberOfUsages", 420, False, 0.0, 50.0, 500.0)],
    "T3": [LifeEntry("Length", 12.5, True, None, None)],  # no LimitValue: no rule can be made from it
}


async def _eu(unit: str) -> ua.EUInformation:
    eu = ua.EUInformation()
    eu.DisplayName = ua.LocalizedText(unit)
    eu.Description = ua.LocalizedText(unit)
    eu.NamespaceUri = "http://www.opcfoundation.org/UA/units/un/cefact"
    return eu


async def _set_property(entry: Node, mt: int, name: str, value: Any, vtype: ua.VariantType) -> None:
    prop = await entry.get_child(ua.QualifiedName(name, mt))
    await prop.write_value(ua.DataValue(ua.Variant(value, vtype)))


async def _add_entry(tool: Node, mt: int, ns: int, tool_name: str, e: LifeEntry, sim: OpcuaSim) -> Node:
    life = await tool.get_child(ua.QualifiedName("ToolLife", mt))
    node_id = ua.NodeId(f"Mill.{tool_name}.{e.name}", ns)  # type: ignore[arg-type]
    made: list[Node] = await instantiate(
        life,
        sim.server.get_node(ua.NodeId(TOOL_LIFE_TYPE, mt)),  # type: ignore[arg-type]
        node_id,
        ua.QualifiedName(e.name, ns),
        instantiate_optional=True,
    )
    (entry,) = [n for n in made if n.nodeid == node_id]
    await entry.write_attribute(
        AttributeIds.DisplayName, ua.DataValue(ua.Variant(ua.LocalizedText(e.name), ua.VariantType.LocalizedText))
    )
    vtype = ua.VariantType.Double if isinstance(e.value, float) else ua.VariantType.UInt32
    await entry.write_value(ua.DataValue(ua.Variant(e.value, vtype)))
    await _set_property(entry, mt, "IsCountingUp", e.counting_up, ua.VariantType.Boolean)
    for name, v in (("LimitValue", e.limit), ("WarningValue", e.warning), ("StartValue", e.start)):
        if v is None:
            await sim.server.delete_nodes([await entry.get_child(ua.QualifiedName(name, mt))])
        else:
            await _set_property(entry, mt, name, v, ua.VariantType.Double)
    if e.unit is not None:
        eu = await entry.get_child(ua.QualifiedName("EngineeringUnits", mt))
        await eu.write_value(ua.DataValue(ua.Variant(await _eu(e.unit), ua.VariantType.ExtensionObject)))
    return entry


async def build_machine_tool(sim: OpcuaSim) -> MachineTool:
    """Import the NodeSets into ``sim``'s server and make the machine tool "Mill" with :data:`TOOLS`."""
    server = sim.server
    quiet = logging.getLogger("asyncua")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)  # the skipped Machinery Jobs nodes are logged at length
    try:
        for name in FILES:
            await server.import_xml(str(NODESETS / name), strict_mode=False)
    finally:
        quiet.setLevel(level)
    mt = await server.get_namespace_index(MT_URI)
    ns = await server.register_namespace(MILL_URI)
    machines = server.get_node(ua.NodeId(MACHINES_FOLDER, await server.get_namespace_index(MACHINERY_URI)))  # type: ignore[arg-type]
    mill = await machines.add_object(ua.NodeId("Mill", ns), "Mill", objecttype=ua.NodeId(MACHINE_TOOL_TYPE, mt))  # type: ignore[arg-type]
    tools = await mill.get_child([ua.QualifiedName("Equipment", mt), ua.QualifiedName("Tools", mt)])
    result = MachineTool(sim, ns, mt)
    for tool_name, entries in TOOLS.items():
        tool = await tools.add_object(
            ua.NodeId(f"Mill.{tool_name}", ns),  # type: ignore[arg-type]
            ua.QualifiedName(tool_name, ns),
            objecttype=ua.NodeId(TOOL_TYPE, mt),  # type: ignore[arg-type]
        )
        # asyncua instantiates the type's <ToolLifeEntry> placeholder too; a real server has none
        placeholder = await tool.get_child([ua.QualifiedName("ToolLife", mt), ua.QualifiedName("<ToolLifeEntry>", mt)])
        await server.delete_nodes([placeholder], recursive=True)
        name_prop = await tool.get_child(ua.QualifiedName("Name", mt))
        await name_prop.write_value(ua.DataValue(ua.Variant(f"Tool {tool_name[1:]}", ua.VariantType.String)))
        for e in entries:
            result.entries[f"{tool_name}/{e.name}"] = await _add_entry(tool, mt, ns, tool_name, e, sim)
    return result
