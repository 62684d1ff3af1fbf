"""Fan-out to three sinks, one of them failing: every sink gets every event it routes, in order, and
the failing one does not slow the others.

What it measures: one simulated machine (a real pymodbus server in its own process) toggles a fault
``--toggles`` times (chattering handling off), so the real :class:`Agent` (Modbus driver, rules,
SQLite outbox with ``synchronous=FULL`` in a temporary directory) commits a ``raised`` and a
``cleared`` per toggle. Three sinks on 127.0.0.1 take them: ``http`` (the real :class:`Receiver`),
``ntfy`` (the fake ntfy server of the tests, its rate limit lifted as for a self-hosted server that
exempts the gateway) with ``min_severity = "warning"``, and ``pagerduty`` (the fake Events API) with
``min_severity = "critical"``. The fault is critical, so each sink routes every event.

Two runs, back to back, alternating for ``--rounds``: **failing**, where PagerDuty answers 503 for
the first ``--outage`` seconds of the toggling, and **healthy**, where it never fails. For each run
it checks that each sink got every event it routes exactly once and in ``seq`` order (PagerDuty:
trigger for raised, resolve for cleared), and prints the time from commit (``AlertLog.commit``
returned, synced) to receipt at the fast sinks (http, ntfy): median, p90, p99, max. The claim is
that the failing sink leaves the fast sinks' p99 unchanged. Exit status 0 when every delivery check
passes.

Run it (about 4 minutes per round with the defaults; the machine may be shared, so ``nice``)::

    nice -n 10 .venv/bin/python bench/sinks_fanout.py
    .venv/bin/python bench/sinks_fanout.py --toggles 200 --outage 10 --rounds 1   # a quick look
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import first_read, pct
from latency import RemoteMachine

from agent.config import Config, parse_config
from agent.demo.receiver import Receiver
from agent.model import StoredEvent, Transition
from agent.pipeline.supervisor import Agent

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the fake services live with the tests
from tests.fake_services import FakeNtfy, FakePagerDuty, Scripted

ROUTING_KEY = "R0UT1NGKEY0123456789abcdefABCDEF"
GAP = (1.5, 3.0)  # the next change comes this many poll intervals after the previous event's commit


@dataclass
class Run:
    """One run's record: commit times by seq, and what each sink received (with receipt times)."""

    name: str
    commits: dict[int, tuple[float, str]] = field(default_factory=dict)  # seq -> (monotonic, type)
    http: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    started: float = 0.0  # monotonic start of the toggling
    toggling: float = 0.0  # seconds the toggling took
    drained: float = 0.0  # seconds from the last commit until every sink had everything


def config(port: int, state_dir: Path, receiver: Receiver, ntfy: FakeNtfy, pd: FakePagerDuty, poll_ms: float) -> Config:
    sink = {"timeout": "5s", "retry_max": "2s"}
    return parse_config(
        {
            "agent": {"gateway_id": "bench", "site": "bench", "state_dir": str(state_dir)},
            "machines": [
                {
                    "id": "m1",
                    "protocol": "modbus",
                    "host": "127.0.0.1",
                    "port": port,
                    "poll_interval": f"{poll_ms:g}ms",
                    "offline_after": "10s",
                    "signals": [{"id": "fault", "register": "holding", "address": 10, "type": "bit", "bit": 3}],
                }
            ],
            "rules": [
                {"id": "fault", "machine": "m1", "signal": "fault", "kind": "fault", "severity": "critical"}
                | {"chatter_count": 0}  # toggled on purpose
            ],
            "alerts": {"flood_count": 0},
            "status": {"listen": None},
            "sinks": [
                {"id": "up", "kind": "http", "url": receiver.url} | sink,
                {"id": "phones", "kind": "ntfy", "url": ntfy.url, "topic": "bench", "min_severity": "warning"} | sink,
                {
                    "id": "oncall",
                    "kind": "pagerduty",
                    "url": pd.url,
                    "routing_key_env": "BENCH_PD_ROUTING_KEY",
                    "min_severity": "critical",
                }
                | sink,
            ],
        },
        "<bench>",
    )


