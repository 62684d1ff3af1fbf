"""Config schema and loading.

Everything is validated at load time: unknown keys are errors, ids are unique, rules name
machines and signals that exist. :func:`load_config` raises :class:`ConfigError` whose text is one
line: ``<file>: <key path>: <problem>``.
"""

from __future__ import annotations

import math
import re
import socket
import string
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from agent.errors import ConfigError

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: object) -> float:
    """``"250ms"``, ``"2s"``, ``"5m"``, ``"1h"``, ``"1d"`` or a plain number of seconds -> seconds."""
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION.match(value)):
        seconds = float(m.group(1)) * _UNITS[m.group(2)]
    else:
        raise ValueError(f'not a duration: {value!r} (use e.g. "250ms", "2s", "5m" or seconds)')
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"not a duration: {value!r}")
    return seconds


Duration = Annotated[float, BeforeValidator(parse_duration)]
Id = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$")]
SeverityName = Literal["info", "warning", "critical"]
RegisterTable = Literal["holding", "input", "coil", "discrete"]
SignalType = Literal[
    "bool", "bit", "int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64", "string"
]
ByteOrder = Literal["ABCD", "DCBA", "BADC", "CDAB"]

# The fields every rule's `message` template may use (agent.rules fills them in) ...
TEMPLATE_FIELDS = frozenset(
    {"machine", "signal", "name", "rule", "value", "threshold", "unit", "severity", "action", "note"}
)
# ... and each kind's own fields.
KIND_TEMPLATE_FIELDS: dict[str, frozenset[str]] = {
    "threshold": frozenset(),
    "fault": frozenset(),
    "code": frozenset({"code", "code_text"}),
    "tool_life": frozenset({"remaining", "limit"}),
    "forecast": frozenset({"limit", "eta", "seconds_to_limit", "trend"}),
    "stale": frozenset({"unchanged_for", "after"}),
}


def template_fields_for(kind: str) -> frozenset[str]:
    """The fields a ``message`` template of a rule of this kind may use."""
    return TEMPLATE_FIELDS | KIND_TEMPLATE_FIELDS[kind]


