"""``andon-agent discover`` on a server with 5,000 nodes: wall time and peak RSS of the command.

An asyncua server in its own process holds ``--nodes`` nodes under the Objects folder: folders of
machine parts (objects), each with variables of the types a PLC exposes (Double with an
EngineeringUnits property, Int32, Boolean, String, and a few arrays, which ``discover`` leaves
out). The bench runs the real command line, ``andon-agent discover opcua ENDPOINT --output FILE``,
as a child process, once per ``--runs``, and prints per run: the wall time from start to exit, the
child's peak RSS (``ru_maxrss`` of the waited-for child), the nodes browsed and the signals written;
then checks that the written file passes ``andon-agent check``.

Run it::

    .venv/bin/python bench/discover.py                      # 5,000 nodes, 3 runs
    .venv/bin/python bench/discover.py --nodes 20000 --runs 1
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from common import RemoteProcess

NS_URI = "urn:andon:bench:discover"
PER_PART = 20  # variables per machine part (object)


def serve(conn: Connection, port: int, nodes: int) -> None:
    logging.basicConfig(level=logging.ERROR)
    asyncio.run(_serve(conn, port, nodes))


async def _build(server: Any, ns: int, nodes: int) -> int:
    """``nodes`` nodes under Objects: parts (objects) of PER_PART variables; returns how many were made."""
    from asyncua import ua

    def nid(text: str) -> Any:
        # asyncua annotates NodeId's arguments as String/Int32 and Int16; it takes a plain str or int.
        return ua.NodeId(text, ns)  # type: ignore[arg-type]

    made = 0
    part_no = 0
    while made < nodes:
        part_no += 1
        part = await server.nodes.objects.add_object(nid(f"Part{part_no}"), f"Part{part_no}")
        made += 1
        for i in range(min(PER_PART, nodes - made)):
            name, kind = f"Part{part_no}.V{i}", i % 5
            if kind == 0:
                var = await part.add_variable(nid(name), f"Temp{i}", ua.Variant(20.5, ua.VariantType.Double))
                eu = ua.EUInformation(DisplayName=ua.LocalizedText("°C"))
                await var.add_property(nid(f"{name}.EU"), "EngineeringUnits", eu)
                made += 1
            elif kind == 1:
                await part.add_variable(nid(name), f"Count{i}", ua.Variant(7, ua.VariantType.Int32))
            elif kind == 2:
                await part.add_variable(nid(name), f"Run{i}", ua.Variant(True, ua.VariantType.Boolean))
            elif kind == 3:
                await part.add_variable(nid(name), f"Program{i}", ua.Variant("P42", ua.VariantType.String))
            else:
                await part.add_variable(nid(name), f"Curve{i}", ua.Variant([1.0, 2.0], ua.VariantType.Double))
            made += 1
    return made


async def _serve(conn: Connection, port: int, nodes: int) -> None:
    from asyncua.server.server import Server

    server = Server()
    await server.init()
    server.set_endpoint(f"opc.tcp://127.0.0.1:{port}/bench/")
    ns = await server.register_namespace(NS_URI)
    made = await _build(server, ns, nodes)
    loop = asyncio.get_running_loop()
    readable = asyncio.Event()
    loop.add_reader(conn.fileno(), readable.set)
    try:
        async with server:
            conn.send(made)
            await readable.wait()  # anything (or EOF) stops it
    finally:
        loop.remove_reader(conn.fileno())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def andon_agent() -> list[str]:
    """The installed command line of this checkout's environment."""
    exe = Path(sys.executable).with_name("andon-agent")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "agent"]


def one_run(endpoint: str, out: Path) -> tuple[float, float, str]:
    """(seconds, peak RSS in MB, the command's summary line) of one discover."""
    started = time.monotonic()
    proc = subprocess.Popen(
        [*andon_agent(), "discover", "opcua", endpoint, "--output", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    err = proc.stderr.read()
    proc.stderr.close()
    _, status, usage = os.wait4(proc.pid, 0)  # this child's own resource usage
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.monotonic() - started
    if proc.returncode != 0:
        raise RuntimeError(f"discover failed ({proc.returncode}): {err.strip()}")
    return seconds, usage.ru_maxrss / 1024, err.strip().splitlines()[-1]


async def run(args: argparse.Namespace, tmp: Path) -> bool:
    port = free_port()
    server = RemoteProcess(serve, port, args.nodes, name="andon-bench-discover")
    made = await server.start(within=600)
    endpoint = f"opc.tcp://127.0.0.1:{port}/bench/"
    print(f"server          {made} nodes under Objects ({PER_PART} variables per part, every 5th an array)")
    ok = True
    try:
        for k in range(args.runs):
            out = tmp / f"discovered-{k}.toml"
            seconds, rss, summary = await asyncio.to_thread(one_run, endpoint, out)
            browsed = re.search(r"(\d+) node\(s\) browsed", summary)
            signals = re.search(r"(\d+) signal\(s\)", summary)
            print(
                f"run {k + 1}: {seconds:.2f} s, peak RSS {rss:.1f} MB, "
                f"{browsed.group(1) if browsed else '?'} nodes browsed, {signals.group(1) if signals else '?'} signals"
            )
            check = await asyncio.to_thread(
                subprocess.run, [*andon_agent(), "check", "--config", str(out)], capture_output=True, text=True
            )
            ok = ok and check.returncode == 0
            if check.returncode != 0:
                print(f"  check refused the file: {check.stderr.strip()}")
    finally:
        await server.stop()
    print(f"result: the written file{' passes' if ok else ' does NOT pass'} andon-agent check")
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--nodes", type=int, default=5000, help="nodes on the server (default 5000)")
    parser.add_argument("--runs", type=int, default=3, help="discover runs (default 3)")
    args = parser.parse_args(argv)
    if args.nodes < 2 or args.runs < 1:
        parser.error("--nodes must be >= 2 and --runs >= 1")
    with tempfile.TemporaryDirectory(prefix="andon-bench-discover-") as tmp:
        ok = asyncio.run(run(args, Path(tmp)))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
