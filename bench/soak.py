"""Soak: 1,000 signals polled every 100 ms for an hour, rules toggling, the upstream down and up.

    .venv/bin/python bench/soak.py                      # 60 minutes (36,000 polls), about 70 minutes in all
    .venv/bin/python bench/soak.py --minutes 3 --outage-every 1 --outage-for 0.3 --warmup 1   # a short run
    .venv/bin/python bench/soak.py --state-dir /var/lib/andon-bench   # the outbox on the gateway's storage

The agent runs as a real process (``python -m agent run --config ...``, the Modbus driver, the
SQLite outbox with ``synchronous=FULL``, the HTTP sink, the status endpoint), as it runs on a
gateway. This process plays the plant and the upstream:

* a simulated machine (a real pymodbus server) with 1,000 signals (600 holding registers, 200
  input registers, 200 coils), 50 of them watched by rules (threshold and fault); every
  ``--toggle`` seconds one rule's signal is flipped (raise or clear), so events come now and then;
* the upstream, the project's real HTTP :class:`Receiver`, which goes down for ``--outage-for``
  minutes every ``--outage-every`` minutes (the events wait in the outbox) and comes back on the
  same port;
* every minute it samples the agent's RSS (``/proc/<pid>/status``) and CPU, and reads
  ``/metrics`` (polls, outbox depth).

Checks (exit status 0 when all pass):

* memory: RSS after the warm-up stays flat, growth (the highest sample after the warm-up minus
  the sample at the end of the warm-up) under 2 MB;
* polling: no poll missed: the agent's own poll count equals the ticks its interval allows
  (``andon_machine_polls_total`` against elapsed / interval; a poll that overruns its interval
  makes the agent skip a tick), and the gaps between polls as the machine sees them (the first
  request of each poll) are reported: p50, p99, max, and how many exceeded 1.5 x the interval;
* events: every ``seq`` the agent committed arrived, in order, no gaps (each event is checked as
  it arrives; repeats of a batch in flight when the upstream went down are counted, not errors),
  and at the end the last one received is the outbox's last ``seq``.

``--minutes`` sets the length of the measured run; the drain and stop take a little more.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import sqlite3
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import pct

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.demo.receiver import Receiver, Reply  # noqa: E402
from drivers.modbus.sim import SimulatedMachine  # noqa: E402

RSS_GROWTH_BUDGET_MB = 2.0
INTERVAL = 0.1  # the machine's poll_interval, seconds
HOLDING, INPUT, COILS = 600, 200, 200
THRESHOLD_RULES, FAULT_RULES = 30, 20


def signal_docs() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    docs += [{"id": f"h{i}", "register": "holding", "address": i, "type": "uint16"} for i in range(HOLDING)]
    docs += [{"id": f"i{i}", "register": "input", "address": i, "type": "int16"} for i in range(INPUT)]
    docs += [{"id": f"c{i}", "register": "coil", "address": i, "type": "bool"} for i in range(COILS)]
    return docs


def rule_docs() -> list[dict[str, Any]]:
    """Thresholds on every 20th holding register, faults on every 10th coil (chattering off: a toggle
    is always an event)."""
    rules: list[dict[str, Any]] = [
        {"id": f"t{i}", "machine": "soak", "signal": f"h{i * 20}", "kind": "threshold", "warning": 80}
        | {"chatter_count": 0}
        for i in range(THRESHOLD_RULES)
    ]
    rules += [
        {"id": f"f{i}", "machine": "soak", "signal": f"c{i * 10}", "kind": "fault", "chatter_count": 0}
        for i in range(FAULT_RULES)
    ]
    return rules


def write_config(path: Path, state_dir: Path, machine_port: int, url: str, status_port: int) -> None:
    def toml(doc: dict[str, Any]) -> str:
        return "\n".join(f"{k} = {json.dumps(v)}" for k, v in doc.items())

    parts = [
        "[agent]\n" + toml({"gateway_id": "soak", "state_dir": str(state_dir)}),
        "[status]\n" + toml({"listen": f"127.0.0.1:{status_port}"}),
        "[alerts]\n" + toml({"flood_count": 0}),  # every toggle goes out as itself
        "[[machines]]\n"
        + toml(
            {
                "id": "soak",
                "protocol": "modbus",
                "host": "127.0.0.1",
                "port": machine_port,
                "poll_interval": "100ms",
                "timeout": "1s",
                "offline_after": "10s",
            }
        ),
    ]
    parts += ["[[machines.signals]]\n" + toml(s) for s in signal_docs()]
    parts += ["[[rules]]\n" + toml(r) for r in rule_docs()]
    parts.append("[[sinks]]\n" + toml({"id": "up", "kind": "http", "url": url, "timeout": "5s", "retry_max": "5s"}))
    path.write_text("\n\n".join(parts) + "\n")


class TimedMachine(SimulatedMachine):
    """The simulated machine, noting when each poll starts (its first request after a pause)."""

    def __init__(self, interval: float, **kw: Any) -> None:
        super().__init__(**kw)
        self.split = interval / 2  # requests of one poll come back to back; polls are an interval apart
        self.last_request = -float("inf")
        self.poll_start = 0.0
        self.poll_starts = 0
        self.gaps: list[float] = []  # between poll starts, seconds

    def _trace(self, sending: bool, pdu: Any) -> Any:
        if not sending:
            now = time.monotonic()
            if now - self.last_request > self.split:
                if self.poll_starts:
                    self.gaps.append(now - self.poll_start)
                self.poll_start = now
                self.poll_starts += 1
            self.last_request = now
        return super()._trace(sending, pdu)


@dataclass
class Arrivals:
    """Checks each event as it arrives: every seq once, in order, no gap (a repeat is counted)."""

    first: int | None = None
    last: int | None = None
    count: int = 0
    repeats: int = 0
    gaps: list[tuple[int, int]] = field(default_factory=list)  # (expected, got)
    seen_ids: dict[int, str] = field(default_factory=dict)  # seq -> id, for the repeats (bounded below)

    def on_event(self, event: dict[str, Any]) -> None:
        seq = event["data"]["seq"]
        if self.last is not None and seq <= self.last:
            if self.seen_ids.get(seq) == event["id"]:
                self.repeats += 1  # a batch in flight when the upstream went down: the same event again
            else:
                self.gaps.append((self.last + 1, seq))
            return
        if self.last is not None and seq != self.last + 1:
            self.gaps.append((self.last + 1, seq))
        if self.first is None:
            self.first = seq
        self.last = seq
        self.count += 1
        self.seen_ids[seq] = event["id"]
        if len(self.seen_ids) > 20_000:  # repeats come from the last batches only
            for old in sorted(self.seen_ids)[:10_000]:
                del self.seen_ids[old]


@dataclass
class Sample:
    minute: float
    rss_mb: float
    cpu_pct: float  # of one core, since the previous sample
    polls: int
    expected_polls: int
    outbox: int
    received: int
    upstream: bool


def proc_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def proc_cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def metrics(port: int) -> dict[str, float]:
    """The agent's /metrics, the series this bench reads (a plain HTTP/1.0 GET: no client library)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
    await writer.drain()
    body = (await reader.read()).decode()
    writer.close()
    out: dict[str, float] = {}
    for line in body.splitlines():
        for name in ("andon_machine_polls_total", "andon_outbox_events ", "andon_sink_pending_events"):
            if line.startswith(name):
                out[name.strip()] = float(line.rsplit(" ", 1)[1])
    return out