class KeyProblem(ValueError):
    """A cross-field check's error that belongs to one key: the error's key path ends in ``key``."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AgentSection(_Strict):
    gateway_id: Id = Field(default_factory=socket.gethostname)
    site: str | None = None
    state_dir: Path = Path("/var/lib/andon-agent")


class ModbusSignal(_Strict):
    id: Id
    table: RegisterTable = Field(default="holding", alias="register")
    address: int = Field(ge=0, le=65535)
    type: SignalType = "uint16"
    byte_order: ByteOrder = "ABCD"
    bit: int | None = Field(default=None, ge=0, le=15)
    length: int | None = Field(default=None, ge=1, le=125)  # registers, for type = "string"
    scale: float = 1.0
    offset: float = 0.0
    unit: str = ""  # engineering unit, for messages ("%", "strokes")

    @model_validator(mode="after")
    def _check(self) -> ModbusSignal:
        bit_table = self.table in ("coil", "discrete")
        if bit_table and self.type != "bool":
            raise KeyProblem("type", f'a {self.table} signal must have type = "bool", not {self.type!r}')
        if self.type == "bit":
            if self.bit is None:
                raise KeyProblem("bit", 'type = "bit" needs `bit` (0 = least significant bit of the register)')
        elif self.bit is not None:
            raise KeyProblem("bit", '`bit` is only for type = "bit"')
        if self.type == "string" and self.length is None:
            raise KeyProblem("length", 'type = "string" needs `length` (in registers)')
        if self.type != "string" and self.length is not None:
            raise KeyProblem("length", '`length` is only for type = "string"')
        for name in ("scale", "offset"):
            if not math.isfinite(getattr(self, name)):
                raise KeyProblem(name, f"`{name}` must be a finite number")
        return self


class _MachineBase(_Strict):
    id: Id
    poll_interval: Duration = Field(default=1.0, gt=0)
    offline_after: Duration = Field(default=10.0, gt=0)
    timeout: Duration = Field(default=1.0, gt=0)  # one request; bounded so a dead machine is noticed fast
    reconnect_max: Duration = Field(default=30.0, gt=0)  # cap of the reconnect backoff
    offline_severity: SeverityName = "warning"  # severity of the "<machine>/offline" alert


class ModbusMachine(_MachineBase):
    protocol: Literal["modbus"]
    host: str | None = None  # Modbus TCP
    port: int = Field(default=502, ge=1, le=65535)
    serial: str | None = None  # Modbus RTU: "/dev/ttyUSB0"
    baudrate: int = Field(default=19200, gt=0)
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    bytesize: Literal[7, 8] = 8
    framer: Literal["socket", "rtu"] = "socket"  # TCP only: "rtu" for RTU-over-TCP gateways
    unit: int = Field(default=1, ge=0, le=255)
    max_gap: int = Field(default=8, ge=0, le=124)  # registers bridged to merge two reads into one
    request_gap: Duration = Field(default=0.0, ge=0, le=10)  # quiet time on the bus after each request
    signals: list[ModbusSignal] = Field(min_length=1)

    @model_validator(mode="after")
    def _check(self) -> ModbusMachine:
        if self.host is not None and self.serial is not None:
            raise KeyProblem("serial", "set only one of `host` (Modbus TCP) or `serial` (Modbus RTU), not both")
        if self.host is None and self.serial is None:
            raise ValueError("set one of `host` (Modbus TCP) or `serial` (Modbus RTU)")
        if self.serial is not None:
            for key in ("framer", "port"):
                if key in self.model_fields_set:
                    raise KeyProblem(key, f"`{key}` is only for Modbus TCP (`host`); a serial line always uses RTU")
        return self

    @property
    def bus(self) -> str:
        """The connection this machine uses; machines with the same ``bus`` share one connection."""
        if self.serial is not None:
            return f"serial {self.serial}"
        return f"tcp {(self.host or '').lower()}:{self.port}" + (" rtu" if self.framer == "rtu" else "")


class OpcuaSignal(_Strict):
    id: Id
    node: str = Field(min_length=1)  # "ns=2;s=Lathe.Tool1.Wear", "ns=3;i=1001", "i=2258", "nsu=<uri>;s=..."
    unit: str = ""


OpcuaPolicy = Literal["None", "Basic256Sha256", "Aes128Sha256RsaOaep", "Aes256Sha256RsaPss"]


class OpcuaMachine(_MachineBase):
    protocol: Literal["opcua"]
    endpoint: str
    mode: Literal["subscribe", "poll"] = "subscribe"  # data changes pushed, or one Read per poll_interval
    security_policy: OpcuaPolicy = "None"
    security_mode: Literal["Sign", "SignAndEncrypt"] | None = None  # default SignAndEncrypt with a policy
    certificate: Path | None = None  # client certificate (DER or PEM); default: generated into state_dir
    private_key: Path | None = None  # its private key (PEM), unencrypted
    server_certificate: Path | None = None  # trust exactly this server certificate (DER or PEM)
    username: str | None = Field(default=None, min_length=1)
    password_env: str | None = Field(default=None, min_length=1)  # the password is read from this variable
    password_file: Path | None = None  # ...or from this file (e.g. a systemd credential)
    signals: list[OpcuaSignal] = Field(min_length=1)
    # Where a generated client certificate goes; set by parse_config from [agent] state_dir.
    _state_dir: Path = PrivateAttr(default=AgentSection().state_dir)

    @property
    def pki_dir(self) -> Path:
        """The generated client certificate and key live here: ``<state_dir>/opcua/<machine id>``."""
        return self._state_dir / "opcua" / self.id

    @field_validator("endpoint")
    @classmethod
    def _check_endpoint(cls, url: str) -> str:
        if not url.startswith("opc.tcp://") or len(url) <= len("opc.tcp://"):
            raise ValueError(f"must be an OPC UA endpoint URL like opc.tcp://host:4840/ (got {url!r})")
        if "@" in url.split("/", 3)[2]:  # the value is not echoed: it may hold a password
            raise ValueError("must not hold credentials (user:password@): use `username` and `password_env`")
        return url

    @model_validator(mode="before")
    @classmethod
    def _no_password_in_config(cls, data: Any) -> Any:
        if isinstance(data, dict) and "password" in data:
            raise KeyProblem("password", "a password never goes in the config: use `password_env` or `password_file`")
        return data

    @model_validator(mode="after")
    def _check(self) -> OpcuaMachine:
        secure = self.security_policy != "None"
        if not secure:
            for key in ("security_mode", "certificate", "private_key", "server_certificate"):
                if getattr(self, key) is not None:
                    raise KeyProblem(key, f'`{key}` needs a `security_policy` other than "None"')
        if (self.certificate is None) != (self.private_key is None):
            missing = "private_key" if self.private_key is None else "certificate"
            raise KeyProblem(missing, "set both `certificate` and `private_key`, or neither (a pair is generated)")
        if self.password_env is not None and self.password_file is not None:
            raise KeyProblem("password_file", "set at most one of `password_env` and `password_file`")
        has_password = self.password_env is not None or self.password_file is not None
        if self.username is None and has_password:
            key = "password_env" if self.password_env is not None else "password_file"
            raise KeyProblem(key, f"`{key}` needs `username`")
        if self.username is not None and not has_password:
            raise KeyProblem("username", "`username` needs `password_env` or `password_file` for its password")
        return self

    @property
    def message_security_mode(self) -> str:
        """The message security mode the session will use: "None", "Sign" or "SignAndEncrypt"."""
        if self.security_policy == "None":
            return "None"
        return self.security_mode or "SignAndEncrypt"


Machine = Annotated[ModbusMachine | OpcuaMachine, Field(discriminator="protocol")]


class _RuleBase(_Strict):
    id: Id
    machine: Id
    signal: Id
    severity: SeverityName = "warning"
    name: str | None = Field(default=None, min_length=1)  # what is watched, in words ("tool 1"); default: signal
    message: str | None = None  # template: {machine} {signal} {value} {threshold} {unit} ... (KIND_TEMPLATE_FIELDS)
    on_delay: Duration = 0.0
    off_delay: Duration = 0.0
    repeat_every: Duration | None = Field(default=None, gt=0)
    # Chattering (ISA-18.2: 3 or more alarms in 1 minute): the chatter_count-th raise within
    # chatter_window holds the alert active until its condition stayed normal for chatter_window.
    chatter_count: int = Field(default=3, ge=0)  # 0 turns it off
    chatter_window: Duration = Field(default=60.0, gt=0)

    @field_validator("message")
    @classmethod
    def _check_message(cls, template: str | None) -> str | None:
        if template is None:
            return None
        try:
            list(string.Formatter().parse(template))
        except ValueError as exc:  # a lone "{" or "}"
            raise ValueError(f"not a valid template: {exc} (write {{{{ and }}}} for literal braces)") from None
        return template

    @field_validator("chatter_count")
    @classmethod
    def _check_chatter_count(cls, count: int) -> int:
        if count == 1:
            raise ValueError("must be 0 (off) or at least 2: one raise is not chattering")
        return count

    @model_validator(mode="after")
    def _check_template(self) -> _RuleBase:
        if self.message is None:
            return self
        known = template_fields_for(str(getattr(self, "kind", "fault")))
        allowed = ", ".join("{" + f + "}" for f in sorted(known))
        for _, name, _, _ in string.Formatter().parse(self.message):
            if name is not None and name not in known:
                raise KeyProblem("message", f"unknown template field {{{name}}}; use {allowed}")
        return self


class ThresholdRule(_RuleBase):
    kind: Literal["threshold"]
    warning: float | None = None
    critical: float | None = None
    deadband: float = Field(default=0.0, ge=0)

    @model_validator(mode="after")
    def _check(self) -> ThresholdRule:
        if self.warning is None and self.critical is None:
            raise ValueError("a threshold rule needs `warning`, `critical` or both")
        for name in ("warning", "critical", "deadband"):
            v = getattr(self, name)
            if v is not None and not math.isfinite(v):
                raise KeyProblem(name, f"`{name}` must be a finite number")
        if self.warning is not None and self.critical is not None and self.warning > self.critical:
            raise KeyProblem("warning", f"`warning` ({self.warning}) must not be above `critical` ({self.critical})")
        return self


class FaultRule(_RuleBase):
    kind: Literal["fault"]
    severity: SeverityName = "critical"


class CodeEntry(_Strict):
    message: str = Field(min_length=1)  # what the code means, and what to do
    severity: SeverityName | None = None  # default: the rule's severity


class CodeRule(_RuleBase):
    """A fault-code register: codes in ``normal`` mean no fault; every other code alerts."""

    kind: Literal["code"]
    normal: list[int] = Field(default=[0], min_length=1)
    codes: dict[int, CodeEntry] = {}

    @model_validator(mode="after")
    def _check(self) -> CodeRule:
        both = sorted(set(self.normal) & set(self.codes))
        if both:
            raise KeyProblem("codes", f"code {both[0]} is also in `normal`; a code is either a fault or normal")
        return self


class ToolLifeRule(_RuleBase):
    """A tool-life counter: counting up to ``limit`` (or down to it, ``direction = "down"``)."""

    kind: Literal["tool_life"]
    limit: float | None = None  # required counting up; counting down the default is 0
    warning_remaining: float | None = Field(default=None, ge=0)
    direction: Literal["up", "down"] = "up"

    @model_validator(mode="after")
    def _check(self) -> ToolLifeRule:
        if self.limit is None and self.direction == "up":
            raise KeyProblem("limit", "a tool_life rule counting up needs `limit` (the tool's life in counter units)")
        for key in ("limit", "warning_remaining"):
            v = getattr(self, key)
            if v is not None and not math.isfinite(v):
                raise KeyProblem(key, f"`{key}` must be a finite number")
        return self

    @property
    def end(self) -> float:
        """The counter value at which the tool's life is used up."""
        return 0.0 if self.limit is None else self.limit


