"""``andon-agent check`` says what ``run`` will miss on this host: the token's variable, a secret file
the user cannot read, a serial port that is missing or not allowed. Real files, a real pseudo-terminal
as the serial port, and the real command run as an unprivileged user (root ignores file modes, so a
test running as root drops to ``nobody`` for the permission cases)."""

from __future__ import annotations

import contextlib
import grp
import io
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.cli import main
from tests.logkeeping import kept_logging

NOBODY = 65534
AS_ROOT = os.geteuid() == 0


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory any user may read (pytest's tmp_path is private to its owner)."""
    path = Path(tempfile.mkdtemp(prefix="andon-check-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


def write_config(directory: Path, *, serial: str | None = None, sink: str = "") -> Path:
    where = f'serial = "{serial}"' if serial else 'host = "127.0.0.1"'
    path = directory / "agent.toml"
    path.write_text(f"""
[agent]
state_dir = "{directory}/state"

[[machines]]
id = "press-1"
protocol = "modbus"
{where}

  [[machines.signals]]
  id = "wear"
  address = 0

[[sinks]]
id = "up"
kind = "http"
url = "https://upstream.example.com/alerts"
{sink}
""")
    path.chmod(0o644)
    return path


def check(config: Path, *, unprivileged: bool = True, groups: list[int] | None = None) -> tuple[int, list[str]]:
    """The real command (``main``), run by a user file modes apply to: when the tests run as root, in
    a forked child that became ``nobody`` (with ``groups``), as systemd would start the agent as its
    user. (Forked, not exec'd: the interpreter may live where ``nobody`` cannot go.)"""
    argv = ["check", "--config", str(config)]
    with kept_logging(), contextlib.redirect_stdout(io.StringIO()):
        main(argv)  # every module the command needs is imported now, while we may still read them
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 99
        try:
            os.close(read)
            if unprivileged and AS_ROOT:
                os.setgroups(groups or [])
                os.setgid(NOBODY)
                os.setuid(NOBODY)
            os.environ.pop("ANDON_TEST_TOKEN", None)
            with os.fdopen(write, "w") as out, contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
                code = main(argv)
        finally:
            os._exit(code)
    os.close(write)
    with os.fdopen(read) as out:
        lines = out.read().splitlines()
    _, wait_status = os.waitpid(pid, 0)
    status = os.waitstatus_to_exitcode(wait_status)
    assert status != 99 and not any("config error" in line for line in lines), lines
    return status, lines


def me() -> str:
    return f"uid {NOBODY}" if AS_ROOT else f"uid {os.geteuid()}"


def test_a_token_variable_not_set_here_is_a_warning(
    shared_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write_config(shared_dir, sink='token_env = "ANDON_TEST_TOKEN"')
    monkeypatch.delenv("ANDON_TEST_TOKEN", raising=False)
    with kept_logging():
        assert main(["check", "--config", str(config)]) == 0
    out = capsys.readouterr().out.splitlines()
    [line] = [line for line in out if "ANDON_TEST_TOKEN" in line and line.startswith("warning")]
    assert line.startswith("warning: sinks[0].token_env: environment variable ANDON_TEST_TOKEN is not set")
    assert "the service must provide it" in line and out[-1] == "config OK"
    monkeypatch.setenv("ANDON_TEST_TOKEN", "s3cr3t")
    with kept_logging():
        assert main(["check", "--config", str(config)]) == 0
    text = capsys.readouterr().out
    assert "ANDON_TEST_TOKEN" not in text.replace("token from $ANDON_TEST_TOKEN", "") and "s3cr3t" not in text


def test_a_token_file_the_user_cannot_read_is_an_error(shared_dir: Path) -> None:
    token = shared_dir / "token"
    token.write_text("s3cr3t\n")
    token.chmod(0o000)
    status, out = check(write_config(shared_dir, sink=f'token_file = "{token}"'))
    [line] = [line for line in out if line.startswith("error")]
    assert line == f"error: sinks[0].token_file: permission denied: {me()}" + line.split(me(), 1)[1]
    assert f"cannot read {token}" in line and "mode ----------" in line
    assert status == 2 and "would not start" in out[-1]  # `run` refuses to start on it: exit 2, as run would
    assert all("s3cr3t" not in line for line in out)


@pytest.mark.parametrize(
    ("name", "content", "level", "status", "says"),
    [
        ("missing", None, "error", 2, "does not exist"),
        ("empty", "", "error", 2, "is empty"),
        ("readable", "s3cr3t\n", None, 0, ""),
    ],
)
def test_token_files(
    shared_dir: Path, name: str, content: str | None, level: str | None, status: int, says: str
) -> None:
    token = shared_dir / name
    if content is not None:
        token.write_text(content)
        token.chmod(0o644)
    got, out = check(write_config(shared_dir, sink=f'token_file = "{token}"'))
    lines = [line for line in out if line.startswith(("error", "warning"))]
    assert got == status, out
    if level is None:
        assert lines == [] and out[-1] == "config OK"
    else:
        assert lines == [f"{level}: sinks[0].token_file: {token} {says}"]


def test_a_systemd_credential_is_not_checked_from_outside_the_service(shared_dir: Path) -> None:
    status, out = check(write_config(shared_dir, sink='token_file = "/run/credentials/andon-agent.service/token"'))
    [line] = [line for line in out if line.startswith("warning")]
    assert "exists only inside the running service (systemd LoadCredential=)" in line
    assert status == 0


@pytest.fixture
def serial_port() -> Iterator[str]:
    """A real character device that behaves as a serial port: a pseudo-terminal's slave side, owned
    as a USB serial adapter is (root:dialout, 0660) when the tests run as root."""
    leader, follower = os.openpty()
    path = os.ttyname(follower)
    try:
        if AS_ROOT:
            os.chown(path, 0, grp.getgrnam("dialout").gr_gid)
            os.chmod(path, 0o660)
        yield path
    finally:
        os.close(follower)
        os.close(leader)


def test_a_serial_port_the_user_may_not_open_names_the_group(shared_dir: Path, serial_port: str) -> None:
    if not AS_ROOT:  # our own pty: take our own access away
        os.chmod(serial_port, 0o000)
    status, out = check(write_config(shared_dir, serial=serial_port))
    [line] = [line for line in out if line.startswith("error")]
    group = grp.getgrgid(os.stat(serial_port).st_gid).gr_name
    assert line.startswith(f"error: machines[0].serial: permission denied: {me()}")
    assert f"may not open {serial_port} (owner " in line
    assert f"add the user to group {group} (sudo usermod -aG {group} <user>" in line and "dialout" in line
    assert status == 1


@pytest.mark.skipif(not AS_ROOT, reason="needs root to give the port to group dialout")
def test_a_serial_port_is_fine_for_a_member_of_its_group(shared_dir: Path, serial_port: str) -> None:
    dialout = grp.getgrnam("dialout").gr_gid
    status, out = check(write_config(shared_dir, serial=serial_port), groups=[dialout])
    assert [line for line in out if line.startswith(("error", "warning"))] == []
    assert (status, out[-1]) == (0, "config OK")


@pytest.mark.parametrize(
    ("port", "level", "status", "says"),
    [
        ("/dev/ttyUSB-andon-absent", "warning", 0, "does not exist: is the adapter plugged in?"),
        ("{dir}/agent.toml", "error", 1, "is not a serial port (not a character device)"),
        ("socket://127.0.0.1:5020", None, 0, ""),  # a pyserial URL: nothing local to check
    ],
)
def test_serial_ports(shared_dir: Path, port: str, level: str | None, status: int, says: str) -> None:
    port = port.format(dir=shared_dir)
    got, out = check(write_config(shared_dir, serial=port), unprivileged=False)
    lines = [line for line in out if line.startswith(("error", "warning"))]
    assert got == status, out
    assert [line[: len(f"{level}: machines[0].serial: {port} {says}")] for line in lines] == (
        [f"{level}: machines[0].serial: {port} {says}"] if level else []
    )
    if level == "warning":
        assert lines[0].endswith("the agent keeps trying to open it")


def test_as_root_a_note_says_to_check_as_the_agents_user(shared_dir: Path) -> None:
    token = shared_dir / "token"
    token.write_text("t\n")
    _, out = check(write_config(shared_dir, sink=f'token_file = "{token}"'), unprivileged=False)
    notes = [line for line in out if line.startswith("note: checked as root")]
    assert len(notes) == (1 if AS_ROOT else 0)