async def toggler(machine: TimedMachine, every: float, seed: int, stop: asyncio.Event) -> None:
    """Flip one rule's signal every ``every`` seconds: a threshold between 10 and 90, a fault bit."""
    rng = random.Random(seed)
    high = [False] * THRESHOLD_RULES
    on = [False] * FAULT_RULES
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every)
        if stop.is_set():
            return
        if rng.random() < 0.6:
            i = rng.randrange(THRESHOLD_RULES)
            high[i] = not high[i]
            await machine.set("holding", i * 20, [90 if high[i] else 10])
        else:
            i = rng.randrange(FAULT_RULES)
            on[i] = not on[i]
            await machine.set("coil", i * 10, [on[i]])


async def upstream(receiver: Receiver, args: argparse.Namespace, stop: asyncio.Event, log: list[str]) -> None:
    """Down for ``outage_for`` minutes every ``outage_every`` minutes (the first after one period)."""
    t0 = time.monotonic()
    period, down_for = args.outage_every * 60, args.outage_for * 60
    n = 1
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), max(0.0, t0 + n * period - time.monotonic()))
        if stop.is_set():
            return
        await receiver.stop()
        log.append(f"{(time.monotonic() - t0) / 60:6.2f} min: upstream down")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), down_for)
        await receiver.start()
        log.append(f"{(time.monotonic() - t0) / 60:6.2f} min: upstream up")
        n += 1