class ForecastRule(_RuleBase):
    """Warns when the least-squares trend of the last ``window`` reaches ``limit`` within ``horizon``."""

    kind: Literal["forecast"]
    limit: float
    horizon: Duration = Field(gt=0)
    window: Duration = Field(default=600.0, gt=0)
    min_points: int = Field(default=10, ge=3)  # fewer points in the window: no forecast
    min_r2: float = Field(default=0.7, ge=0, le=1)  # the fit must explain this much of the variance to raise
    change_drop: float | None = Field(default=None, gt=0)  # a fall this big is a tool change; default limit/10

    @model_validator(mode="after")
    def _check(self) -> ForecastRule:
        for key in ("limit", "change_drop"):
            v = getattr(self, key)
            if v is not None and not math.isfinite(v):
                raise KeyProblem(key, f"`{key}` must be a finite number")
        return self

    @property
    def drop(self) -> float:
        """A fall of the signal by more than this is a tool change: the history starts again."""
        return self.change_drop if self.change_drop is not None else max(abs(self.limit) / 10, 1e-9)


class StaleRule(_RuleBase):
    """A signal that should change but has not for ``after`` (a frozen counter, a dead sensor)."""

    kind: Literal["stale"]
    after: Duration = Field(gt=0)
    tolerance: float = Field(default=0.0, ge=0)  # changes this small or smaller do not count
    only_while: Id | None = None  # a signal of the same machine: staleness counts only while it is true


