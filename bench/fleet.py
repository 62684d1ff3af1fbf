"""A fleet on one broker: N agent processes, each a gateway watching one simulated machine, all
publishing to one local mosquitto; what the fleet's service application sees, and what it costs.

    nice -n 10 .venv/bin/python bench/fleet.py                 # 50 gateways
    nice -n 10 .venv/bin/python bench/fleet.py --gateways 20 --rounds 5

What runs: mosquitto (generated config, a free port); N simulated Modbus machines (pymodbus servers,
in this process); N real ``python -m agent run`` processes (gateway ``gw-NNN`` on site ``plant-K``,
ten gateways a site; one machine each, a fault rule, poll 200 ms; one ``mqtt`` sink, MQTT 5, QoS 1);
and a service application's subscriber (aiomqtt, in this process) on ``andon/+/+/events/#``.

What it measures:

- start: all N gateways' retained status ``{"online": true}`` seen, from the first spawn;
- idle (``--idle`` s): CPU of the agents (sum, and per gateway) and of the broker, RSS of each;
- burst rounds: every machine raises its fault at once, then clears it, ``--rounds`` times; each
  round waits until the subscriber has every gateway's event. Events/s end to end (events received
  / time from the first change to the last event) and the latency from the register change to the
  subscriber (it includes up to one poll interval);
- the fleet's alert view: with every machine's fault raised, a subscriber that joins now on
  ``andon/+/+/alerts/#`` gets every active alert of the fleet (N retained messages, one a gateway);
  after half of them clear, N/2;
- a clean stop of every agent: a late subscriber sees every gateway's status ``{"online": false}``;
- what one more gateway costs: the agent's RSS and idle CPU, and the broker's memory per connected
  gateway (its RSS with N gateways minus its RSS with none, over N).

The machine this runs on is usually shared: the load average is printed before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import ssl
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from drivers.modbus.sim import SimulatedMachine  # noqa: E402
from tests.mosquitto import Mosquitto, Received, Subscriber, make_ca, retained  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")
FAULT = 8  # holding register 10, bit 3

CONFIG = """
[agent]
gateway_id = "{gateway}"
site = "{site}"
state_dir = "{state}"

[[machines]]
id = "press-1"
protocol = "modbus"
host = "127.0.0.1"
port = {port}
poll_interval = "200ms"
timeout = "1s"

  [[machines.signals]]
  id = "fault"
  address = 10
  type = "bit"
  bit = 3

[[rules]]
id = "spindle-fault"
machine = "press-1"
signal = "fault"
kind = "fault"
severity = "critical"
chatter_count = 0                   # the bench toggles the fault on purpose: no chattering hold

[alerts]
flood_count = 0                     # nor a flood gate

[status]
listen = ""

[[sinks]]
id = "fleet"
kind = "mqtt"
url = "{url}"
{tls}retry_max = "5s"
"""


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


class Fleet:
    def __init__(self, n: int, broker: Mosquitto, directory: Path) -> None:
        self.n = n
        self.broker = broker
        self.directory = directory
        self.machines: list[SimulatedMachine] = []
        self.agents: list[asyncio.subprocess.Process] = []

    @staticmethod
    def gateway(i: int) -> str:
        return f"gw-{i:03d}"

    @staticmethod
    def site(i: int) -> str:
        return f"plant-{i // 10}"

    async def start_machines(self) -> None:
        for _ in range(self.n):
            m = SimulatedMachine()
            await m.start()
            self.machines.append(m)

    async def start_agents(self) -> None:
        for i, m in enumerate(self.machines):
            d = self.directory / self.gateway(i)
            d.mkdir()
            cfg = d / "agent.toml"
            state = d / "state"
            cfg.write_text(
                CONFIG.format(
                    gateway=self.gateway(i),
                    site=self.site(i),
                    state=state,
                    port=m.port,
                    url=self.broker.url,
                    tls=f'ca_file = "{self.broker.tls.ca}"\n' if self.broker.tls else "",
                )
            )
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "agent",
                "--log-level",
                "warning",
                "run",
                "--config",
                str(cfg),
                cwd=ROOT,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=(d / "agent.log").open("wb"),
            )
            self.agents.append(proc)

    async def set_faults(self, indexes: range, on: bool) -> dict[str, float]:
        """Set (or clear) the fault of these machines; returns each gateway's change time (monotonic)."""
        changed: dict[str, float] = {}
        for i in indexes:
            await self.machines[i].set("holding", 10, [FAULT if on else 0])
            changed[self.gateway(i)] = time.monotonic()
        return changed

    def footprint(self) -> tuple[list[float], float]:
        return [rss_mib(p.pid) for p in self.agents], rss_mib(self.broker_pid)

    @property
    def broker_pid(self) -> int:
        assert self.broker.proc is not None
        return self.broker.proc.pid

    def cpu(self) -> tuple[float, float]:
        return sum(cpu_seconds(p.pid) for p in self.agents), cpu_seconds(self.broker_pid)

    async def stop_agents(self) -> list[int]:
        for p in self.agents:
            p.send_signal(signal.SIGTERM)
        return [await p.wait() for p in self.agents]

    async def stop_machines(self) -> None:
        for m in self.machines:
            await m.stop()