async def run_once(name: str, args: argparse.Namespace, state_dir: Path, rng: random.Random) -> tuple[Run, Any]:
    """Toggle the fault, wait until every sink has every event; returns the run and the fakes."""
    run = Run(name)
    committed = asyncio.Event()

    def observe(t: Transition, e: StoredEvent) -> None:
        run.commits[e.seq] = (time.monotonic(), f"andon.alert.{t.kind.value}")
        committed.set()

    def on_event(event: dict[str, Any]) -> None:
        run.http.append((time.monotonic(), event))

    ntfy, pd = FakeNtfy(burst=10**9, refill=1.0), FakePagerDuty()
    sim = RemoteMachine()
    await sim.start()
    try:
        async with Receiver(on_event=on_event) as receiver:
            await ntfy.start()
            await pd.start()
            try:
                await toggle(run, args, state_dir, rng, (sim, receiver, ntfy, pd), observe, committed)
            finally:
                await ntfy.stop()
                await pd.stop()
    finally:
        await sim.stop()
    return run, (ntfy, pd)


async def toggle(
    run: Run,
    args: argparse.Namespace,
    state_dir: Path,
    rng: random.Random,
    parts: tuple[RemoteMachine, Receiver, FakeNtfy, FakePagerDuty],
    observe: Any,
    committed: asyncio.Event,
) -> None:
    sim, receiver, ntfy, pd = parts
    poll = args.poll_ms / 1000
    agent = Agent(config(sim.port, state_dir, receiver, ntfy, pd, args.poll_ms), observers=[observe])
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop), name="agent")
    try:
        await first_read(agent, task, 10)
        started = run.started = time.monotonic()
        if run.name == "failing":
            pd.script = lambda body: (
                Scripted(503, {"status": "unavailable"}) if time.monotonic() < (started + args.outage) else None
            )
        for k in range(2 * args.toggles):
            committed.clear()
            await sim.set_fault(k % 2 == 0)
            async with asyncio.timeout(10):
                while len(run.commits) < k + 1:
                    await committed.wait()
                    committed.clear()
            await asyncio.sleep(rng.uniform(*GAP) * poll)
        run.toggling = time.monotonic() - started
        n = 2 * args.toggles
        last = max(c for c, _ in run.commits.values())
        await receiver.wait_for(lambda ev: len(ev) >= n, within=600)
        await ntfy.wait_for(lambda: len(ntfy.accepted) >= n, within=600)
        await pd.wait_for(lambda: len(pd.accepted) >= n, within=600)
        run.drained = time.monotonic() - last
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


def check(run: Run, ntfy: FakeNtfy, pd: FakePagerDuty) -> list[str]:
    """Every sink got every event it routes, once, in seq order; returns the problems found."""
    seqs = sorted(run.commits)
    types = [run.commits[s][1] for s in seqs]
    problems = []
    got = [int(e["data"]["seq"]) for _, e in run.http]
    if got != seqs:
        problems.append(f"http: {len(got)} events, {len(set(got))} distinct, in order: {got == sorted(got)}")
    want_titles = ["m1: fault critical" if t.endswith("raised") else "m1: fault cleared" for t in types]
    if [m["title"] for m in ntfy.messages] != want_titles:
        problems.append(f"ntfy: {len(ntfy.messages)} messages, not one per event in order")
    actions = [e["event_action"] for e in pd.events]
    want_actions = ["trigger" if t.endswith("raised") else "resolve" for t in types]
    triggers = [int(e["payload"]["custom_details"]["seq"]) for e in pd.events if e["event_action"] == "trigger"]
    if actions != want_actions or triggers != [s for s, t in zip(seqs, types, strict=True) if t.endswith("raised")]:
        problems.append(f"pagerduty: {len(actions)} events, not one per event in order")
    return problems


