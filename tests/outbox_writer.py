"""Helper for the kill-mid-write test: append events to an outbox until killed.

Run as ``python -m tests.outbox_writer <outbox file> <seed>``. It prints ``start <last_seq>`` once
the outbox is open, then every ``seq`` of a batch on its own line, but only after
:meth:`Outbox.append` has returned (the batch is committed and synced). Each batch also stores
the alert ``last`` = ``{"seq": <the batch's last seq>}`` in the same transaction, so the test can
check that events and alert state were committed together.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

from agent.model import Severity, StoredEvent
from agent.outbox import Outbox


def main(argv: list[str]) -> None:
    path, seed = Path(argv[1]), int(argv[2])
    rng = random.Random(seed)
    outbox = Outbox(path, max_events=10**9)
    outbox.open()
    outbox.set_sinks(["s"])
    seq = outbox.last_seq()
    print(f"start {seq}", flush=True)
    while True:
        events = []
        for _ in range(rng.randint(1, 8)):
            seq += 1
            body = json.dumps({"id": f"e{seq}", "data": {"seq": seq, "pad": "x" * rng.randint(0, 3000)}})
            events.append(StoredEvent(seq, f"e{seq}", Severity(rng.randint(1, 3)), body.encode()))
        outbox.append(events, {"last": {"seq": seq}})
        sys.stdout.write("".join(f"{e.seq}\n" for e in events))
        sys.stdout.flush()


if __name__ == "__main__":
    main(sys.argv)
