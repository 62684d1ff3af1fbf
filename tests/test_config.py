"""Config loading: the shipped files load, durations parse, and every bad config is named on one line."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import get_args

import pytest
from pydantic import BaseModel

from agent.config import (
    KIND_TEMPLATE_FIELDS,
    TEMPLATE_FIELDS,
    AgentSection,
    AlarmsRule,
    AlertsSection,
    CodeEntry,
    CodeRule,
    Config,
    FaultRule,
    ForecastRule,
    Lamp,
    LightConfig,
    OutboxSection,
    StaleRule,
    StatusSection,
    ThresholdRule,
    ToolLifeRule,
    UsageSection,
    load_config,
    parse_config,
    parse_duration,
)
from agent.config.base import KeyProblem, read_secret
from agent.errors import ConfigError
from agent.sinks.base import sink_secret
from agent.sinks.http import HttpSinkConfig
from agent.sinks.ntfy import NtfySinkConfig
from agent.sinks.pagerduty import PagerDutySinkConfig
from agent.sinks.registry import SINKS
from drivers.modbus.config import ModbusMachine, ModbusSignal
from drivers.opcua.config import OpcuaMachine, OpcuaSignal
from drivers.registry import PROTOCOLS

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "config" / "example.toml"
DEMO = ROOT / "config" / "demo.toml"


# --------------------------------------------------------------------------------------------
# The shipped config files


def test_example_loads() -> None:
    cfg = load_config(EXAMPLE)
    assert cfg.agent.gateway_id == "gw-press-line"
    assert cfg.agent.site == "plant-a"
    assert cfg.agent.state_dir == Path("/var/lib/andon-agent")
    assert [m.id for m in cfg.machines] == ["press-1", "lathe-1", "mill-2"]

    press = cfg.machine("press-1")
    assert isinstance(press, ModbusMachine)
    assert (press.host, press.port, press.serial, press.unit) == ("192.168.10.21", 502, None, 1)
    assert press.poll_interval == pytest.approx(0.5)
    assert press.offline_after == 5.0
    signals = {s.id: s for s in press.signals}
    wear = signals["tool1_wear"]
    assert (wear.table, wear.address, wear.type, wear.unit) == ("holding", 100, "uint16", "%")
    assert wear.scale == pytest.approx(0.1)
    load = signals["spindle_load"]
    assert (load.table, load.type, load.byte_order, load.offset) == ("input", "float32", "CDAB", -2.5)
    fault = signals["spindle_fault"]
    assert (fault.type, fault.bit) == ("bit", 3)
    assert (signals["program"].type, signals["program"].length) == ("string", 8)

    lathe = cfg.machine("lathe-1")
    assert isinstance(lathe, ModbusMachine)
    assert lathe.host is None
    assert (lathe.serial, lathe.baudrate, lathe.parity, lathe.stopbits, lathe.bytesize) == (
        "/dev/ttyUSB0",
        19200,
        "E",
        1,
        8,
    )
    assert lathe.unit == 3
    assert lathe.timeout == pytest.approx(0.5)
    assert {s.table for s in lathe.signals} == {"input", "discrete", "coil", "holding"}

    mill = cfg.machine("mill-2")
    assert isinstance(mill, OpcuaMachine)
    assert mill.endpoint == "opc.tcp://192.168.10.40:4840/"
    assert mill.signals[0].node == "ns=2;s=Mill.Tool1.Wear"
    assert (mill.reconnect_max, mill.offline_severity) == (60.0, "critical")

    rules = {r.id: r for r in cfg.rules}
    wear_rule = rules["tool1-wear"]
    assert isinstance(wear_rule, ThresholdRule)
    assert (wear_rule.warning, wear_rule.critical, wear_rule.deadband) == (80.0, 95.0, 1.0)
    assert (wear_rule.on_delay, wear_rule.off_delay, wear_rule.repeat_every) == (2.0, 10.0, 3600.0)
    assert wear_rule.message is not None and "{action}" in wear_rule.message
    fault_rule = rules["spindle-fault"]
    assert isinstance(fault_rule, FaultRule)
    assert (fault_rule.severity, fault_rule.repeat_every) == ("critical", 900.0)
    assert isinstance(rules["mill-alarm"], FaultRule) and rules["mill-alarm"].severity == "critical"
    assert {r.kind for r in cfg.rules} == {"threshold", "fault", "code", "tool_life", "forecast", "stale", "alarms"}
    alarms = rules["alarms"]
    assert isinstance(alarms, AlarmsRule)
    assert (alarms.machine, alarms.source, alarms.min_severity) == ("mill-2", "i=2253", 1)
    code = rules["mill-fault-code"]
    assert isinstance(code, CodeRule)
    assert (code.normal, code.severity, code.chatter_count, code.chatter_window) == ([0], "warning", 3, 60.0)
    assert code.codes[12].severity == "critical" and code.codes[31].severity is None
    life = rules["tool3-life"]
    assert isinstance(life, ToolLifeRule)
    assert (life.limit, life.warning_remaining, life.direction, life.name) == (50000, 5000, "up", "punch 3")
    due = rules["tool1-due"]
    assert isinstance(due, ForecastRule)
    assert (due.limit, due.horizon, due.window, due.min_points, due.min_r2) == (95.0, 1800.0, 600.0, 10, 0.7)
    assert due.change_drop is None and due.drop == pytest.approx(9.5)
    stale = rules["stroke-counter-frozen"]
    assert isinstance(stale, StaleRule)
    assert (stale.after, stale.tolerance, stale.only_while) == (300.0, 0.0, None)
    assert (cfg.alerts.flood_count, cfg.alerts.flood_window) == (10, 600.0)

    assert cfg.status.listen == "127.0.0.1:9108"
    assert (cfg.outbox.max_events, cfg.outbox.batch_size) == (100_000, 500)
    sink, phones, oncall = cfg.sinks
    assert isinstance(sink, HttpSinkConfig)
    assert (sink.id, sink.kind, sink.token_env, sink.token_file) == ("upstream", "http", "ANDON_TOKEN", None)
    assert sink.url.startswith("https://")
    assert (sink.timeout, sink.retry_max, sink.min_severity, sink.machines) == (10.0, 60.0, "info", None)
    assert isinstance(phones, NtfySinkConfig) and isinstance(oncall, PagerDutySinkConfig)
    assert (phones.topic, phones.min_severity, phones.token_env) == ("acme-service-plant-a", "warning", "NTFY_TOKEN")
    assert phones.click == "https://service.example.com/alerts/{alert}"
    assert (oncall.url, oncall.routing_key_env, oncall.min_severity) == (
        "https://events.pagerduty.com/v2/enqueue",
        "PD_ROUTING_KEY",
        "critical",
    )


# Every key of every section, by the name used in the file (the alias where there is one).
_MODELS: list[type[BaseModel]] = [
    Config,
    AgentSection,
    ModbusMachine,
    ModbusSignal,
    OpcuaMachine,
    OpcuaSignal,
    ThresholdRule,
    FaultRule,
    CodeRule,
    CodeEntry,
    ToolLifeRule,
    ForecastRule,
    StaleRule,
    AlertsSection,
    StatusSection,
    OutboxSection,
    UsageSection,
    HttpSinkConfig,
    LightConfig,
    Lamp,
    # and whatever the plugin lists add
    *(p.config for p in PROTOCOLS),
    *(signal for p in PROTOCOLS for signal in get_args(p.config.model_fields["signals"].annotation)),
    *(s.config for s in SINKS),
]
_ALL_KEYS = sorted({f.alias or name for model in _MODELS for name, f in model.model_fields.items()})


@pytest.mark.parametrize("key", _ALL_KEYS)
def test_example_documents_every_key(key: str) -> None:
    """Each key appears in example.toml, set or commented out (`# key = ...`), or as a table header."""
    text = EXAMPLE.read_text()
    pattern = rf"^\s*(#\s*)?{key}\s*=|^\s*\[\[?(\w+\.)?{key}\]\]?"
    assert re.search(pattern, text, re.MULTILINE), f"example.toml does not mention `{key}`"


def test_example_shows_every_rule_kind() -> None:
    text = EXAMPLE.read_text()
    for kind in ("threshold", "fault", "code", "tool_life", "forecast", "stale"):
        assert f'kind = "{kind}"' in text


def test_demo_loads() -> None:
    cfg = load_config(DEMO)
    assert cfg.agent.gateway_id == "demo-gateway"
    (press,) = cfg.machines
    assert isinstance(press, ModbusMachine)
    assert (press.id, press.host, press.port) == ("press-1", "127.0.0.1", 5020)
    assert press.poll_interval == pytest.approx(0.25)
    strokes = next(s for s in press.signals if s.id == "strokes")
    assert (strokes.type, strokes.byte_order) == ("uint32", "CDAB")
    assert [r.id for r in cfg.rules] == ["tool1-wear", "tool1-due", "spindle-fault"]
    assert isinstance(cfg.rules[2], FaultRule) and cfg.rules[2].severity == "critical"
    assert cfg.status.listen == "127.0.0.1:9108" and cfg.status.ack_token_env == "ANDON_DEMO_ACK_TOKEN"
    assert isinstance(cfg.sinks[0], HttpSinkConfig)
    assert cfg.sinks[0].url == "http://127.0.0.1:8080/alerts"


def test_defaults_are_the_documented_ones() -> None:
    cfg = parse_config(
        {
            "machines": [
                {"id": "m", "protocol": "modbus", "host": "h", "signals": [{"id": "s", "address": 0}]},
                {"id": "rtu", "protocol": "modbus", "serial": "/dev/ttyS0", "signals": [{"id": "s", "address": 0}]},
            ],
            "rules": [
                {"id": "f", "machine": "m", "signal": "s", "kind": "fault"},
                {"id": "t", "machine": "m", "signal": "s", "kind": "threshold", "critical": 1},
            ],
            "sinks": [{"id": "up", "kind": "http", "url": "http://127.0.0.1/"}],
        }
    )
    assert cfg.agent.state_dir == Path("/var/lib/andon-agent")
    assert cfg.agent.gateway_id  # the host name
    tcp, rtu = cfg.machines
    assert isinstance(tcp, ModbusMachine) and isinstance(rtu, ModbusMachine)
    assert (tcp.port, tcp.unit, tcp.max_gap, tcp.offline_severity) == (502, 1, 8, "warning")
    assert (tcp.poll_interval, tcp.offline_after, tcp.timeout, tcp.reconnect_max) == (1.0, 10.0, 1.0, 30.0)
    assert (rtu.baudrate, rtu.parity, rtu.stopbits, rtu.bytesize) == (19200, "N", 1, 8)
    sig = tcp.signals[0]
    assert (sig.table, sig.type, sig.byte_order, sig.scale, sig.offset, sig.unit) == (
        "holding",
        "uint16",
        "ABCD",
        1.0,
        0.0,
        "",
    )
    fault, threshold = cfg.rules
    assert isinstance(fault, FaultRule) and isinstance(threshold, ThresholdRule)
    assert (fault.severity, threshold.severity) == ("critical", "warning")
    assert (fault.on_delay, fault.off_delay, fault.repeat_every, fault.message) == (0.0, 0.0, None, None)
    assert (fault.name, fault.chatter_count, fault.chatter_window) == (None, 3, 60.0)
    assert (cfg.alerts.flood_count, cfg.alerts.flood_window) == (10, 600.0)
    assert cfg.status.listen == "127.0.0.1:9108"
    assert (cfg.outbox.max_events, cfg.outbox.batch_size) == (100_000, 500)
    assert isinstance(cfg.sinks[0], HttpSinkConfig)
    assert (cfg.sinks[0].timeout, cfg.sinks[0].retry_max, cfg.sinks[0].token_env) == (10.0, 60.0, None)


# --------------------------------------------------------------------------------------------
# Durations


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("250ms", 0.25),
        ("2s", 2.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("1d", 86400.0),
        ("1.5s", 1.5),
        ("0s", 0.0),
        ("10", 10.0),
        (3, 3.0),
        (0.5, 0.5),
        (0, 0.0),
    ],
)
def test_duration_parses(value: object, seconds: float) -> None:
    assert parse_duration(value) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "value", ["5x", "-1s", "", "s", "1e3s", "ms250", True, False, -1, -0.5, float("inf"), float("nan"), None, [1]]
)
def test_duration_rejects(value: object) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(value)


# --------------------------------------------------------------------------------------------
# Bad configs: one line naming the file, the key path and the problem

BASE = """\
{top}
[agent]
gateway_id = "gw-test"
{agent}

