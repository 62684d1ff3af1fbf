"""``andon-agent send-test [--sink ID]``: one ``andon.test`` event through the outbox; each sink's verdict.

How it never fights a running agent for the outbox: the state directory's lock
(:mod:`agent.pipeline.statelock`) says whether an agent runs on it.

* An agent runs (the lock is taken): the command asks it on its control socket
  (``<state_dir>/control.sock``, :mod:`agent.ops.control`); the agent commits the event through its
  own alert log and outbox, and its own deliveries send it; it answers with each sink's verdict.
* No agent runs: the command takes the lock itself (an agent starting meanwhile waits for it), opens
  the outbox, commits the event and runs the sinks' deliveries (the agent's own code) until each has
  settled the event or its time is up. Events that were waiting go out first, in ``seq`` order.

Either way the event is a real event with the next ``seq``: one a sink did not take in time stays in
the outbox and goes out later. Exit status: 0 every sink accepted it; 1 one did not (or the agent
did not answer); 2 invalid config (or an unknown ``--sink``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from typing import Any

from agent.cli.common import EXIT_FATAL, EXIT_OK, add_config_option, config_error, read_config
from agent.config import Config
from agent.errors import ConfigError, OutboxError

ANSWER_MARGIN = 10.0  # seconds the command waits for the running agent beyond the longest sink's time


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        "send-test", help="send one andon.test event through the outbox and show whether each sink accepted it"
    )
    add_config_option(p)
    p.add_argument("--sink", help="only this sink (default: every sink)")
    p.add_argument(
        "--timeout",
        type=float,
        help="seconds to wait for each sink (default: twice the sink's timeout plus 5 s)",
    )
    return p


def run(args: argparse.Namespace) -> int:
    from agent.pipeline.sendtest import SinkVerdict, targets, timeout_for

    try:
        _, cfg = read_config(args)
        chosen = targets([s.id for s in cfg.sinks], args.sink)
    except ConfigError as exc:
        return config_error(exc)
    except KeyError:
        known = ", ".join(s.id for s in cfg.sinks) or "none"
        return config_error(ConfigError(f"--sink {args.sink}: no sink with that id (sinks: {known})"))
    if not chosen:
        print("andon-agent: no sinks in the config: nothing to test", file=sys.stderr)
        return EXIT_FATAL
    by_id = {s.id: s for s in cfg.sinks}
    timeouts = {sink: args.timeout or timeout_for(by_id[sink].timeout) for sink in chosen}
    try:
        verdicts: list[SinkVerdict] = asyncio.run(_send(cfg, timeouts))
    except ConfigError as exc:  # a secret run would need cannot be read
        return config_error(exc)
    except (OSError, OutboxError, _NoAnswer) as exc:
        print(f"andon-agent: send-test: {exc}", file=sys.stderr)
        return EXIT_FATAL
    for v in verdicts:
        print(f"sink {v.sink}: {v.detail}")
    return EXIT_OK if all(v.accepted for v in verdicts) else EXIT_FATAL


class _NoAnswer(Exception):
    """The running agent did not answer on its control socket."""


async def _send(cfg: Config, timeouts: dict[str, float]) -> list[Any]:
    from agent.pipeline.statelock import StateLock

    lock = StateLock(cfg.agent.state_dir, "send-test")
    if lock.try_acquire():
        with lock:
            print(f"no agent runs on {cfg.agent.state_dir}: delivering the test event myself", flush=True)
            return await _deliver_myself(cfg, timeouts)
    print(f"asking the running agent ({lock.holder()}) to send the test event", flush=True)
    return await _ask_agent(cfg, timeouts, lock.holder())


async def _ask_agent(cfg: Config, timeouts: dict[str, float], holder: str) -> list[Any]:
    from agent.ops.control import SOCKET, ask
    from agent.pipeline.sendtest import SinkVerdict

    path = cfg.agent.state_dir / SOCKET
    request = {"command": "send-test", "timeouts": timeouts}
    try:
        answer = await ask(path, request, within=max(timeouts.values()) + ANSWER_MARGIN)
    except TimeoutError:
        raise _NoAnswer(f"the running agent ({holder}) did not answer on {path} in time") from None
    except OSError as exc:
        raise _NoAnswer(f"the running agent ({holder}) does not answer on {path}: {exc.strerror or exc}") from None
    if "error" in answer:
        raise _NoAnswer(f"the running agent ({holder}) answered: {answer['error']}")
    return [SinkVerdict.from_json(v) for v in answer["verdicts"]]


async def _deliver_myself(cfg: Config, timeouts: dict[str, float]) -> list[Any]:
    """No agent runs: the outbox, the alert log and the chosen sinks' deliveries, for this one event."""
    from agent.pipeline.alertlog import AlertLog
    from agent.pipeline.outbox import AsyncOutbox, Outbox
    from agent.pipeline.sendtest import send_test
    from agent.pipeline.supervisor import make_delivery
    from agent.sinks.base import Origin
    from agent.sinks.registry import sink_plugin

    chosen = [(i, s) for i, s in enumerate(cfg.sinks) if s.id in timeouts]
    secrets = {s.id: sink_plugin(s.kind).secrets(s, i) for i, s in chosen}  # ConfigError before anything opens
    limits = cfg.outbox
    outbox = AsyncOutbox(
        Outbox(
            cfg.agent.state_dir / "outbox.db",
            max_events=limits.max_events,
            max_bytes=limits.max_bytes,
            max_dead_letters=limits.max_dead_letters,
        )
    )
    async with outbox, contextlib.AsyncExitStack() as stack, asyncio.TaskGroup() as tg:
        await outbox.call(outbox.sync.set_sinks, [s.id for s in cfg.sinks])
        deliveries = {}
        for _, s in chosen:
            origin = Origin(cfg.agent.gateway_id, cfg.agent.site)
            sink = await stack.enter_async_context(sink_plugin(s.kind).open(s, secrets[s.id], origin))
            deliveries[s.id] = make_delivery(cfg, s, sink, outbox, None)
        alerts = AlertLog(
            outbox,
            gateway=cfg.agent.gateway_id,
            site=cfg.agent.site,
            on_commit=[d.wake for d in deliveries.values()],
        )
        await alerts.load()
        tasks = [tg.create_task(d.run(), name=f"sink:{sink_id}") for sink_id, d in deliveries.items()]
        try:
            _, verdicts = await send_test(alerts, outbox, deliveries, timeouts, by=" without a running agent")
        finally:
            for d in deliveries.values():
                d.stop()
            _, late = await asyncio.wait(tasks, timeout=2.0)  # a batch in flight may finish
            for task in late:
                task.cancel()
    return verdicts
