"""``andon-agent report`` (tables are pure) and the ``[usage]`` section's checks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from agent.cli import main
from agent.cli.report import duration, render
from agent.config import parse_config
from agent.errors import ConfigError
from agent.pipeline.outbox import Outbox

REPORT: dict[str, dict[str, Any]] = {
    "press-1": {
        "machine": "press-1",
        "period_start": "2024-05-01T00:00:00.000Z",
        "period_end": "2024-05-08T10:12:30.000Z",
        "online_seconds": 576000.0,
        "offline_seconds": 7560.0,
        "unobserved_seconds": 20790.0,
        "alerts": {
            "offline": {"raised": 2, "active_seconds": 7560.0},
            "tool3-life": {"raised": 12, "active_seconds": 20400.0},
        },
        "codes": {
            "fault-code/12": {
                "rule": "fault-code",
                "code": 12,
                "count": 5,
                "active_seconds": 720.0,
                "text": "Spindle overload",
            },
            "fault-code/31": {"rule": "fault-code", "code": 31, "count": 1, "active_seconds": 30.0, "text": "x" * 60},
        },
        "tool_changes": {
            "tool3-life": {"tool": "tool 3", "count": 12, "mean_life_fraction": 0.8712, "min_life_fraction": 0.61},
            "drill": {"tool": "drill", "count": 1, "mean_life_fraction": None, "min_life_fraction": None},
        },
    }
}


def test_render_shows_tool_life_faults_alerts_and_time() -> None:
    assert render(REPORT, 7) == "\n".join(
        [
            "press-1: 2024-05-01 00:00 to 2024-05-08 10:12 UTC",
            "  online 6.7 d (98.7% of the watched time), offline 2.1 h, not watched 5.8 h",
            "",
            "  tool life achieved   changes  mean  least",
            "  tool 3 (tool3-life)       12   87%    61%",
            "  drill (drill)              1     -      -",
            "",
            "  faults by code  count  active  text",
            "  fault-code/12       5  12 min  Spindle overload",
            "  fault-code/31       1    30 s  " + "x" * 47 + "\u2026",
            "",
            "  alerts per rule  raised  active",
            "  tool3-life           12   5.7 h",
            "  offline               2   2.1 h",
        ]
    )


def test_render_without_history() -> None:
    assert render({}, 30).startswith("No usage history in the last 30 days")
    empty = REPORT["press-1"] | {
        "alerts": {},
        "codes": {},
        "tool_changes": {},
        "online_seconds": 0.0,
        "offline_seconds": 0.0,
    }
    text = render({"press-1": empty}, 1)
    assert "no tool changes" in text and "no fault codes" in text and "no alerts" in text
    assert "of the watched time" not in text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0 s"), (59.4, "59 s"), (60, "1 min"), (3599, "60 min"), (3600, "1.0 h"), (5 * 86400, "5.0 d")],
)
def test_duration(seconds: float, text: str) -> None:
    assert duration(seconds) == text


def test_report_without_an_outbox_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "andon.toml"
    path.write_text(
        f'[agent]\nstate_dir = "{tmp_path / "state"}"\n[[machines]]\nid = "m1"\nprotocol = "modbus"\nhost = "h"\n'
        '[[machines.signals]]\nid = "s"\naddress = 0\n'
    )
    assert main(["report", "--config", str(path)]) == 1
    assert "no outbox at" in capsys.readouterr().err
    assert main(["report", "--config", str(tmp_path / "missing.toml")]) == 2


@pytest.mark.parametrize(
    ("usage", "note"),
    [
        ("", None),
        ("enabled = false", "[usage] enabled = false: nothing is collected now; this is what was collected before."),
        ("send = false", "[usage] send = false: this is collected on the gateway and not sent."),
    ],
)
def test_report_says_when_usage_is_switched_off(
    usage: str, note: str | None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The customer's engineer reading `report` learns whether what it shows is being sent; the JSON
    stays one object (no note in it)."""
    state = tmp_path / "state"
    state.mkdir()
    outbox = Outbox(state / "outbox.db")
    outbox.open()  # the agent has run: its file is there (no history yet)
    outbox.close()
    path = tmp_path / "andon.toml"
    path.write_text(
        f'[agent]\nstate_dir = "{state}"\n[usage]\n{usage}\n[[machines]]\nid = "m1"\nprotocol = "modbus"\n'
        'host = "h"\n[[machines.signals]]\nid = "s"\naddress = 0\n'
    )
    assert main(["report", "--config", str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    if note is None:
        assert lines[0].startswith("No usage history in the last 30 days")
    else:
        assert lines[0] == note and lines[1].startswith("No usage history in the last 30 days")
    assert main(["report", "--config", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {}


def _cfg(**usage: Any) -> dict[str, Any]:
    return {
        "machines": [{"id": "m1", "protocol": "modbus", "host": "h", "signals": [{"id": "s", "address": 0}]}],
        "usage": usage,
    }


@pytest.mark.parametrize("every", ["1s", "2s", "1m", "1h", "8h", "24h", "2d", "7d", 3600])
def test_summary_every_must_fit_utc_midnight(every: Any) -> None:
    assert parse_config(_cfg(summary_every=every, keep="400d")).usage.summary_every > 0


@pytest.mark.parametrize(
    ("usage", "key"),
    [
        ({"summary_every": "7h"}, "usage.summary_every"),
        ({"summary_every": "1.5s"}, "usage.summary_every"),
        ({"summary_every": "36h"}, "usage.summary_every"),
        ({"summary_every": "0s"}, "usage.summary_every"),
        ({"keep": "1h"}, "usage.keep"),
        ({"send": "yes please"}, "usage.send"),
        ({"collect": False}, "usage.collect"),
    ],
)
def test_bad_usage_keys_are_named(usage: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        parse_config(_cfg(**usage))


def test_usage_defaults() -> None:
    u = parse_config(_cfg()).usage
    assert (u.enabled, u.send, u.summary_every, u.keep) == (True, True, 86400.0, 90 * 86400.0)
    assert json.loads(json.dumps(u.model_dump())) == {
        "enabled": True,
        "send": True,
        "summary_every": 86400.0,
        "keep": 7776000.0,
    }
