"""Drain of a 100,000-event backlog to a local mosquitto at QoS 1, and what the MQTT sink costs in memory.

Drain: a child process writes ``--events`` real CloudEvents to a fresh outbox: the lifecycles of 8
tool-wear alerts on one press (raised, updated x3, cleared, over and over), so every event is an
alert event with retained state (the heaviest kind for this sink). mosquitto runs with a generated
config on a free port, with ``set_tcp_nodelay true`` (``--nagle``: mosquitto's default, under which
its 4-byte PUBACKs wait for Nagle's algorithm and the pipeline stalls; ``--receive-maximum``: its
``max_inflight_messages``, 20 by default). ``mosquitto_sub`` subscribes to ``andon/+/+/events/#`` at
QoS 1, and another process counts what it receives (distinct ids too). The bench process runs the
agent's real delivery path: :class:`AsyncOutbox` (SQLite, WAL, every settle a synced transaction),
:class:`Delivery` with the default batch size (500) and linger, and the :class:`MqttSink` (MQTT 5,
every message acknowledged by PUBACK before its event counts) until the outbox is empty. It prints
events/s, CPU per event, the subscriber's count, the broker's CPU, the bench process's RSS at the
start of the drain and its peak (sampled every 5 ms), against the budgets (>= 5,000 events/s; RSS
growth < 20 MB). ``--protocol 3.1.1`` runs the same over MQTT 3.1.1.

Idle cost: the real agent (``python -m agent run``) watching one simulated Modbus machine, idle for
``--idle-seconds``, with no sink and then with one ``mqtt`` sink connected to the broker; alternated
``--idle-runs`` times. It prints each one's VmRSS, the difference, and whether aiomqtt or paho were
imported without an mqtt sink (they must not be). Exit status 0 when all budgets pass.

    .venv/bin/python bench/mqtt_drain.py
    .venv/bin/python bench/mqtt_drain.py --nagle --idle-runs 0      # mosquitto's default TCP settings
    .venv/bin/python bench/mqtt_drain.py --protocol 3.1.1 --idle-runs 0
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from asyncio.subprocess import PIPE
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.model import Severity, StoredEvent, Transition, TransitionKind  # noqa: E402
from agent.pipeline.alertlog import cloudevent  # noqa: E402
from tests.mosquitto import Mosquitto  # noqa: E402

RATE_BUDGET = 5000.0
RSS_BUDGET_MB = 20.0
CYCLE = (TransitionKind.RAISED, *[TransitionKind.UPDATED] * 3, TransitionKind.CLEARED)  # one alert's lifecycle


def rss_bytes(pid: int | str = "self") -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a process has used, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def fill(path: Path, n: int) -> None:
    """Child process: ``n`` alert events (8 alerts' lifecycles) in a fresh outbox, 1,000 per commit."""
    from agent.pipeline.outbox import Outbox

    ob = Outbox(path, max_events=max(n, 100_000), max_bytes=2**40)
    ob.open()
    ob.set_sinks(["fleet"])
    seq = ob.last_seq()
    for start in range(0, n, 1000):
        batch = []
        for i in range(start, min(n, start + 1000)):
            seq += 1
            tool = i % 8
            kind = CYCLE[(i // 8) % len(CYCLE)]
            t = Transition(
                "press-1",
                f"tool{tool}-wear",
                f"tool{tool}_wear",
                kind,
                Severity.WARNING,
                81.5,
                80.0,
                f"tool{tool}_wear on press-1 is 81.5%, at or over the warning limit 80%: plan service soon",
                time.time(),
            )
            body = cloudevent(t, seq=seq, event_id=f"{seq:036d}", gateway="gw-bench", site="plant-a")
            encoded = json.dumps(body, separators=(",", ":")).encode()
            batch.append(StoredEvent(seq, body["id"], t.severity, encoded, body["type"], body["subject"], "press-1"))
        ob.append(batch, {})
    ob.close()
    print(path.stat().st_size, flush=True)


class Counter:
    """Child process: ``mosquitto_sub`` at QoS 1 on ``topic``; counts the messages and their distinct ids
    (kept here, not in the bench process, whose RSS is measured). Prints ``ready``; after a line on
    stdin, waits until ``n`` distinct ids arrived (at most 60 s) and prints ``<count> <distinct>``."""

    def __init__(self, port: int, topic: str, n: int) -> None:
        sub = shutil.which("mosquitto_sub") or "/usr/bin/mosquitto_sub"
        cmd = [sub, "-h", "127.0.0.1", "-p", str(port), "-t", topic, "-q", "1", "-V", "mqttv5", "-F", "%p"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE)
        self.n = n
        self.count = 0
        self.ids: set[str] = set()
        self.changed = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            doc = json.loads(line)
            with self.changed:
                self.count += 1
                self.ids.add(doc["id"])
                self.changed.notify_all()

    def run(self) -> None:
        time.sleep(0.5)  # mosquitto_sub has no ready signal: give it time to subscribe
        print("ready", flush=True)
        sys.stdin.readline()
        with self.changed:
            self.changed.wait_for(lambda: len(self.ids) >= self.n, 60)
            print(self.count, len(self.ids), flush=True)
        self.proc.terminate()
        self.proc.wait()


async def drain(path: Path, url: str, args: argparse.Namespace) -> dict[str, Any]:
    from agent.pipeline.delivery import Delivery
    from agent.pipeline.outbox import AsyncOutbox, Outbox
    from agent.sinks.mqtt import MqttSink, MqttSinkConfig

    doc = {"id": "fleet", "kind": "mqtt", "url": url, "protocol": args.protocol, "in_flight": args.in_flight}
    cfg = MqttSinkConfig.model_validate(doc)

    class Watched(AsyncOutbox):  # notices the end of the drain without polling
        drained = asyncio.Event()

        async def call(self, fn: Any, *a: Any) -> Any:
            try:
                return await super().call(fn, *a)
            finally:
                if self.sync.depth() == 0:
                    self.drained.set()

    ob = Watched(Outbox(path, max_events=10**7, max_bytes=2**40))
    async with ob, MqttSink(cfg, gateway="gw-bench", site="plant-a") as sink:
        await ob.call(ob.sync.set_sinks, ["fleet"])
        backlog = ob.sync.depth()
        ob.drained.clear()
        await sink.wait_connected(10)
        delivery = Delivery(sink, ob, batch_size=args.batch_size, retry_max=1.0, linger=args.linger)
        gc.collect()
        start_rss = peak = rss_bytes()
        done = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not done.wait(0.005):
                peak = max(peak, rss_bytes())

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        started, cpu0 = time.perf_counter(), time.process_time()
        task = asyncio.create_task(delivery.run())
        await ob.drained.wait()
        took, cpu = time.perf_counter() - started, time.process_time() - cpu0
        delivery.stop()
        await task
        done.set()
        sampler.join()
        peak = max(peak, rss_bytes())
        connections = sink.connections
        window = sink._connected.window if sink._connected else 0
    return {
        "took": took,
        "cpu": cpu,
        "backlog": backlog,
        "start_rss": start_rss,
        "peak": peak,
        "conns": connections,
        "window": window,
    }


AGENT_CONFIG = """
[agent]
gateway_id = "gw-idle"
site = "bench"
state_dir = "{state}"
[[machines]]
id = "m1"
protocol = "modbus"
host = "127.0.0.1"
port = {port}
poll_interval = "1s"
  [[machines.signals]]
  id = "wear"
  address = 0
[[rules]]
id = "wear"
machine = "m1"
signal = "wear"
kind = "threshold"
warning = 80
[status]
listen = ""
"""

MQTT_SINK = """
[[sinks]]
id = "fleet"
kind = "mqtt"
url = "{url}"
"""

PROBE = (
    "import atexit, sys; from agent.cli import main; "
    "atexit.register(lambda: print('MQTT_IMPORTED', any(m.split('.')[0] in ('aiomqtt', 'paho') for m in sys.modules), "
    "flush=True)); sys.exit(main(['--log-level', 'warning', 'run', '--config', sys.argv[1]]))"
)


async def idle_rss(port: int, url: str | None, seconds: float) -> tuple[float, bool]:
    """VmRSS (MiB) of the real agent after ``seconds`` idle, and whether it imported aiomqtt/paho."""
    with tempfile.TemporaryDirectory(prefix="andon-idle-") as tmp:
        cfg = Path(tmp) / "agent.toml"
        text = AGENT_CONFIG.format(state=Path(tmp) / "state", port=port)
        cfg.write_text(text + (MQTT_SINK.format(url=url) if url else ""))
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", PROBE, str(cfg), cwd=ROOT, stdout=asyncio.subprocess.PIPE, env={**os.environ}
        )
        await asyncio.sleep(seconds)  # idle is what is measured: there is no event to wait for
        rss = rss_bytes(proc.pid) / 2**20
        proc.send_signal(signal.SIGTERM)
        out, _ = await proc.communicate()
        assert proc.returncode == 0, f"the agent exited with {proc.returncode}"
        return rss, b"MQTT_IMPORTED True" in out


async def idle_cost(url: str, runs: int, seconds: float) -> tuple[list[float], list[float], bool]:
    from drivers.modbus.sim import SimulatedMachine

    without: list[float] = []
    with_mqtt: list[float] = []
    imported_without = False
    async with SimulatedMachine() as machine:
        for _ in range(runs):
            rss, imported = await idle_rss(machine.port, None, seconds)
            without.append(rss)
            imported_without |= imported
            with_mqtt.append((await idle_rss(machine.port, url, seconds))[0])
    return without, with_mqtt, imported_without


ME = [sys.executable, str(Path(__file__).resolve())]


async def run_drain(args: argparse.Namespace, broker: Mosquitto) -> bool:
    me = ME
    with tempfile.TemporaryDirectory(prefix="andon-mqtt-drain-", dir=args.state_dir) as tmp:
        path = Path(tmp) / "outbox.db"
        t0 = time.perf_counter()
        fill_cmd = [*me, "--fill", str(path), "--events", str(args.events)]
        out = await asyncio.to_thread(subprocess.run, fill_cmd, check=True, capture_output=True)
        size = int(out.stdout)
        print(
            f"backlog: {args.events} alert events written in {time.perf_counter() - t0:.1f} s; {size / 2**20:.1f} MiB"
        )
        counter = await asyncio.create_subprocess_exec(
            *me, "--count", str(broker.port), "--events", str(args.events), stdin=PIPE, stdout=PIPE
        )
        assert counter.stdin is not None and counter.stdout is not None
        assert (await counter.stdout.readline()).strip() == b"ready"
        assert broker.proc is not None
        broker_cpu0 = cpu_seconds(broker.proc.pid)
        r = await drain(path, broker.url, args)
        broker_cpu = cpu_seconds(broker.proc.pid) - broker_cpu0
        counter.stdin.write(b"go\n")
        got, distinct = (int(x) for x in (await counter.stdout.readline()).split())
        await counter.wait()
    rate = r["backlog"] / r["took"]
    growth = (r["peak"] - r["start_rss"]) / 2**20
    print(
        f"MQTT {args.protocol}: drained {r['backlog']} events in {r['took']:.2f} s = {rate:,.0f} events/s "
        f"(budget >= {RATE_BUDGET:,.0f}); CPU {r['cpu']:.2f} s = {r['backlog'] / r['cpu']:,.0f} events per CPU-second; "
        f"{r['conns']} connection(s), {r['window']} messages in flight at most"
    )
    print(f"subscriber (mosquitto_sub, another process) got {got} event messages, {distinct} distinct ids")
    print(
        f"broker (mosquitto, one subscriber): CPU {broker_cpu:.2f} s = "
        f"{broker_cpu / r['backlog'] * 1e6:.0f} us per event (PUBACKs, retained writes, the copy to the subscriber)"
    )
    print(
        f"agent RSS: {r['start_rss'] / 2**20:.1f} MiB at the start of the drain, peak {r['peak'] / 2**20:.1f} MiB, "
        f"growth {growth:.1f} MiB (budget < {RSS_BUDGET_MB:.0f} MB)"
    )
    return bool(rate >= RATE_BUDGET and growth < RSS_BUDGET_MB and distinct == r["backlog"])


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


async def amain(args: argparse.Namespace) -> bool:
    print(f"load average before: {load()}")
    with tempfile.TemporaryDirectory(prefix="andon-mosquitto-") as tmp:
        extra = ["max_queued_messages 0"]  # the counting subscriber must miss none
        if not args.nagle:  # PUBACKs go out at once, not held by Nagle's algorithm until our ACK
            extra.append("set_tcp_nodelay true")
        if args.receive_maximum:
            extra.append(f"max_inflight_messages {args.receive_maximum}")  # mosquitto's Receive Maximum (MQTT 5)
        broker = Mosquitto(Path(tmp), extra=tuple(extra))
        await broker.start()
        try:
            ok = await run_drain(args, broker)
            if args.idle_runs > 0:
                without, with_mqtt, imported = await idle_cost(broker.url, args.idle_runs, args.idle_seconds)
                cost = statistics.median(with_mqtt) - statistics.median(without)
                print(
                    f"idle agent RSS (one Modbus machine, {args.idle_runs} runs each, alternated): "
                    f"no sink {statistics.median(without):.1f} MiB {[round(x, 1) for x in without]}, "
                    f"with an mqtt sink {statistics.median(with_mqtt):.1f} MiB {[round(x, 1) for x in with_mqtt]}: "
                    f"the mqtt sink adds {cost:.1f} MiB"
                )
                print(f"aiomqtt/paho imported without an mqtt sink: {imported}")
                ok = ok and not imported
        finally:
            await broker.stop()
    print(f"load average after: {load()}")
    return ok


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--events", type=int, default=100_000)
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--linger", type=float, default=0.05)
    p.add_argument("--protocol", choices=("5", "3.1.1"), default="5")
    p.add_argument("--in-flight", type=int, default=64, help="the sink's in_flight")
    p.add_argument("--nagle", action="store_true", help="the broker with mosquitto's default set_tcp_nodelay false")
    p.add_argument(
        "--receive-maximum", type=int, default=0, help="the broker's Receive Maximum (default: mosquitto's 20)"
    )
    p.add_argument("--idle-runs", type=int, default=3)
    p.add_argument("--idle-seconds", type=float, default=5.0)
    p.add_argument("--state-dir", type=Path, default=None, help="where the outbox goes (default: a temp dir)")
    p.add_argument("--fill", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--count", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.fill:
        fill(args.fill, args.events)
        return 0
    if args.count:
        Counter(args.count, "andon/+/+/events/#", args.events).run()
        return 0
    ok = asyncio.run(amain(args))
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
