"""``andon-agent report`` over 90 days of simulated history: how long the report takes.

    .venv/bin/python bench/report_history.py                      # 90 days, 4 machines, then time the report
    .venv/bin/python bench/report_history.py --days 90 --machines 6 --keep /tmp/andon-history   # keep the files

The generator fills an outbox file the way the agent does: the real usage fold and alert log
(:class:`agent.pipeline.alertlog.AlertLog` with :class:`agent.pipeline.usagelog.UsageLog`) commit
each machine's simulated days, ending now: tools wearing out and changed (three tools per machine,
``tool_life`` rules, most changed near the end of their life after a warning, some early, some
failing before any warning), fault codes (a ``code`` rule with four codes, a few a day, minutes
each), offline spells (about one every two days), and the agent itself down now and then (a
restart every ten days or so: the time in between is not watched). Clock marks every hour close
the periods, so the summaries are committed as the running agent commits them. (The generator turns
the file's fsync off while filling it; the agent never does.)

Then it measures what a user waits for: ``usage_report`` (the query the command and the board use)
over ``--days``, and the whole command (``andon-agent report --config ... --days N``, a new Python
process, with and without ``--json``), each the best and the median of ``--repeat`` runs. Budget:
the command under 1 s. Exit status 0 when it passes.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.config import UsageSection  # noqa: E402
from agent.model import Severity, Transition, TransitionKind  # noqa: E402
from agent.pipeline.alertlog import AlertLog  # noqa: E402
from agent.pipeline.outbox import AsyncOutbox, Outbox  # noqa: E402
from agent.pipeline.usage import DAY, ToolChanged  # noqa: E402
from agent.pipeline.usagelog import UsageLog  # noqa: E402
from agent.pipeline.usagereport import usage_report  # noqa: E402

BUDGET = 1.0  # seconds for the command
H = 3600.0
TOOLS = {"tool1-life": ("tool 1", 50_000.0), "tool2-life": ("tool 2", 20_000.0), "tool3-life": ("drill 3", 8_000.0)}
CODES = {12: "Spindle overload", 31: "Coolant low", 47: "Door opened while running", 58: "Air pressure low"}
R, C = TransitionKind.RAISED, TransitionKind.CLEARED


@dataclass(frozen=True)
class Step:
    """Something that happens at ``time``: an alert's transition, a tool change, the clock, a restart."""

    time: float
    machine: str = ""
    rule: str = ""
    change: TransitionKind | None = None  # an alert transition
    extra: dict[str, object] = field(default_factory=dict)
    used: float | None = None  # a tool change: the life used ...
    limit: float | None = None  # ... of this life
    down: float | None = None  # a restart: the agent is down this long
    clock: bool = False


def tr(machine: str, rule: str, change: TransitionKind, t: float, extra: dict[str, object]) -> Transition:
    return Transition(
        machine, rule, None, change, Severity.WARNING, 0, None, f"{machine}/{rule} {change.value}", t, extra
    )


def machine_life(rng: random.Random, m: str, start: float, end: float) -> list[Step]:
    """One machine's simulated days, unordered."""
    steps: list[Step] = []
    for rule, (_, life) in TOOLS.items():
        t = start + rng.uniform(0, 8 * H)
        while t < end:
            fraction = min(1.0, max(0.3, rng.gauss(0.9, 0.1)))
            change = t + rng.uniform(4, 14) * H * fraction
            if fraction > 0.8 and rng.random() < 0.9:  # warned before the change
                steps += [Step(change - rng.uniform(0.2, 1.5) * H, m, rule, R), Step(change + 1, m, rule, C)]
            steps.append(Step(change, m, rule, used=fraction * life, limit=life))
            t = change
    t = start
    while True:
        t += rng.expovariate(5 / DAY)  # about five faults a day
        if t >= end:
            break
        code = rng.choices(list(CODES), weights=[5, 3, 1, 1])[0]
        extra: dict[str, object] = {"kind": "code", "code": code, "code_text": CODES[code]}
        steps += [Step(t, m, "fault-code", R, extra), Step(t + rng.expovariate(1 / 300), m, "fault-code", C)]
    t = start
    while True:
        t += rng.expovariate(1 / (2 * DAY))  # an offline spell every two days
        if t >= end:
            break
        steps += [Step(t, m, "offline", R), Step(t + rng.uniform(120, 3600), m, "offline", C)]
    return steps