async def run(args: argparse.Namespace, state_dir: Path) -> int:
    arrivals = Arrivals()
    machine = TimedMachine(INTERVAL, registers=max(HOLDING, INPUT, COILS // 16 + 1))
    receiver = Receiver(lambda batch, headers: Reply(200), on_event=arrivals.on_event, keep=0)
    await machine.start()
    await receiver.start()
    status_port = free_port()
    config = state_dir / "soak.toml"
    write_config(config, state_dir / "state", machine.port, receiver.url, status_port)
    samples: list[Sample] = []
    outages: list[str] = []
    stop = asyncio.Event()
    with (state_dir / "agent.log").open("w") as log_file:
        agent = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "agent", "run", "--config", str(config)),
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=log_file,
            stderr=log_file,
        )
        try:
            started = await wait_started(status_port, agent)
            print(f"agent pid {agent.pid} up; {args.minutes:g} min, a sample every {args.sample:g} s", flush=True)
            tasks = [
                asyncio.create_task(toggler(machine, args.toggle, args.seed, stop)),
                asyncio.create_task(upstream(receiver, args, stop, outages)),
            ]
            await sample(args, agent.pid, status_port, started, receiver, arrivals, samples)
            stop.set()
            await asyncio.gather(*tasks)
            if not receiver.running:
                await receiver.start()
            await drain(status_port)
        finally:
            stop.set()
            if agent.returncode is None:
                agent.send_signal(signal.SIGTERM)
                await asyncio.wait_for(agent.wait(), 30)
            await receiver.stop()
            await machine.stop()
    return report(args, samples, machine, arrivals, outages, state_dir, agent.returncode)


async def sample(
    args: argparse.Namespace,
    pid: int,
    status_port: int,
    started: float,
    receiver: Receiver,
    arrivals: Arrivals,
    samples: list[Sample],
) -> None:
    """Every ``args.sample`` seconds until the run's end: RSS, CPU, the agent's metrics, what arrived."""
    cpu_before, t_before = proc_cpu_seconds(pid), time.monotonic()
    polls_before = int((await metrics(status_port)).get("andon_machine_polls_total", 0))
    end = started + args.minutes * 60
    while (now := time.monotonic()) < end:
        await asyncio.sleep(min(args.sample, end - now))
        m = await metrics(status_port)
        cpu, t = proc_cpu_seconds(pid), time.monotonic()
        s = Sample(
            minute=(t - started) / 60,
            rss_mb=proc_rss_mb(pid),
            cpu_pct=100 * (cpu - cpu_before) / (t - t_before),
            polls=int(m.get("andon_machine_polls_total", 0)) - polls_before,
            expected_polls=int((t - started) / INTERVAL),
            outbox=int(m.get("andon_outbox_events", 0)),
            received=arrivals.count,
            upstream=receiver.running,
        )
        cpu_before, t_before = cpu, t
        samples.append(s)
        print(
            f"{s.minute:6.1f} min  RSS {s.rss_mb:6.1f} MB  CPU {s.cpu_pct:4.1f} %  "
            f"polls {s.polls:6d}/{s.expected_polls:6d}  outbox {s.outbox:5d}  received {s.received:6d}  "
            f"upstream {'up' if s.upstream else 'DOWN'}",
            flush=True,
        )


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_started(port: int, agent: asyncio.subprocess.Process) -> float:
    """Wait until /metrics answers with a first poll; returns when (monotonic)."""
    async with asyncio.timeout(60):
        while agent.returncode is None:
            with contextlib.suppress(OSError):
                if (await metrics(port)).get("andon_machine_polls_total", 0) > 0:
                    return time.monotonic()
            await asyncio.sleep(0.2)
    raise SystemExit(f"the agent exited with status {agent.returncode} before its first poll")


async def drain(port: int) -> None:
    """After the run: wait (up to 2 minutes) until the outbox is empty and the receiver has it all."""
    async with asyncio.timeout(120):
        while True:
            m = await metrics(port)
            if m.get("andon_outbox_events", 1) == 0 and m.get("andon_sink_pending_events", 1) == 0:
                return
            await asyncio.sleep(0.5)


def outbox_last_seq(state_dir: Path) -> int:
    with contextlib.closing(sqlite3.connect(state_dir / "state" / "outbox.db")) as db:
        return int(db.execute("SELECT value FROM meta WHERE key = 'last_seq'").fetchone()[0])


