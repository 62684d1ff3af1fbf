"""``check --connect`` for Modbus: formatting (pure, table tests) and real reads from a pymodbus server."""

from __future__ import annotations

import asyncio
import os
import tempfile
from pathlib import Path
from typing import Any

import pytest

from agent.cli import EXIT_CONFIG, EXIT_FATAL, EXIT_OK, main
from drivers.modbus.bus import port_problem
from drivers.modbus.config import ModbusSignal
from drivers.modbus.probe import signal_lines
from drivers.modbus.sim import SimulatedMachine


def sig(**doc: Any) -> ModbusSignal:
    return ModbusSignal.model_validate({"id": "s", "address": 20, **doc})


@pytest.mark.parametrize(
    ("doc", "registers", "bits", "lines"),
    [
        pytest.param({}, [960], None, ["  signal s: holding 20 uint16: registers [0x03C0] = 960"], id="uint16"),
        pytest.param(
            {"scale": 0.1, "register": "input"},
            [960],
            None,
            ["  signal s: input 20 uint16 x0.1: registers [0x03C0] = 96"],
            id="scaled",
        ),
        pytest.param(
            {"type": "int16", "byte_order": "BADC"},
            [0xFFFE],
            None,
            ["  signal s: holding 20 int16 BADC: registers [0xFFFE] = -257"],
            id="int16, bytes swapped",
        ),
        pytest.param(
            {"type": "bit", "bit": 3}, [0x0008], None, ["  signal s: holding 20 bit 3: registers [0x0008] = True"]
        ),
        pytest.param({"type": "bool", "register": "coil"}, None, [True], ["  signal s: coil 20 bool = True"]),
        pytest.param(
            {"type": "string", "length": 2},
            [0x4142, 0x4300],
            None,
            ["  signal s: holding 20 string: registers [0x4142, 0x4300] = 'ABC'"],
        ),
        pytest.param(
            {"type": "int32"},
            [0x0001, 0x86A0],
            None,
            [
                "  signal s: holding 20 int32: registers [0x0001, 0x86A0] = 100000 (ABCD)",
                "    as ABCD: 100000   <- byte_order",
                "    as DCBA: -1601830656",
                "    as BADC: 16818310",
                "    as CDAB: -2036334591",
            ],
            id="int32: every byte order",
        ),
        pytest.param(
            {"type": "float32", "byte_order": "CDAB"},
            [0xF5C3, 0x4048],
            None,
            [
                "  signal s: holding 20 float32: registers [0xF5C3, 0x4048] = 3.14 (CDAB)",
                "    as ABCD: -4.950203e+32",
                "    as DCBA: 197391.8",
                "    as BADC: -490.5645",
                "    as CDAB: 3.14   <- byte_order",
            ],
            id="float32 CDAB: the right order shows the machine's number",
        ),
        pytest.param(
            {"type": "float64", "byte_order": "DCBA"},
            [0x0000, 0x0000, 0x004A, 0x9340],  # 1234.5 (0x40934A0000000000), every byte reversed
            None,
            [
                "  signal s: holding 20 float64: registers [0x0000, 0x0000, 0x004A, 0x9340] = 1234.5 (DCBA)",
                "    as ABCD: 2.414677e-317",
                "    as DCBA: 1234.5   <- byte_order",
                "    as BADC: 6.133976e-315",
                "    as CDAB: -5.80208e-216",
            ],
            id="float64 DCBA: four registers, every byte order",
        ),
        pytest.param(
            {"type": "int64"},
            [0xFFFF, 0xFFFF, 0xFFFF, 0xFFFB],
            None,
            [
                "  signal s: holding 20 int64: registers [0xFFFF, 0xFFFF, 0xFFFF, 0xFFFB] = -5 (ABCD)",
                "    as ABCD: -5   <- byte_order",
                "    as DCBA: -288230376151711745",
                "    as BADC: -1025",
                "    as CDAB: -1125899906842625",
            ],
            id="int64: every byte order",
        ),
    ],
)
def test_signal_lines(
    doc: dict[str, Any], registers: list[int] | None, bits: list[bool] | None, lines: list[str]
) -> None:
    assert signal_lines(sig(**doc), registers, bits) == lines


def _config(tmp_path: Path, machine: dict[str, Any], signals: list[dict[str, Any]]) -> Path:
    lines = ["[agent]", 'gateway_id = "gw-test"', f'state_dir = "{tmp_path / "state"}"', "[[machines]]"]
    lines += [f"{k} = {v!r}".replace("'", '"') for k, v in machine.items()]
    for s in signals:
        lines.append("[[machines.signals]]")
        lines += [f"{k} = {v!r}".replace("'", '"') for k, v in s.items()]
    path = tmp_path / "agent.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


SIGNALS = [
    {"id": "wear", "register": "holding", "address": 0, "type": "uint16", "scale": 0.1},
    {"id": "strokes", "register": "input", "address": 4, "type": "uint32", "byte_order": "CDAB"},
    {"id": "fault", "register": "holding", "address": 10, "type": "bit", "bit": 3},
    {"id": "door", "register": "coil", "address": 7, "type": "bool"},
]