def latencies(run: Run, ntfy: FakeNtfy) -> dict[str, list[float]]:
    """Commit -> receipt in ms, per fast sink (ntfy's messages are matched to the events in order)."""
    seqs = sorted(run.commits)
    http = [(at - run.commits[int(e["data"]["seq"])][0]) * 1000 for at, e in run.http]
    phones = [(r.at - run.commits[s][0]) * 1000 for r, s in zip(ntfy.accepted, seqs, strict=False)]
    return {"http": http, "ntfy": phones}


def phases(run: Run, pd: FakePagerDuty, outage: float, http: list[float]) -> dict[str, list[float]]:
    """The http latencies by when the event was committed: during PagerDuty's outage, while it
    catches up (until it has the first event committed after the outage), and after."""
    seqs = sorted(run.commits)
    end = run.started + outage
    first_after = next((i for i, s in enumerate(seqs) if run.commits[s][0] >= end), len(seqs))
    # PagerDuty got every event once and in order (see check), so its n-th request is the n-th event
    caught_up = pd.accepted[first_after].at if first_after < len(pd.accepted) else end
    out: dict[str, list[float]] = {"during the outage": [], "while it catches up": [], "after": []}
    for (_, e), ms in zip(run.http, http, strict=True):
        committed = run.commits[int(e["data"]["seq"])][0]
        key = "during the outage" if committed < end else "while it catches up" if committed < caught_up else "after"
        out[key].append(ms)
    return out


def row(name: str, values: list[float]) -> str:
    figures = (statistics.median(values), pct(values, 90), pct(values, 99), max(values))
    return f"{name:<24}" + "".join(f"{v:9.1f}" for v in figures)


async def main_async(args: argparse.Namespace) -> int:
    os.environ["BENCH_PD_ROUTING_KEY"] = ROUTING_KEY
    rng = random.Random(args.seed)
    failures = 0
    order = ["failing", "healthy"]
    for r in range(args.rounds):
        for name in order if r % 2 == 0 else order[::-1]:
            with tempfile.TemporaryDirectory(prefix="andon-bench-", dir=args.state_dir) as tmp:
                run, (ntfy, pd) = await run_once(name, args, Path(tmp), rng)
            problems = check(run, ntfy, pd)
            failures += bool(problems)
            lat = latencies(run, ntfy)
            print(
                f"round {r + 1}, {name}: {len(run.commits)} events in {run.toggling:.0f} s, "
                f"all sinks had everything {run.drained:.1f} s after the last commit; "
                f"PagerDuty answered {pd.answers.count(503)} x 503, {pd.answers.count(202)} x 202; "
                f"load average {os.getloadavg()[0]:.2f}"
            )
            print(f"{'commit -> receipt (ms)':<24}{'median':>9}{'p90':>9}{'p99':>9}{'max':>9}")
            for sink, values in lat.items():
                print(row(f"  {sink}", values))
            for phase, values in phases(run, pd, args.outage, lat["http"]).items():
                if len(values) > 1:
                    print(row(f"  http {phase}", values) + f"  ({len(values)} events)")
            print(
                "  delivery: " + ("every sink got every event once, in order" if not problems else "; ".join(problems))
            )
            print()
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--toggles", type=int, default=1000, help="fault toggles per run (default 1000)")
    parser.add_argument("--outage", type=float, default=60.0, help="PagerDuty's 503 spell in s (default 60)")
    parser.add_argument("--poll-ms", type=float, default=50.0, help="the machine's poll_interval in ms (default 50)")
    parser.add_argument("--rounds", type=int, default=1, help="failing/healthy pairs, alternating (default 1)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the random spacing (default 1)")
    parser.add_argument("--state-dir", type=Path, default=None, help="make the outboxes' temp dirs under this")
    args = parser.parse_args(argv)
    if args.toggles < 1 or args.rounds < 1 or args.poll_ms <= 0 or args.outage < 0:
        parser.error("--toggles and --rounds must be >= 1, --poll-ms > 0, --outage >= 0")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