Rule = Annotated[
    ThresholdRule | FaultRule | CodeRule | ToolLifeRule | ForecastRule | StaleRule, Field(discriminator="kind")
]


class AlertsSection(_Strict):
    """Flood handling (EEMUA 191: more than 10 alarms in 10 minutes per operator is a flood)."""

    flood_count: int = Field(default=10, ge=0)  # raises per machine in flood_window; 0 turns it off
    flood_window: Duration = Field(default=600.0, gt=0)


class StatusSection(_Strict):
    listen: str | None = "127.0.0.1:9108"  # "host:port"; empty string or null turns it off

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, listen: str | None) -> str | None:
        if not listen:
            return listen
        host, sep, port = listen.rpartition(":")
        if not sep or not host or not port.isdigit() or int(port) > 65535:
            raise ValueError(f'not "host:port": {listen!r} (e.g. "127.0.0.1:9108"; "" turns it off)')
        return listen


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|kB|KB|KiB|MB|MiB|GB|GiB)?\s*$")
_SIZE_UNITS = {None: 1, "B": 1, "kB": 1000, "KB": 1000, "KiB": 1024}
_SIZE_UNITS |= {"MB": 10**6, "MiB": 2**20, "GB": 10**9, "GiB": 2**30}


class OutboxSection(_Strict):
    max_events: int = Field(default=100_000, ge=100)  # queued events; when full the oldest non-critical go
    max_bytes: int = Field(default=64 * 2**20, ge=2**20)  # queued event bodies ("64MiB", "500MB" or bytes)
    max_dead_letters: int = Field(default=10_000, ge=1)  # the oldest dead letters go beyond this
    batch_size: int = Field(default=500, ge=1, le=10_000)  # events per request (halved after a 413)
    linger: Duration = Field(default=0.05, le=60)  # a partial batch waits this long after the last request

    @field_validator("max_bytes", mode="before")
    @classmethod
    def _parse_size(cls, value: object) -> object:
        if isinstance(value, str):
            m = _SIZE.match(value)
            if not m:
                raise ValueError(f'not a size: {value!r} (use e.g. "64MiB", "500MB" or a number of bytes)')
            return int(float(m.group(1)) * _SIZE_UNITS[m.group(2)])
        return value