def events_of(sub: Subscriber, kind: str) -> list[tuple[str, float]]:
    """(gateway, arrival time) of every event of this type the subscriber has received."""
    out = []
    for m in sub.messages:
        if "/events/" in m.topic:
            doc = m.json()
            if doc["type"] == kind:
                out.append((doc["data"]["gateway"], m.at))
    return out


async def round_trip(fleet: Fleet, sub: Subscriber, on: bool, within: float) -> tuple[list[float], float, float]:
    """Change every machine; wait for every gateway's event. Returns latencies, first change, last arrival."""
    kind = "andon.alert.raised" if on else "andon.alert.cleared"
    before = len(events_of(sub, kind))
    changed = await fleet.set_faults(range(fleet.n), on)
    first = min(changed.values())
    await sub.until(lambda _: len(events_of(sub, kind)) - before >= fleet.n, within)
    new = events_of(sub, kind)[before:]
    return [t - changed[gw] for gw, t in new], first, max(t for _, t in new)


def log_tails(directory: Path, gateways: int = 3) -> str:
    """The ends of the first gateways' logs, to say why something did not arrive."""
    logs = sorted(directory.glob("gw-*/agent.log"))[:gateways]
    return "\n".join(f"--- {p.parent.name}:\n{p.read_text()[-2000:]}" for p in logs)


