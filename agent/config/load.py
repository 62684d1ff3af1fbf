"""Loading a config file: TOML -> :class:`~agent.config.schema.Config`, or one line saying what is wrong.

:func:`load_config` raises :class:`~agent.errors.ConfigError` whose text is one line:
``<file>: <key path>: <problem>`` (``machines[0].signals[2].type: ...``).
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, get_args

from pydantic import ValidationError

from agent.config.base import KeyProblem
from agent.config.rules import Rule
from agent.config.schema import Config, cross_checks
from agent.errors import ConfigError
from agent.sinks.registry import SINKS
from drivers.registry import PROTOCOLS


def _rule_kinds() -> frozenset[str]:
    models = get_args(get_args(Rule)[0])  # Annotated[A | B | ..., Field(...)] -> (A, B, ...)
    return frozenset(tag for model in models for tag in get_args(model.model_fields["kind"].annotation))


# pydantic puts a discriminated union's tag in an error's location: the values to leave out of key paths.
_TAGS = _rule_kinds() | {p.name for p in PROTOCOLS} | {s.kind for s in SINKS}


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


def _one_line(exc: ValidationError, source: str) -> str:
    """The first error (a misspelt key first: it usually causes the others), with its key path."""
    errs = sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")
    err = errs[0]
    if err["type"] in ("union_tag_invalid", "union_tag_not_found"):
        err["loc"] = (*err["loc"], err["ctx"]["discriminator"].strip("'"))
    elif isinstance(problem := err.get("ctx", {}).get("error"), KeyProblem):
        err["loc"] = (*err["loc"], problem.key)
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{source}: {_key_path(err['loc'], _TAGS)}: {_describe(err)}{more}"


def parse_config(data: dict[str, Any], source: str = "<config>") -> Config:
    """Validate an already parsed TOML document."""
    try:
        cfg = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_one_line(exc, source)) from None
    for m in cfg.machines:
        m.use_state_dir(cfg.agent.state_dir)
    problems = cross_checks(cfg)
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