def report(
    args: argparse.Namespace,
    samples: list[Sample],
    machine: TimedMachine,
    arrivals: Arrivals,
    events: list[str],
    state_dir: Path,
    returncode: int | None,
) -> int:
    interval = INTERVAL
    warm = [s for s in samples if s.minute <= args.warmup + 1e-9]
    after = [s for s in samples if s.minute > args.warmup + 1e-9]
    base = warm[-1].rss_mb if warm else samples[0].rss_mb
    growth = max((s.rss_mb for s in after), default=base) - base
    slope = 0.0
    if len(after) >= 2:
        xs, ys = [s.minute for s in after], [s.rss_mb for s in after]
        slope = statistics.linear_regression(xs, ys).slope * 60  # MB per hour
    last = samples[-1]
    skipped = last.expected_polls - last.polls
    gaps = machine.gaps
    late = sum(1 for g in gaps if g > 1.5 * interval)
    missed = sum(1 for g in gaps if g > 1.9 * interval)
    last_seq = outbox_last_seq(state_dir)
    complete = arrivals.last == last_seq and not arrivals.gaps
    ok_rss = growth < RSS_GROWTH_BUDGET_MB
    ok_polls = skipped <= 2 and missed == 0  # a tick may fall either side of the window's ends
    print()
    print(
        f"run: {args.minutes:g} min, 1,000 signals every 100 ms, {len(rule_docs())} rules, one toggle every "
        f"{args.toggle:g} s, upstream down {args.outage_for:g} min every {args.outage_every:g} min"
    )
    print("upstream: " + "; ".join(e.strip() for e in events))
    print(
        f"RSS: {samples[0].rss_mb:.1f} MB at the first sample, {base:.1f} MB after the {args.warmup:g} min warm-up, "
        f"max after {max((s.rss_mb for s in after), default=base):.1f} MB, end {last.rss_mb:.1f} MB; "
        f"growth {growth:+.2f} MB (budget < {RSS_GROWTH_BUDGET_MB:g} MB), slope {slope:+.2f} MB/h  "
        f"{'PASS' if ok_rss else 'FAIL'}"
    )
    print(f"CPU: mean {statistics.fmean(s.cpu_pct for s in samples):.1f} % of one core")
    print(f"polls (agent): {last.polls} of {last.expected_polls} ticks in {last.minute:.1f} min; skipped {skipped}")
    if gaps:
        print(
            f"polls (machine): {machine.poll_starts} seen; gap p50 {pct(gaps, 50) * 1000:.1f} ms, p99 "
            f"{pct(gaps, 99) * 1000:.1f} ms, max {max(gaps) * 1000:.1f} ms; {late} over 150 ms, {missed} over "
            f"190 ms  {'PASS' if ok_polls else 'FAIL'}"
        )
    print(
        f"events: {arrivals.count} received, seq {arrivals.first}..{arrivals.last}, the outbox's last seq "
        f"{last_seq}; gaps or out of order: {len(arrivals.gaps)} {arrivals.gaps[:5]}; repeats {arrivals.repeats}  "
        f"{'PASS' if complete else 'FAIL'}"
    )
    print(f"agent exit status {returncode}; its log: {state_dir / 'agent.log'}")
    return 0 if ok_rss and ok_polls and complete and returncode == 0 else 1


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=60.0, help="length of the measured run (60)")
    p.add_argument("--warmup", type=float, default=5.0, help="minutes before RSS must stay flat (5)")
    p.add_argument("--sample", type=float, default=60.0, help="seconds between samples (60)")
    p.add_argument("--toggle", type=float, default=2.0, help="seconds between rule toggles (2)")
    p.add_argument("--outage-every", type=float, default=10.0, help="minutes between upstream outages (10)")
    p.add_argument("--outage-for", type=float, default=2.0, help="minutes each outage lasts (2)")
    p.add_argument("--seed", type=int, default=12)
    p.add_argument("--state-dir", type=Path, default=None, help="where the run's temp dir is made")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="andon-soak-", dir=args.state_dir) as tmp:
        code = asyncio.run(run(args, Path(tmp)))
        if code:  # keep the agent's log of a failed run
            kept = Path(tempfile.gettempdir()) / f"andon-soak-{int(time.time())}.log"
            kept.write_bytes((Path(tmp) / "agent.log").read_bytes())
            print(f"agent log kept in {kept}")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