async def _check(path: Path) -> int:
    return await asyncio.to_thread(main, ["check", "--connect", "--config", str(path)])


async def test_check_connect_reads_every_modbus_signal(
    machine: SimulatedMachine, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    await machine.set("holding", 0, [960])
    await machine.set("input", 4, [0x86A0, 0x0001])  # 100000, low word first
    await machine.set("holding", 10, [0x0008])
    await machine.set("coil", 7, [True])
    doc = {"id": "press", "protocol": "modbus", "host": "127.0.0.1", "port": machine.port, "timeout": "500ms"}
    assert await _check(_config(tmp_path, doc, SIGNALS)) == EXIT_OK
    lines = capsys.readouterr().out.splitlines()
    assert lines[-10:] == [
        f"machine press: modbus tcp 127.0.0.1:{machine.port} unit 1: connected",
        "  signal wear: holding 0 uint16 x0.1: registers [0x03C0] = 96",
        "  signal strokes: input 4 uint32: registers [0x86A0, 0x0001] = 100000 (CDAB)",
        "    as ABCD: 2258632705",
        "    as DCBA: 16818310",
        "    as BADC: 2693136640",
        "    as CDAB: 100000   <- byte_order",
        "  signal fault: holding 10 bit 3: registers [0x0008] = True",
        "  signal door: coil 7 bool = True",
        "config OK, every Modbus signal was read",
    ]


async def test_check_connect_names_what_could_not_be_read(
    machine: SimulatedMachine, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    machine.refused.add(("holding", 10))
    doc = {"id": "press", "protocol": "modbus", "host": "127.0.0.1", "port": machine.port, "timeout": "300ms"}
    assert await _check(_config(tmp_path, doc, SIGNALS)) == EXIT_FATAL
    out = capsys.readouterr().out
    assert "  signal fault: holding 10 bit 3: the device refused: exception 2 (illegal data address)" in out
    assert "  signal door: coil 7 bool = False" in out  # the others are still read
    assert out.splitlines()[-1] == "config valid, but not every Modbus signal was read (see above)"

    machine.dead.add(1)
    assert await _check(_config(tmp_path, doc, SIGNALS)) == EXIT_FATAL
    out = capsys.readouterr().out
    assert "  signal wear: holding 0 uint16 x0.1: machine 'press': unit 1 on tcp 127.0.0.1" in out
    assert "no answer to holding 0..0 within 0.3s (the other 3 signal(s) were not tried)" in out


async def test_check_connect_through_an_rtu_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    async with SimulatedMachine(rtu=True) as line:
        await line.set("holding", 0, [0x4048, 0xF5C3])
        doc = {"id": "oven", "protocol": "modbus", "serial": line.url, "baudrate": 9600, "timeout": "1s"}
        signals = [{"id": "temp", "address": 0, "type": "float32"}]
        assert await _check(_config(tmp_path, doc, signals)) == EXIT_OK
    out = capsys.readouterr().out
    assert f"machine oven: modbus rtu {line.url} 9600 N81 unit 1: connected" in out
    assert "  signal temp: holding 0 float32: registers [0x4048, 0xF5C3] = 3.14 (ABCD)" in out


async def test_a_missing_serial_port_is_said_plainly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = {"id": "oven", "protocol": "modbus", "serial": "/dev/ttyUSB-andon-none", "timeout": "300ms"}
    assert await _check(_config(tmp_path, doc, [{"id": "temp", "address": 0}])) == EXIT_FATAL
    out = capsys.readouterr().out
    assert (
        "machine oven: modbus rtu /dev/ttyUSB-andon-none 19200 N81 unit 1: serial port /dev/ttyUSB-andon-none "
        "does not exist: is the adapter plugged in? (ls /dev/serial/by-id/)"
    ) in out


def _as_nobody(port: str) -> str:
    """port_problem(port) asked by user "nobody" (root opens anything): in a forked child that drops to it."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: only os calls, then leave at once
        try:
            os.setgid(65534)
            os.setuid(65534)
            os.write(write, str(port_problem(port)).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as f:
        answer = f.read().decode()
    os.waitpid(pid, 0)
    return answer


def test_a_serial_port_without_permission_gets_the_dialout_hint() -> None:
    """A real EACCES: a device file only its owner may open, opened by another user."""
    with tempfile.TemporaryDirectory() as d:
        os.chmod(d, 0o755)
        port = Path(d) / "ttyUSB0"
        port.write_bytes(b"")
        port.chmod(0o600 if os.geteuid() == 0 else 0)
        problem = _as_nobody(str(port)) if os.geteuid() == 0 else str(port_problem(str(port)))
    assert problem == (
        f"no permission to open serial port {port}: add the agent's user to the dialout group "
        "(sudo usermod -aG dialout <user>, then log in again or restart the service)"
    )
    assert port_problem("socket://127.0.0.1:1") is None  # a pyserial URL is not a file


async def test_check_connect_on_an_invalid_config_is_2(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[[machines]]\nid = "x"\nprotocol = "modbus"\n')
    assert await _check(path) == EXIT_CONFIG