async def fill(path: Path, machines: list[str], days: float, seed: int) -> int:
    """Fill the outbox at ``path`` with ``days`` of history ending now; the number of commits."""
    rng = random.Random(seed)
    end = time.time()
    start = end - days * DAY
    config = {m: {rule: "counter" for rule in TOOLS} for m in machines}
    steps = [step for m in machines for step in machine_life(rng, m, start, end)]
    steps += [Step(start + rng.uniform(0, days) * DAY, down=rng.uniform(60, 1800)) for _ in range(int(days / 10))]
    steps += [Step(start + k * H, clock=True) for k in range(1, int(days * 24))]
    steps.sort(key=lambda s: s.time)
    async with AsyncOutbox(Outbox(path, max_events=1_000_000, max_bytes=2**30)) as ob:
        ob.sync.db.execute("PRAGMA synchronous=OFF")  # the generator only: fill fast
        await ob.call(ob.sync.set_sinks, ["upstream"])
        commits = 0
        log = await _start(ob, config, start)
        down_until = 0.0
        for s in steps:
            if s.time < down_until:
                continue  # the agent is down: nothing is observed
            if s.down is not None:
                down_until = s.time + s.down
                log = await _start(ob, config, down_until)
            elif s.clock:
                await _clock(log, s.time)
            elif s.change is None:
                change = ToolChanged(s.time, s.rule, TOOLS[s.rule][0], s.used, s.limit)
                await log.commit([], tools=[(s.machine, change)])
            elif (f"{s.machine}/{s.rule}" in log.active) != (s.change is C):
                continue  # a clear of an alert that was not raised (it fell into a restart)
            else:
                await log.commit([tr(s.machine, s.rule, s.change, s.time, s.extra)])
            commits += 1
        await _clock(log, end)
        await ob.call(ob.sync.settle, "upstream", ob.sync.last_seq())  # delivered: the queue is empty
    return commits


async def _clock(log: AlertLog, t: float) -> None:
    """The agent's usage clock at ``t``."""
    active = list(log.active)
    await log.commit_usage(lambda u: u.seen(t, active))


async def _start(ob: AsyncOutbox, config: dict[str, dict[str, str]], now: float) -> AlertLog:
    """What the agent does at start: load the alert log and the fold, watch the machines."""
    log = AlertLog(ob, gateway="bench", site=None, usage=UsageLog(UsageSection(), config))
    await log.load()
    assert log.usage is not None
    log.usage.configure(config)
    await log.commit_usage(lambda u: u.seen(now, list(log.active)))
    return log


def timed(fn: object, repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()  # type: ignore[operator]
        out.append(time.perf_counter() - t0)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--days", type=float, default=90.0)
    p.add_argument("--machines", type=int, default=4)
    p.add_argument("--seed", type=int, default=16)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--keep", type=Path, help="generate into this directory and keep it (default: a temporary one)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="andon-history-") as tmp:
        base = args.keep or Path(tmp)
        state = base / "state"
        state.mkdir(parents=True, exist_ok=True)
        db = state / "outbox.db"
        db.unlink(missing_ok=True)
        machines = [f"press-{i + 1}" for i in range(args.machines)]
        t0 = time.perf_counter()
        commits = asyncio.run(fill(db, machines, args.days, args.seed))
        took = time.perf_counter() - t0
        print(f"generated          {args.days:g} days, {len(machines)} machines, {commits} commits in {took:.1f} s")
        print(f"outbox file        {db.stat().st_size / 2**20:.1f} MB  {db}")
        config = base / "andon.toml"
        config.write_text(_config(state, machines))
        since = time.time() - args.days * DAY
        api = timed(lambda: usage_report(db, since), args.repeat)
        report = usage_report(db, since)
        changes = sum(t["count"] for m in report.values() for t in m["tool_changes"].values())
        faults = sum(c["count"] for m in report.values() for c in m["codes"].values())
        print(f"history            {changes} tool changes, {faults} faults, {len(report)} machines")
        command = [sys.executable, "-m", "agent", "report", "--config", str(config), "--days", f"{args.days:g}"]
        cli = timed(lambda: subprocess.run(command, check=True, capture_output=True), args.repeat)
        cli_json = timed(lambda: subprocess.run([*command, "--json"], check=True, capture_output=True), args.repeat)
        for name, runs in (("usage_report()", api), ("report command", cli), ("report --json", cli_json)):
            best, median = min(runs) * 1000, statistics.median(runs) * 1000
            print(f"{name:<18} best {best:.0f} ms, median {median:.0f} ms ({args.repeat} runs)")
        ok = max(statistics.median(cli), statistics.median(cli_json)) < BUDGET
        print(f"{'PASS' if ok else 'FAIL'}  report over {args.days:g} days < {BUDGET:g} s")
        if args.keep:
            print(f"try it:            .venv/bin/andon-agent report --config {config} --days 7")
    return 0 if ok else 1


def _config(state: Path, machines: list[str]) -> str:
    out = f'[agent]\ngateway_id = "bench"\nstate_dir = "{state}"\n\n'
    for m in machines:
        out += f'[[machines]]\nid = "{m}"\nprotocol = "modbus"\nhost = "127.0.0.1"\n'
        out += '[[machines.signals]]\nid = "counter"\naddress = 0\n\n'
    return out


if __name__ == "__main__":
    raise SystemExit(main())