def pct(values: list[float], p: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[p - 1] if len(values) > 1 else values[0]


async def online(broker: Mosquitto, expect: Callable[[dict[str, object]], bool]) -> int:
    statuses = await retained(broker, "andon/+/+/status", **client_tls(broker))
    return sum(1 for m in statuses if m.payload and expect(json.loads(m.payload)))


def client_tls(broker: Mosquitto) -> dict[str, Any]:
    """What the service application's client needs for this broker (TLS with the test CA, or nothing)."""
    if broker.tls is None:
        return {}
    return {"tls_context": ssl.create_default_context(cafile=str(broker.tls.ca))}


async def run(args: argparse.Namespace) -> int:
    print(f"load average before: {load()}  (2 CPUs; this machine is shared)")
    n = args.gateways
    with tempfile.TemporaryDirectory(prefix="andon-fleet-") as tmp:
        tls = make_ca(Path(tmp) / "ca") if args.tls else None
        extra = ("max_queued_messages 0", "set_tcp_nodelay true")  # as README recommends for mosquitto
        broker = Mosquitto(Path(tmp) / "broker", tls=tls, extra=extra)
        await broker.start()
        fleet = Fleet(n, broker, Path(tmp))
        try:
            return await measure(args, fleet)
        except TimeoutError:
            print(log_tails(Path(tmp)))
            raise
        finally:
            for p in fleet.agents:
                if p.returncode is None:
                    p.kill()
                    await p.wait()
            await fleet.stop_machines()
            await broker.stop()
            print(f"load average after: {load()}")


@dataclass
class Figures:
    """What the phases measured, for the closing lines."""

    agents_rss: list[float] = field(default_factory=list)
    broker_empty: float = 0.0
    broker_rss: float = 0.0
    idle_agents_pct: float = 0.0  # of one CPU, all agents together
    idle_broker_pct: float = 0.0
    agent_ms_per_event: float = 0.0  # CPU above idle
    broker_ms_per_event: float = 0.0
    ok: bool = True


async def start(fleet: Fleet, sub: Subscriber, within: float) -> None:
    t0 = time.monotonic()
    await fleet.start_agents()

    def all_online(ms: list[Received]) -> bool:
        up = {m.topic for m in ms if m.topic.endswith("/status") and m.payload and json.loads(m.payload)["online"]}
        return len(up) >= fleet.n

    await sub.until(all_online, within)
    print(f"{fleet.n} gateways (agent processes, one simulated machine each) online in {time.monotonic() - t0:.1f} s")


async def idle(fleet: Fleet, seconds: float, f: Figures) -> None:
    await asyncio.sleep(2.0)  # let the start-up settle first
    cpu0, bcpu0, w0 = *fleet.cpu(), time.monotonic()
    await asyncio.sleep(seconds)  # idle is what is measured: nothing to wait for
    cpu1, bcpu1, w1 = *fleet.cpu(), time.monotonic()
    f.agents_rss, f.broker_rss = fleet.footprint()
    f.idle_agents_pct = (cpu1 - cpu0) / (w1 - w0) * 100
    f.idle_broker_pct = (bcpu1 - bcpu0) / (w1 - w0) * 100
    n = fleet.n
    print(
        f"idle {w1 - w0:.0f} s (each agent polls every 200 ms, MQTT keepalive 30 s): agents "
        f"{f.idle_agents_pct:.1f} % of a CPU together ({f.idle_agents_pct / n:.2f} % each), broker "
        f"{f.idle_broker_pct:.2f} %"
    )
    print(
        f"RSS: agent median {statistics.median(f.agents_rss):.1f} MiB (min {min(f.agents_rss):.1f}, max "
        f"{max(f.agents_rss):.1f}), all agents {sum(f.agents_rss):.0f} MiB; broker {f.broker_empty:.1f} MiB with no "
        f"client, {f.broker_rss:.1f} MiB with {n} gateways: {(f.broker_rss - f.broker_empty) * 1024 / n:.0f} KiB each"
    )


async def rounds(fleet: Fleet, sub: Subscriber, args: argparse.Namespace) -> None:
    """Every machine raises at once, then clears: the latency of a fleet-wide burst."""
    latencies: list[float] = []
    spans: list[float] = []
    for _ in range(args.rounds):
        for on in (True, False):
            lat, first, last = await round_trip(fleet, sub, on, args.round_within)
            latencies += lat
            spans.append(last - first)
    print(
        f"bursts: {args.rounds} x ({fleet.n} raises at once, then {fleet.n} clears): {len(latencies)} events, "
        f"{len(latencies) / sum(spans):,.0f} events/s while a burst lasts; change -> subscriber median "
        f"{statistics.median(latencies) * 1000:.0f} ms, p90 {pct(latencies, 90) * 1000:.0f} ms, p99 "
        f"{pct(latencies, 99) * 1000:.0f} ms, max {max(latencies) * 1000:.0f} ms (a 200 ms poll included)"
    )


def gateway_events(sub: Subscriber) -> dict[str, list[tuple[int, str, float]]]:
    """Per gateway, the (seq, type, arrival) of every event received, in arrival order."""
    out: dict[str, list[tuple[int, str, float]]] = {}
    for m in sub.messages:
        if "/events/" in m.topic:
            doc = m.json()
            out.setdefault(doc["data"]["gateway"], []).append((doc["data"]["seq"], doc["type"], m.at))
    return out


def gaps(events: dict[str, list[tuple[int, str, float]]]) -> int:
    """Events missing at the subscriber: each gateway's seq numbers have no holes (seq is contiguous)."""
    missing = 0
    for evs in events.values():
        seqs = sorted({seq for seq, _, _ in evs})
        missing += seqs[-1] - seqs[0] + 1 - len(seqs)
    return missing


async def sustained(fleet: Fleet, sub: Subscriber, args: argparse.Namespace, f: Figures) -> None:
    """Every machine toggles its fault every ``--toggle`` s, phases spread, for ``--sustain`` s; then
    wait until every gateway's last event matches its machine's last state."""
    toggles: dict[str, list[tuple[float, bool]]] = {fleet.gateway(i): [] for i in range(fleet.n)}
    already = len(sub.messages)
    cpu0, bcpu0 = fleet.cpu()
    started = time.monotonic()

    async def toggle(i: int) -> None:
        await asyncio.sleep(args.toggle * i / fleet.n)
        on = True
        while time.monotonic() - started < args.sustain:
            await fleet.set_faults(range(i, i + 1), on)
            toggles[fleet.gateway(i)].append((time.monotonic(), on))
            on = not on
            await asyncio.sleep(args.toggle)  # the machine's own pace

    await asyncio.gather(*(toggle(i) for i in range(fleet.n)))

    def settled(_: list[Received]) -> bool:
        now = gateway_events(sub)
        want = {gw: "andon.alert.raised" if t[-1][1] else "andon.alert.cleared" for gw, t in toggles.items()}
        return all(gw in now and now[gw][-1][1] == want[gw] for gw in want)

    await sub.until(settled, args.round_within)
    cpu1, bcpu1 = fleet.cpu()
    new = [m for m in sub.messages[already:] if "/events/" in m.topic]
    wall = max(m.at for m in new) - started
    latencies = []
    for m in new:  # from the last change of its machine to that state before the event arrived
        doc = m.json()
        state = doc["type"] == "andon.alert.raised"
        changes = [t for t, on in toggles[doc["data"]["gateway"]] if on == state and t <= m.at]
        latencies.append(m.at - changes[-1])
    missing = gaps(gateway_events(sub))
    f.ok &= missing == 0
    f.agent_ms_per_event = (cpu1 - cpu0 - f.idle_agents_pct / 100 * wall) / len(new) * 1000
    # /proc counts CPU in 10 ms ticks: below 0.2 s the broker's share is noise, and is given as 0
    broker_cpu = bcpu1 - bcpu0 - f.idle_broker_pct / 100 * wall
    f.broker_ms_per_event = broker_cpu / len(new) * 1000 if broker_cpu >= 0.2 else 0.0
    print(
        f"sustained {args.sustain:.0f} s, each machine changing every {args.toggle:g} s: {len(new)} events in "
        f"{wall:.1f} s = {len(new) / wall:,.0f} events/s end to end (register change -> subscriber); "
        f"{missing} missing (seq gaps); latency median {statistics.median(latencies) * 1000:.0f} ms, "
        f"p99 {pct(latencies, 99) * 1000:.0f} ms (a 200 ms poll included)"
    )
    print(
        f"CPU per event above idle: agents {f.agent_ms_per_event:.2f} ms (poll, rules, two synced commits, "
        f"MQTT), broker {f.broker_ms_per_event:.3f} ms"
    )


async def all_clear(fleet: Fleet, sub: Subscriber, within: float) -> None:
    """Clear every machine's fault and wait until every gateway's last event is its clearing."""
    await fleet.set_faults(range(fleet.n), False)

    def cleared(_: list[Received]) -> bool:
        now = gateway_events(sub)
        return all(
            now.get(fleet.gateway(i), [(0, "andon.alert.cleared", 0.0)])[-1][1] == "andon.alert.cleared"
            for i in range(fleet.n)
        )

    await sub.until(cleared, within)


def alert_topics(sub: Subscriber, gateways: set[str], live: bool) -> set[str]:
    """Which of these gateways' alert topics last carried a retained state (live) or a deletion (not live)."""
    last: dict[str, bool] = {}
    for m in sub.messages:
        if "/alerts/" in m.topic and m.topic.split("/")[2] in gateways:
            last[m.topic] = bool(m.payload)
    return {topic for topic, present in last.items() if present == live}


async def alert_view(fleet: Fleet, sub: Subscriber, args: argparse.Namespace, f: Figures) -> None:
    """Every machine faulted: a late subscriber to andon/+/+/alerts/# sees every gateway's alert; after
    half of them cleared, it sees the other half. (The event reaches the subscriber just before the
    retained change of the same batch: the live subscription to the alerts is waited for first.)"""
    n, broker = fleet.n, fleet.broker
    everyone = {fleet.gateway(i) for i in range(n)}
    await all_clear(fleet, sub, args.round_within)
    await round_trip(fleet, sub, True, args.round_within)
    await sub.until(lambda _: len(alert_topics(sub, everyone, live=True)) >= n, args.round_within)
    view = await retained(broker, "andon/+/+/alerts/#", **client_tls(broker))
    gateways = {json.loads(m.payload)["data"]["gateway"] for m in view}
    print(f"a subscriber joining on andon/+/+/alerts/# got {len(view)} retained alerts from {len(gateways)} gateways")
    f.ok &= len(view) == n and len(gateways) == n
    half = {fleet.gateway(i) for i in range(n // 2)}
    await fleet.set_faults(range(n // 2), False)
    await sub.until(lambda _: len(alert_topics(sub, half, live=False)) >= len(half), args.round_within)
    view = await retained(broker, "andon/+/+/alerts/#", **client_tls(broker))
    print(f"after {len(half)} of them cleared, a new subscriber gets {len(view)} (expected {n - len(half)})")
    f.ok &= len(view) == n - len(half)


async def measure(args: argparse.Namespace, fleet: Fleet) -> int:
    f = Figures(broker_empty=rss_mib(fleet.broker_pid))
    await fleet.start_machines()
    topics = ("andon/+/+/events/#", "andon/+/+/status", "andon/+/+/alerts/#")
    async with Subscriber(fleet.broker, *topics, **client_tls(fleet.broker)) as sub:
        await start(fleet, sub, args.start_within)
        await idle(fleet, args.idle, f)
        await rounds(fleet, sub, args)
        await sustained(fleet, sub, args, f)
        await alert_view(fleet, sub, args, f)
    codes = await fleet.stop_agents()
    offline = await online(fleet.broker, lambda doc: doc.get("online") is False)
    print(f"clean stop of every agent: exit codes {sorted(set(codes))}; {offline} of {fleet.n} statuses say offline")
    f.ok &= offline == fleet.n and set(codes) == {0}
    n = fleet.n
    print(
        f"one more gateway costs: on its own hardware an agent of {statistics.median(f.agents_rss):.1f} MiB RSS and "
        f"{f.idle_agents_pct / n:.2f} % of a CPU idle ({f.agent_ms_per_event:.1f} ms of CPU per event); at the broker "
        f"{(f.broker_rss - f.broker_empty) * 1024 / n:.0f} KiB, {f.idle_broker_pct / n:.4f} % of a CPU idle and "
        f"{f.broker_ms_per_event * 1000:.0f} us of CPU per event"
    )
    print("PASS" if f.ok else "FAIL")
    return 0 if f.ok else 1


def main() -> int:
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)  # the simulated machines' servers: quiet when
    # a starved agent gives up on a request and its reply finds the connection gone
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gateways", type=int, default=50)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--idle", type=float, default=20.0, help="seconds of idle measured")
    p.add_argument("--sustain", type=float, default=20.0, help="seconds of steady changes")
    p.add_argument("--tls", action="store_true", help="mqtts:// with a test CA (the broker's TLS cost)")
    p.add_argument("--toggle", type=float, default=0.5, help="each machine changes every this many seconds")
    p.add_argument("--start-within", type=float, default=300.0)
    p.add_argument("--round-within", type=float, default=60.0)
    return asyncio.run(run(p.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