class HttpSink(_Strict):
    id: Id
    kind: Literal["http"]
    url: str = Field(pattern=r"^https?://")
    token_env: str | None = None  # bearer token read from this environment variable
    token_file: Path | None = None  # ...or from this file (e.g. a systemd credential)
    timeout: Duration = Field(default=10.0, gt=0)
    ca_file: Path | None = None  # trust this CA (PEM) instead of the system store
    retry_max: Duration = Field(default=60.0, gt=0)  # cap of the retry backoff

    @model_validator(mode="after")
    def _check(self) -> HttpSink:
        if self.token_env and self.token_file:
            raise KeyProblem("token_file", "set at most one of `token_env` and `token_file`")
        return self


Sink = Annotated[HttpSink, Field(discriminator="kind")]


class Config(_Strict):
    agent: AgentSection = AgentSection()
    machines: list[Machine] = Field(min_length=1)
    rules: list[Rule] = []
    alerts: AlertsSection = AlertsSection()
    status: StatusSection = StatusSection()
    outbox: OutboxSection = OutboxSection()
    sinks: list[Sink] = []

    def machine(self, machine_id: str) -> ModbusMachine | OpcuaMachine:
        return next(m for m in self.machines if m.id == machine_id)


# --------------------------------------------------------------------------------------------
# Loading and error reporting


def _key_path(loc: tuple[int | str, ...], tags: frozenset[str]) -> str:
    out = ""
    prev: int | str | None = None
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(prev, int) and part in tags:
            pass  # pydantic puts the discriminator's value in the path: not a key of the file
        else:
            out += f".{part}" if out else part
        prev = part
    return out or "(top level)"


_TAGS = frozenset({"modbus", "opcua", "threshold", "fault", "code", "tool_life", "forecast", "stale", "http"})


def _describe(err: Any) -> str:
    kind, msg = err["type"], err["msg"]
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "union_tag_not_found":
        return "required key is missing"
    if kind == "missing":
        return "required key is missing"
    if kind == "value_error":
        msg = msg.removeprefix("Value error, ")
    if kind == "union_tag_invalid":
        return f"unknown value {err['ctx']['tag']!r}; expected one of {err['ctx']['expected_tags']}"
    inp = err.get("input")
    if kind not in ("value_error",) and not isinstance(inp, dict | list):
        msg = f"{msg} (got {inp!r})"
    return str(msg)


_SERIAL_SETTINGS = ("baudrate", "parity", "stopbits", "bytesize")


