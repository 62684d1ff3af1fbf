"""CPU per Modbus TCP read: pymodbus's client next to the agent's lean client (drivers/modbus/tcp.py).

    .venv/bin/python bench/modbus_client.py                # 2 rounds of 15 s per client
    .venv/bin/python bench/modbus_client.py --seconds 30 --rounds 3 --count 100

Both clients read the same holding registers from the same pymodbus server in another process, in
the pattern of a poll: a burst of ``--requests`` reads (28, the 1,000-signal bench's plan), then
a second's sleep, each read bounded by ``asyncio.timeout`` as the bus does. It prints the CPU time
(user + system) of this process per read and as % of one core. Rounds alternate the clients, so
a noisy neighbour on the VM hits both. No budget: it explains where ``bench/modbus_poll.py``'s
figure comes from.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RemoteProcess, cpu_seconds


def serve(conn: Connection) -> None:
    """Child process: a simulated machine; sends its port, stops on ``None``."""

    async def main() -> None:
        from drivers.modbus.sim import SimulatedMachine

        async with SimulatedMachine(registers=200) as sim:
            conn.send(sim.port)
            await asyncio.to_thread(conn.recv)

    asyncio.run(main())


async def per_read(read: Callable[[], Awaitable[Any]], seconds: float, burst: int) -> tuple[float, float]:
    """CPU ms per read and % of one core, over ``seconds`` of bursts."""
    reads, cpu0, t0 = 0, cpu_seconds(), time.monotonic()
    while time.monotonic() - t0 < seconds:
        for _ in range(burst):
            async with asyncio.timeout(1.0):
                await read()
            reads += 1
        await asyncio.sleep(1.0)
    used, wall = cpu_seconds() - cpu0, time.monotonic() - t0
    return 1000 * used / reads, 100 * used / wall


async def main(args: argparse.Namespace) -> None:
    from pymodbus.client import AsyncModbusTcpClient

    from drivers.modbus.tcp import TcpReader

    server = RemoteProcess(serve, name="simulated machine")
    port = await server.start()
    pymodbus = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=1, retries=0, reconnect_delay=0)
    lean = TcpReader("127.0.0.1", port)
    await pymodbus.connect()
    await lean.connect()
    clients: dict[str, Callable[[], Awaitable[Any]]] = {
        "pymodbus": lambda: pymodbus.read_holding_registers(0, count=args.count, device_id=1),
        "lean": lambda: lean.read("holding", 0, args.count, 1),
    }
    try:
        for read in clients.values():  # warm up
            for _ in range(50):
                await read()
        print(f"{args.requests} reads of {args.count} registers, then 1 s of sleep; {args.seconds:g} s per round")
        for round_ in range(1, args.rounds + 1):
            for name, read in clients.items():
                ms, pct = await per_read(read, args.seconds, args.requests)
                print(f"round {round_}  {name:<8}  {ms:.3f} ms CPU per read   {pct:.2f} % of one core")
    finally:
        pymodbus.close()
        lean.close()
        await server.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=15.0, help="per client per round (default 15)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--requests", type=int, default=28, help="reads per burst (default 28)")
    parser.add_argument("--count", type=int, default=100, help="registers per read (default 100)")
    asyncio.run(main(parser.parse_args()))