[[machines]]
id = "m1"
protocol = "modbus"
host = "127.0.0.1"
{machine}

  [[machines.signals]]
  id = "wear"
  address = 0
  {signal}

  [[machines.signals]]
  id = "fault"
  address = 10
  type = "bit"
  bit = 3

[[rules]]
id = "wear"
machine = "m1"
signal = "wear"
kind = "threshold"
warning = 80.0
{rule}

[[sinks]]
id = "up"
kind = "http"
url = "http://127.0.0.1:8080/alerts"
{sink}

{extra}
"""

OPCUA_M1 = """
[[machines]]
id = "m1"
protocol = "opcua"
endpoint = "opc.tcp://127.0.0.1:4840/"
  [[machines.signals]]
  id = "wear"
  node = "ns=2;s=Wear"
"""


@dataclass(frozen=True)
class Bad:
    name: str
    path: str  # the exact key path the error must name
    problem: str  # a regex the rest of the line must match
    parts: dict[str, str] = field(default_factory=dict)  # text put in BASE's {slots}
    replace: tuple[tuple[str, str], ...] = ()  # (old, new) edits of the formatted text, each must apply

    def text(self) -> str:
        slots = dict.fromkeys(("top", "agent", "machine", "signal", "rule", "sink", "extra"), "")
        slots.update(self.parts)
        text = BASE.format(**slots)
        for old, new in self.replace:
            assert text.count(old) == 1, f"{self.name}: {old!r} must occur once"
            text = text.replace(old, new)
        return text


BAD = [
    Bad("misspelt key", "machines[0].signals[0].adress", "unknown key", replace=(("address = 0", "adress = 0"),)),
    Bad("unknown top-level key", "verbose", "unknown key", {"top": "verbose = true"}),
    Bad("unknown key in [agent]", "agent.gatway_id", "unknown key", {"agent": 'gatway_id = "gw"'}),
    Bad("unknown key in a rule", "rules[0].criticial", "unknown key", {"rule": "criticial = 95"}),
    Bad("unknown key in a sink", "sinks[0].tokn_env", "unknown key", {"sink": 'tokn_env = "X"'}),
    Bad("status listen without a port", "status.listen", 'not "host:port"', {"extra": '[status]\nlisten = "9108"'}),
    Bad("wrong type name", "machines[0].signals[0].type", r"'uint16'.*got 'uint17'", {"signal": 'type = "uint17"'}),
    Bad(
        "missing address",
        "machines[0].signals[0].address",
        "required key is missing",
        replace=(("  address = 0\n", ""),),
    ),
    Bad(
        "rule names no signal",
        "rules[0].signal",
        "machine 'm1' has no signal 'waer'",
        replace=(('signal = "wear"', 'signal = "waer"'),),
    ),
    Bad(
        "rule names no machine",
        "rules[0].machine",
        "no machine with id 'm2'",
        replace=(('machine = "m1"', 'machine = "m2"'),),
    ),
    Bad("bad duration", "machines[0].poll_interval", "not a duration: '5x'", {"machine": 'poll_interval = "5x"'}),
    Bad("negative duration", "rules[0].on_delay", "not a duration: '-1s'", {"rule": 'on_delay = "-1s"'}),
    Bad("zero interval", "machines[0].poll_interval", "greater than 0", {"machine": 'poll_interval = "0s"'}),
    Bad("bit type without bit", "machines[0].signals[0].bit", r'type = "bit" needs `bit`', {"signal": 'type = "bit"'}),
    Bad(
        "bit on a non-bit type", "machines[0].signals[0].bit", r'`bit` is only for type = "bit"', {"signal": "bit = 3"}
    ),
    Bad(
        "bit out of range", "machines[0].signals[1].bit", "less than or equal to 15", replace=(("bit = 3", "bit = 16"),)
    ),
    Bad(
        "coil with a non-bool type",
        "machines[0].signals[0].type",
        r'coil signal must have type = "bool"',
        {"signal": 'register = "coil"\n  type = "uint16"'},
    ),
    Bad(
        "discrete with a non-bool type",
        "machines[0].signals[0].type",
        r'discrete signal must have type = "bool"',
        {"signal": 'register = "discrete"\n  type = "float32"'},
    ),
    Bad(
        "unknown register table",
        "machines[0].signals[0].register",
        "got 'holdings'",
        {"signal": 'register = "holdings"'},
    ),
    Bad("unknown byte order", "machines[0].signals[0].byte_order", "got 'ABDC'", {"signal": 'byte_order = "ABDC"'}),
    Bad("duplicate machine id", "machines[1].id", "duplicate id 'm1'", {"extra": OPCUA_M1}),
    Bad(
        "duplicate signal id",
        "machines[0].signals[1].id",
        "duplicate id 'wear'",
        replace=(('id = "fault"', 'id = "wear"'),),
    ),
    Bad(
        "duplicate rule id",
        "rules[1].id",
        "duplicate id 'wear'",
        {"extra": '[[rules]]\nid = "wear"\nmachine = "m1"\nsignal = "fault"\nkind = "fault"\n'},
    ),
    Bad(
        "duplicate sink id",
        "sinks[1].id",
        "duplicate id 'up'",
        {"extra": '[[sinks]]\nid = "up"\nkind = "http"\nurl = "http://127.0.0.1:9/"\n'},
    ),
    Bad(
        "unknown protocol",
        "machines[0].protocol",
        "unknown value 'profinet'.*'modbus', 'opcua'",
        replace=(('protocol = "modbus"', 'protocol = "profinet"'),),
    ),
    Bad(
        "missing protocol", "machines[0].protocol", "required key is missing", replace=(('protocol = "modbus"\n', ""),)
    ),
    Bad(
        "unknown rule kind",
        "rules[0].kind",
        "unknown value 'gauge'.*'threshold', 'fault', 'code', 'tool_life', 'forecast', 'stale'",
        replace=(('kind = "threshold"', 'kind = "gauge"'),),
    ),
    Bad("unknown sink kind", "sinks[0].kind", "unknown value 'kafka'", replace=(('kind = "http"', 'kind = "kafka"'),)),
    Bad(
        "threshold without limits",
        "rules[0]",
        "needs `warning`, `critical` or both",
        replace=(("warning = 80.0\n", ""),),
    ),
    Bad(
        "warning above critical",
        "rules[0].warning",
        r"`warning` \(80.0\) must not be above `critical` \(70.0\)",
        {"rule": "critical = 70.0"},
    ),
    Bad(
        "threshold on a bit",
        "rules[0].signal",
        "numeric signal; 'fault' is bit",
        replace=(('signal = "wear"\nkind', 'signal = "fault"\nkind'),),
    ),
    Bad(
        "both host and serial",
        "machines[0].serial",
        "only one of `host`.*or `serial`",
        {"machine": 'serial = "/dev/ttyUSB0"'},
    ),
    Bad(
        "neither host nor serial",
        "machines[0]",
        "set one of `host`.*or `serial`",
        replace=(('host = "127.0.0.1"\n', ""),),
    ),
    Bad(
        "unknown severity",
        "rules[0].severity",
        r"'info', 'warning' or 'critical' \(got 'major'\)",
        {"rule": 'severity = "major"'},
    ),
    Bad(
        "unknown offline severity",
        "machines[0].offline_severity",
        "got 'fatal'",
        {"machine": 'offline_severity = "fatal"'},
    ),
    Bad(
        "template with an unknown field",
        "rules[0].message",
        r"unknown template field \{vaule\}; use .*\{value\}",
        {"rule": 'message = "{machine} is {vaule}"'},
    ),
    Bad(
        "template with attribute access",
        "rules[0].message",
        r"unknown template field \{machine.__class__\}",
        {"rule": 'message = "{machine.__class__}"'},
    ),
    Bad(
        "template with a positional field",
        "rules[0].message",
        r"unknown template field \{\}",
        {"rule": 'message = "{} {action}"'},
    ),
    Bad("template with a lone brace", "rules[0].message", "not a valid template", {"rule": 'message = "{machine"'}),
    Bad(
        "token_env and token_file",
        "sinks[0].token_file",
        "at most one of `token_env` and `token_file`",
        {"sink": 'token_env = "T"\ntoken_file = "/run/token"'},
    ),
    Bad(
        "sink url without scheme",
        "sinks[0].url",
        "got '127.0.0.1:8080'",
        replace=(('url = "http://127.0.0.1:8080/alerts"', 'url = "127.0.0.1:8080"'),),
    ),
    Bad(
        "sink names no machine", "sinks[0].machines[1]", "no machine with id 'm2'", {"sink": 'machines = ["m1", "m2"]'}
    ),
    Bad("unknown sink min_severity", "sinks[0].min_severity", "got 'high'", {"sink": 'min_severity = "high"'}),
    Bad(
        "ntfy topic with a slash",
        "sinks[1].topic",
        "should match pattern",
        {"extra": '[[sinks]]\nid = "phones"\nkind = "ntfy"\nurl = "https://ntfy.sh"\ntopic = "plant/a"'},
    ),
    Bad(
        "ntfy click with an unknown field",
        "sinks[1].click",
        r"unknown field\(s\) \['serial'\]",
        {
            "extra": '[[sinks]]\nid = "phones"\nkind = "ntfy"\nurl = "https://ntfy.sh"\ntopic = "a"\nclick = "https://x/{serial}"'
        },
    ),
    Bad(
        "ntfy url with a port that is no number",
        "sinks[1].url",
        "the port is not a number from 1 to 65535",
        {"extra": '[[sinks]]\nid = "phones"\nkind = "ntfy"\nurl = "https://ntfy.sh:PORT"\ntopic = "a"'},
    ),
    Bad(
        "pagerduty url with credentials",
        "sinks[1].url",
        "no user or password in the url: use `routing_key_env` or `routing_key_file`",
        {
            "extra": '[[sinks]]\nid = "oncall"\nkind = "pagerduty"\nrouting_key_env = "K"\n'
            'url = "https://u:p@events.pagerduty.com/v2/enqueue"'
        },
    ),
    Bad(
        "pagerduty without a routing key",
        "sinks[1].routing_key_env",
        "set `routing_key_env` or `routing_key_file`",
        {"extra": '[[sinks]]\nid = "oncall"\nkind = "pagerduty"'},
    ),
    Bad(
        "pagerduty with two routing keys",
        "sinks[1].routing_key_file",
        "at most one of",
        {"extra": '[[sinks]]\nid = "oncall"\nkind = "pagerduty"\nrouting_key_env = "K"\nrouting_key_file = "/k"'},
    ),
    Bad(
        "sink url with a port that is no number",  # httpx's InvalidURL at the first request killed the agent
        "sinks[0].url",
        "the port is not a number from 1 to 65535",
        replace=(('url = "http://127.0.0.1:8080/alerts"', 'url = "https://host:PORT/alerts"'),),
    ),
    Bad(
        "sink url with a port out of range",
        "sinks[0].url",
        "the port is not a number from 1 to 65535",
        replace=(('url = "http://127.0.0.1:8080/alerts"', 'url = "https://host:99999/alerts"'),),
    ),
    Bad(
        "sink url without a host",
        "sinks[0].url",
        "the host is missing",
        replace=(('url = "http://127.0.0.1:8080/alerts"', 'url = "http:///alerts"'),),
    ),
    Bad(
        "sink url with a space",
        "sinks[0].url",
        "no spaces or control characters",
        replace=(('url = "http://127.0.0.1:8080/alerts"', 'url = "http://127.0.0.1:8080/my alerts"'),),
    ),
    Bad(
        "sink url with credentials",
        "sinks[0].url",
        "no user or password in the url: use `token_env` or `token_file`",
        replace=(('url = "http://127.0.0.1:8080/alerts"', 'url = "https://gw:s3cret@host/alerts"'),),
    ),
    Bad("bad id", "machines[0].id", "should match pattern", replace=(('id = "m1"', 'id = "press 1"'),)),
    Bad("wrong value type", "machines[0].port", "valid integer", {"machine": 'port = "five"'}),
]


@pytest.mark.parametrize("case", BAD, ids=[c.name for c in BAD])
def test_bad_config_names_file_key_and_problem(tmp_path: Path, case: Bad) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(case.text(), encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    msg = str(info.value)
    assert "\n" not in msg
    prefix = f"{path}: {case.path}: "
    assert msg.startswith(prefix), msg
    assert re.search(case.problem, msg.removeprefix(prefix)), msg


def test_base_of_bad_cases_is_valid(tmp_path: Path) -> None:
    path = tmp_path / "good.toml"
    path.write_text(Bad("good", "", "").text(), encoding="utf-8")
    cfg = load_config(path)
    assert [m.id for m in cfg.machines] == ["m1"]
    assert [r.id for r in cfg.rules] == ["wear"]


def test_toml_syntax_error_names_the_line(tmp_path: Path) -> None:
    text = Bad("syntax", "", "", {"signal": "type = "}).text()
    line = text.splitlines().index("  type = ") + 1
    path = tmp_path / "syntax.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}: TOML syntax error: ")
    assert f"line {line}," in msg
    assert "\n" not in msg


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.toml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}: cannot read: ")
    assert "No such file" in msg
    assert "\n" not in msg


def test_no_machines(tmp_path: Path) -> None:
    path = tmp_path / "empty.toml"
    path.write_text('[agent]\ngateway_id = "gw"\n', encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: machines: required key is missing"


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'[agent]\nsite = "K\xf6ln"\n')
    with pytest.raises(ConfigError, match=r"cannot read: .*utf-8"):
        load_config(path)


def test_several_problems_name_the_first_and_count_the_rest(tmp_path: Path) -> None:
    text = Bad("two", "", "", {"signal": 'type = "uint17"', "machine": 'poll_interval = "5x"'}).text()
    path = tmp_path / "two.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=r": machines\[0\]\.\S+: .*\(and 1 more\)$"):
        load_config(path)


@pytest.mark.parametrize(
    "template",
    [
        "plain text",
        "{machine}/{signal} ({rule}) is {value}{unit} over {threshold}: {severity}, {action}",
        "literal {{braces}} and {value:>8}",
    ],
)
def test_templates_with_known_fields_load(template: str) -> None:
    cfg = parse_config(
        {
            "machines": [
                {"id": "m", "protocol": "opcua", "endpoint": "opc.tcp://h", "signals": [{"id": "s", "node": "n"}]}
            ],
            "rules": [{"id": "r", "machine": "m", "signal": "s", "kind": "fault", "message": template}],
        }
    )
    assert isinstance(cfg.rules[0], FaultRule) and cfg.rules[0].message == template


def test_template_fields_cover_what_rules_fill_in() -> None:
    from agent.rules import DEFAULT_MESSAGES, template_fields

    for kind, texts in DEFAULT_MESSAGES.items():
        used = {f for t in texts.values() for f in template_fields(t)}
        assert used <= TEMPLATE_FIELDS | KIND_TEMPLATE_FIELDS[kind], kind
    assert set(DEFAULT_MESSAGES) == set(KIND_TEMPLATE_FIELDS)
    common = {"machine", "signal", "name", "rule", "value", "threshold", "unit", "severity", "action", "note"}
    assert common == TEMPLATE_FIELDS


@pytest.mark.parametrize(
    ("rule", "problem"),
    [
        ({"kind": "fault", "message": "{code}"}, r"unknown template field \{code\}"),
        ({"kind": "code", "message": "{remaining}"}, r"unknown template field \{remaining\}; use .*\{code_text\}"),
        ({"kind": "tool_life"}, "needs `limit`"),
        ({"kind": "tool_life", "limit": 10, "warning_remaining": -1}, "greater than or equal to 0"),
        ({"kind": "forecast", "limit": 95}, "required key is missing"),
        ({"kind": "forecast", "limit": 95, "horizon": "10m", "min_r2": 1.5}, "less than or equal to 1"),
        ({"kind": "stale"}, "required key is missing"),
        ({"kind": "stale", "after": "1m", "only_while": "nope"}, "machine 'm' has no signal 'nope'"),
        ({"kind": "code", "normal": [0, 7], "codes": {"7": {"message": "x"}}}, "code 7 is also in `normal`"),
        ({"kind": "fault", "chatter_count": 1}, "must be 0 \\(off\\) or at least 2"),
        ({"kind": "fault", "id": "flood"}, "'flood' is the id of the agent's own flood alert"),
        ({"kind": "fault", "id": "unreadable"}, "'unreadable' is the id of the agent's own unreadable alert"),
        ({"kind": "tool_life", "limit": 5, "signal": "b"}, "a tool_life rule needs a numeric signal"),
    ],
)
def test_rule_kinds_are_checked_at_load_time(rule: dict[str, object], problem: str) -> None:
    doc = {"id": "r", "machine": "m", "signal": "s", **rule}
    signals = [{"id": "s", "address": 0}, {"id": "b", "address": 1, "type": "bit", "bit": 0}]
    with pytest.raises(ConfigError, match=problem):
        parse_config({"machines": [{"id": "m", "protocol": "modbus", "host": "h", "signals": signals}], "rules": [doc]})


def test_new_rule_kinds_load_with_their_defaults() -> None:
    cfg = parse_config(
        {
            "machines": [{"id": "m", "protocol": "modbus", "host": "h", "signals": [{"id": "s", "address": 0}]}],
            "rules": [
                {"id": "c", "machine": "m", "signal": "s", "kind": "code", "codes": {"12": {"message": "hot"}}},
                {"id": "d", "machine": "m", "signal": "s", "kind": "tool_life", "direction": "down"},
                {"id": "f", "machine": "m", "signal": "s", "kind": "forecast", "limit": 95, "horizon": "30m"},
                {"id": "s", "machine": "m", "signal": "s", "kind": "stale", "after": "5m", "message": "{after}"},
            ],
        }
    )
    code, life, forecast, stale = cfg.rules
    assert isinstance(code, CodeRule) and code.normal == [0] and code.codes[12] == CodeEntry(message="hot")
    assert isinstance(life, ToolLifeRule) and (life.limit, life.end, life.warning_remaining) == (None, 0.0, None)
    assert isinstance(forecast, ForecastRule)
    assert (forecast.window, forecast.min_points, forecast.min_r2, forecast.change_drop) == (600.0, 10, 0.7, None)
    assert isinstance(stale, StaleRule) and (stale.tolerance, stale.only_while) == (0.0, None)
    assert AlertsSection() == cfg.alerts


# --------------------------------------------------------------------------------------------
# Secrets: `<name>_env` / `<name>_file`, read by the one shared helper (sinks and the OPC UA password)


def test_read_secret_from_env_or_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_SECRET", "  s3cret \n")
    assert read_secret("token", "TEST_SECRET", None) == "s3cret"
    assert read_secret("password", "TEST_SECRET", None, strip="\r\n") == "  s3cret "  # spaces may belong to it
    path = tmp_path / "secret"
    path.write_text("from-file\r\n")
    assert read_secret("token", None, path) == "from-file"
    assert read_secret("token", None, None) is None


@pytest.mark.parametrize(
    ("env", "file", "content", "problem"),
    [
        ("TEST_SECRET_UNSET", None, None, ("token_env", "environment variable TEST_SECRET_UNSET is not set or empty")),
        (None, "missing", None, ("token_file", "cannot read {path}: No such file or directory")),
        (None, "empty", " \n", ("token_file", "{path} is empty")),
        (None, "binary", b"\xff\xfe", ("token_file", "cannot read {path}: 'utf-8' codec can't decode")),
    ],
)
def test_read_secret_names_the_key_and_never_the_secret(
    tmp_path: Path, env: str | None, file: str | None, content: str | bytes | None, problem: tuple[str, str]
) -> None:
    path = tmp_path / file if file else None
    if path is not None and isinstance(content, str):
        path.write_text(content)
    elif path is not None and isinstance(content, bytes):
        path.write_bytes(content)
    with pytest.raises(KeyProblem) as err:
        read_secret("token", env, path)
    key, message = problem
    assert err.value.key == key
    assert str(err.value).startswith(message.format(path=path))


def test_a_sink_secret_error_names_the_sink_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TEST_SECRET_UNSET", raising=False)
    with pytest.raises(ConfigError) as err:
        sink_secret(3, "routing_key", "TEST_SECRET_UNSET", None)
    assert str(err.value) == "sinks[3].routing_key_env: environment variable TEST_SECRET_UNSET is not set or empty"


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/alerts",
        "https://service.example.com/andon/alerts?source=gw",
        "https://[::1]:8443/alerts",
        "https://münchen.example/alerts",
        "http://host:1/",
        "https://host:65535",
    ],
)
def test_a_sink_url_the_config_takes_is_one_httpx_takes(url: str) -> None:
    """What ``check`` accepts must not fail at the first request (httpx parses it again then)."""
    import httpx

    from agent.sinks.http import HttpSinkConfig

    assert HttpSinkConfig.model_validate({"id": "up", "kind": "http", "url": url}).url == url
    assert httpx.URL(url).host


def test_a_sink_url_with_a_password_is_refused_without_showing_it(tmp_path: Path) -> None:
    path = tmp_path / "secret.toml"
    path.write_text(
        Bad("", "", "", replace=(('url = "http://127.0.0.1:8080/alerts"', 'url = "https://gw:s3cret@h/a"'),)).text()
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "sinks[0].url" in str(info.value) and "s3cret" not in str(info.value)
