"""What ``andon-agent check`` reads beyond the file: what ``run`` will need from this host and user.

A config can be valid and still not run on the gateway: the token's environment variable is set in
the unit but not in the installer's shell, a token file the agent's user cannot read, a serial
adapter that is unplugged or that the user may not open, an OPC UA machine on a Modbus-only
installation. :func:`readiness` finds each of these, one
line each, naming the key:

* a ``*_env`` variable (anywhere in the config) not set here: a **warning** (the service's unit
  provides it; ``check`` runs in another environment), not a failure;
* a ``*_file`` that cannot be read, or is empty: an **error**, as ``run`` refuses to start on it
  (a file under ``/run/credentials/``, systemd's ``LoadCredential=``, exists only inside the
  running service: a warning);
* a device a machine opens (a serial port) that does not exist: a **warning** (an adapter may be
  plugged in later; the agent keeps trying to open it); one that is not a character device, or that
  this user may not read and write: an **error** naming the device's group (``dialout``): that does
  not mend itself.
* a machine whose protocol needs software that is not installed (the OPC UA stack, an optional
  extra): an **error**, as ``run`` refuses to start on it, naming the machine and what to install.

Root may read anything, so as root the files and devices are checked as root (a note says how to
check as the agent's user).
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from agent.config import Config
from drivers.registry import not_installed, plugin_for

CREDENTIALS = "/run/credentials/"  # systemd's LoadCredential= files live here, inside the service only
NOTE_ROOT = (
    "note: checked as root, who may read any file and open any device; check as the agent's user too: "
    "sudo -u andon-agent andon-agent check --config ..."
)


@dataclass(frozen=True)
class Finding:
    """One line of ``check``: ``<level>: <key path>: <what>``. ``blocks_start``: ``run`` would refuse
    to start on it (a secret file it cannot read); otherwise it runs but cannot use that part."""

    level: Literal["warning", "error"]
    key: str
    text: str
    blocks_start: bool = False

    def __str__(self) -> str:
        return f"{self.level}: {self.key}: {self.text}"


def who() -> str:
    """This process's user, for messages: ``uid 999 (andon-agent)``."""
    uid = os.geteuid()
    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return f"uid {uid}"


def secret_refs(model: BaseModel, path: str = "") -> Iterator[tuple[str, str | Path]]:
    """Every ``*_env`` and ``*_file`` key set in the config, with its key path, depth first."""
    for name in type(model).model_fields:
        value = getattr(model, name)
        key = f"{path}.{name}" if path else name
        if isinstance(value, BaseModel):
            yield from secret_refs(value, key)
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, BaseModel):
                    yield from secret_refs(item, f"{key}[{i}]")
        elif value is not None and (name.endswith("_env") or name.endswith("_file")):
            yield key, value


def check_env(key: str, variable: str, env: Mapping[str, str]) -> Finding | None:
    if env.get(variable, "").strip():
        return None
    return Finding(
        "warning",
        key,
        f"environment variable {variable} is not set in this environment: the service must provide it "
        f"(systemd: Environment= or EnvironmentFile= in a drop-in; docker run -e {variable}=...)",
    )


def check_file(key: str, path: Path) -> Finding | None:
    """A file the agent reads at start (a token, a password, a certificate)."""
    try:
        with path.open("rb") as f:
            empty = not f.read(1)
    except FileNotFoundError:
        if str(path).startswith(CREDENTIALS):
            return Finding(
                "warning",
                key,
                f"{path} exists only inside the running service (systemd LoadCredential=): not checked from here",
            )
        return Finding("error", key, f"{path} does not exist", blocks_start=True)
    except PermissionError:
        return Finding("error", key, f"permission denied: {who()} cannot read {path}{_owner(path)}", blocks_start=True)
    except OSError as exc:
        return Finding("error", key, f"cannot read {path}: {exc.strerror or exc}", blocks_start=True)
    return Finding("error", key, f"{path} is empty", blocks_start=True) if empty else None


def check_device(key: str, path: str) -> Finding | None:
    """A device a machine opens (a serial port): it exists, and this user may read and write it."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return Finding(
            "warning",
            key,
            f"{path} does not exist: is the adapter plugged in? (ls -l /dev/serial/by-id/ names the adapters "
            "present); the agent keeps trying to open it",
        )
    except OSError as exc:
        return Finding("error", key, f"cannot look at {path}: {exc.strerror or exc}")
    if not stat.S_ISCHR(st.st_mode):
        return Finding("error", key, f"{path} is not a serial port (not a character device)")
    if os.access(path, os.R_OK | os.W_OK):
        return None
    group = _group(st.st_gid)
    return Finding(
        "error",
        key,
        f"permission denied: {who()} may not open {path}{_owner(path)}: add the user to group {group} "
        f"(sudo usermod -aG {group} <user>, then log in again; the andon-agent unit has "
        "SupplementaryGroups=dialout, and serial adapters belong to the dialout group)",
    )


def _group(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def _owner(path: Path | str) -> str:
    try:
        st = os.stat(path)
    except OSError:
        return ""
    try:
        user = pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        user = str(st.st_uid)
    return f" (owner {user}, group {_group(st.st_gid)}, mode {stat.filemode(st.st_mode)})"


def readiness(cfg: Config, env: Mapping[str, str] = os.environ) -> list[Finding]:
    """What ``run`` needs from this host and user that it does not have, one finding each."""
    found: list[Finding | None] = []
    for key, value in secret_refs(cfg):
        found.append(check_file(key, value) if isinstance(value, Path) else check_env(key, value, env))
    for i, m in enumerate(cfg.machines):
        for name, path in plugin_for(m.protocol).devices(m):
            found.append(check_device(f"machines[{i}].{name}", path))
    found += [Finding("error", key, problem, blocks_start=True) for key, problem in not_installed(cfg.machines)]
    return [f for f in found if f is not None]


def needs_root_note(cfg: Config) -> bool:
    """Whether checking as root hid something: there are files or devices whose access was checked."""
    if os.geteuid() != 0:
        return False
    files = any(isinstance(v, Path) for _, v in secret_refs(cfg))
    return files or any(plugin_for(m.protocol).devices(m) for m in cfg.machines)
