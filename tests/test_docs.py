"""The documentation says what the code does: the benchmark list, the README's copy-paste configs."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from agent.config import load_config, parse_config
from agent.config.rules import ThresholdRule
from agent.model import Quality, Sample
from agent.pipeline.alertlog import cloudevent
from agent.rules import RuleState, evaluate
from agent.sinks.ntfy import ntfy_message

ROOT = Path(__file__).resolve().parent.parent


def _first_table(text: str) -> list[str]:
    """The rows of the first Markdown table in ``text`` (a table ends at the first line that is not a row)."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append(line)
    return rows[2:]  # without the header and its rule


def test_every_benchmark_is_a_row_of_the_one_table_in_bench_readme() -> None:
    rows = _first_table((ROOT / "bench" / "README.md").read_text())
    listed = {m.group(1): row for row in rows if (m := re.match(r"\| `(\w+\.py)` \|", row))}
    scripts = {p.name for p in (ROOT / "bench").glob("*.py") if p.name != "common.py"}
    assert sorted(listed) == sorted(scripts)  # one table: a blank line would cut the rows after it off
    for name, row in listed.items():
        assert f"bench/{name}" in row.rsplit("|", 2)[1], f"{name}: the row's last column gives its command"


# -- what the technician sees: the README's ntfy table is what the example config sends ---------


def _example_events() -> list[dict[str, Any]]:
    """The example config's tool1-wear rule through the README's story: 81.3 %, 96.2 %, acknowledged, 3.1 %."""
    cfg = load_config(ROOT / "config" / "example.toml")
    rule = next(r for r in cfg.rules if r.id == "tool1-wear")
    assert isinstance(rule, ThresholdRule)
    signal = next(s for m in cfg.machines if m.id == "press-1" for s in m.signals if s.id == "tool1_wear")
    unit = getattr(signal, "unit", None) or ""
    state, now = RuleState(), 1_795_000_000.0
    docs: list[dict[str, Any]] = []
    for value, wait in ((81.3, 0.0), (81.3, 3.0), (96.2, 1.0), (96.2, 3.0), (3.1, 1.0), (3.1, 11.0)):
        now += wait
        state, transitions = evaluate(rule, state, Sample("press-1", "tool1_wear", value, Quality.GOOD, now), now, unit)
        docs += [cloudevent(t, seq=len(docs) + 1, event_id="x", gateway="gw", site=None) for t in transitions]
    assert [d["type"] for d in docs] == [f"andon.alert.{t}" for t in ("raised", "updated", "cleared")]
    ack = {**docs[1], "type": "andon.alert.acknowledged"}
    ack["data"] = {**docs[1]["data"], "by": "Anna", "note": "on my way"}
    return [docs[0], docs[1], ack, docs[2]]


def _section(text: str, heading: str) -> str:
    """From the heading that starts with ``heading`` to the next heading (lines in code blocks are not headings)."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(heading))
    fenced, end = False, len(lines)
    for i in range(start + 1, len(lines)):
        fenced ^= lines[i].startswith("```")
        if not fenced and lines[i].startswith("#"):
            end = i
            break
    return "\n".join(lines[start:end])


def test_the_readme_shows_exactly_what_the_phone_gets_from_the_example_config() -> None:
    ntfy = _section((ROOT / "README.md").read_text(), "### `ntfy`")
    rows = [[cell.strip() for cell in row.strip("|").split("|")] for row in _first_table(ntfy)]
    assert [r[0] for r in rows] == ["raised (warning)", "updated (critical)", "acknowledged", "cleared"]
    for row, doc in zip(rows, _example_events(), strict=True):
        body = ntfy_message(doc, topic="t", click=None)
        first_line = body["message"].split("\n")[0]
        assert row[1] == f"`{body['title']}`"
        assert row[2].startswith(f"`{first_line}`"), (row[2], first_line)
        assert row[3].startswith(f"{body['priority']} ")
        assert row[4] == ", ".join(f"`{tag}`" for tag in body["tags"])


def test_the_pagerduty_summary_example_is_the_example_configs_critical_message() -> None:
    pagerduty = _section((ROOT / "README.md").read_text(), "### `pagerduty`")
    critical = _example_events()[1]["data"]["message"]
    assert f"| `summary` | the event's `data.message`, at most 1,024 characters | `{critical}` |" in pagerduty


# -- the README's configs are configs ---------------------------------------------------------

_MACHINES = [
    {
        "id": machine,
        "protocol": "modbus",
        "host": "127.0.0.1",
        "signals": [{"id": "tool1_wear", "register": "holding", "address": 100, "type": "uint16"}],
    }
    for machine in ("press-1", "press-2")
]


def _toml_blocks(section: str) -> list[dict[str, Any]]:
    return [tomllib.loads(b) for b in re.findall(r"```toml\n(.*?)```", section, re.S)]


def test_the_readmes_configuration_example_passes_check() -> None:
    (example,) = _toml_blocks(_section((ROOT / "README.md").read_text(), "## Configuration"))
    cfg = parse_config(example, "README")
    assert [s.id for s in cfg.machines[0].signals] == ["tool1_wear", "spindle_fault"]


@pytest.mark.parametrize("heading", ["## Routing", "### `ntfy`", "### `pagerduty`", "## MQTT"])
def test_the_readmes_sink_configs_paste_into_a_config(heading: str) -> None:
    blocks = _toml_blocks(_section((ROOT / "README.md").read_text(), heading))
    assert blocks, heading
    for block in blocks:
        doc: dict[str, Any] = {"agent": {"gateway_id": "gw-press-line"}, "machines": _MACHINES}
        doc |= {
            key: {**doc.get(key, {}), **value} if isinstance(value, dict) else value for key, value in block.items()
        }
        cfg = parse_config(doc, f"README {heading}")
        assert [s.id for s in cfg.sinks] == [s["id"] for s in block["sinks"]]


# -- docs/architecture.md names every module's one job ------------------------------------------


def test_the_architecture_table_lists_every_module_and_only_modules_that_exist() -> None:
    table = _section((ROOT / "docs" / "architecture.md").read_text(), "## Modules and their one job")
    prefix, listed = "", set()
    for row in _first_table(table):
        first = row.split("|")[1].strip()
        if heading := re.fullmatch(r"\*\*`([\w/]+/)`\*\*", first):
            prefix = heading.group(1)  # the rows below it name modules of that package
            continue
        for name in re.findall(r"`([\w/.]+\.py)`", first):
            listed.add(name if name.startswith(("agent/", "drivers/")) else prefix + name)
    modules = {
        str(p.relative_to(ROOT))
        for package in ("agent", "drivers")
        for p in (ROOT / package).rglob("*.py")
        if p.name not in ("__init__.py", "__main__.py")
    }
    assert sorted(modules - listed) == []  # a module without its line
    assert sorted(p for p in listed if not (ROOT / p).is_file()) == []  # a line for a module that is gone