def _modbus_bus_checks(cfg: Config) -> list[tuple[str, str]]:
    """Modbus machines on one serial port share one connection: they must agree on its settings."""
    errors: list[tuple[str, str]] = []
    first: dict[str, tuple[int, ModbusMachine]] = {}
    for mi, m in enumerate(cfg.machines):
        if not isinstance(m, ModbusMachine) or m.serial is None:
            continue
        if m.bus not in first:
            first[m.bus] = (mi, m)
            continue
        _, other = first[m.bus]
        for key in _SERIAL_SETTINGS:
            mine, theirs = getattr(m, key), getattr(other, key)
            if mine != theirs:
                errors.append(
                    (
                        f"machines[{mi}].{key}",
                        f"machine {m.id!r} shares serial port {m.serial} with {other.id!r}, "
                        f"which has {key} = {theirs!r}, not {mine!r}; machines on one bus must agree",
                    )
                )
    return errors


RESERVED_RULE_IDS = frozenset({"offline", "flood"})  # the agent's own alerts: "<machine>/offline", "<machine>/flood"
_NUMERIC = frozenset({"threshold", "tool_life", "forecast"})


def _cross_checks(cfg: Config) -> list[tuple[str, str]]:
    errors: list[tuple[str, str]] = []

    def unique(items: list[Any], path: str) -> None:
        seen: set[str] = set()
        for i, item in enumerate(items):
            if item.id in seen:
                errors.append((f"{path}[{i}].id", f"duplicate id {item.id!r}"))
            seen.add(item.id)

    unique(cfg.machines, "machines")
    unique(cfg.rules, "rules")
    unique(cfg.sinks, "sinks")
    errors += _modbus_bus_checks(cfg)
    machines = {m.id: m for m in cfg.machines}
    for mi, m in enumerate(cfg.machines):
        unique(m.signals, f"machines[{mi}].signals")
    for ri, r in enumerate(cfg.rules):
        target = machines.get(r.machine)
        if target is None:
            errors.append((f"rules[{ri}].machine", f"no machine with id {r.machine!r}"))
            continue
        signal = next((s for s in target.signals if s.id == r.signal), None)
        if r.id in RESERVED_RULE_IDS:
            errors.append((f"rules[{ri}].id", f"{r.id!r} is the id of the agent's own {r.id} alert; choose another"))
        if signal is None:
            errors.append((f"rules[{ri}].signal", f"machine {target.id!r} has no signal {r.signal!r}"))
        elif isinstance(signal, ModbusSignal) and signal.type in ("bool", "bit", "string") and r.kind in _NUMERIC:
            need = f"a {r.kind} rule needs a numeric signal"
            errors.append((f"rules[{ri}].signal", f"{need}; {r.signal!r} is {signal.type}"))
        elif isinstance(signal, ModbusSignal) and signal.type in ("bool", "bit") and r.kind == "code":
            errors.append((f"rules[{ri}].signal", f"a code rule needs a number; {r.signal!r} is {signal.type}"))
        gate = r.only_while if isinstance(r, StaleRule) else None
        if gate is not None and not any(s.id == gate for s in target.signals):
            errors.append((f"rules[{ri}].only_while", f"machine {target.id!r} has no signal {gate!r}"))
    return errors


def parse_config(data: dict[str, Any], source: str = "<config>") -> Config:
    """Validate an already parsed TOML document."""
    try:
        cfg = Config.model_validate(data)
    except ValidationError as exc:
        # A misspelt key usually causes the other errors ("missing"), so it is named first.
        errs = sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")
        err = errs[0]
        if err["type"] in ("union_tag_invalid", "union_tag_not_found"):
            err["loc"] = (*err["loc"], err["ctx"]["discriminator"].strip("'"))
        elif isinstance(problem := err.get("ctx", {}).get("error"), KeyProblem):
            err["loc"] = (*err["loc"], problem.key)
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise ConfigError(f"{source}: {_key_path(err['loc'], _TAGS)}: {_describe(err)}{more}") from None
    for m in cfg.machines:
        if isinstance(m, OpcuaMachine):
            m._state_dir = cfg.agent.state_dir
    problems = _cross_checks(cfg)
    if problems:
        path, msg = problems[0]
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ConfigError(f"{source}: {path}: {msg}{more}")
    return cfg


def load_config(path: Path | str) -> Config:
    """Read and validate a TOML config file. Raises :class:`ConfigError` with a one-line text."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: TOML syntax error: {exc}") from None
    return parse_config(data, str(path))
