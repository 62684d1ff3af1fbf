"""Helpers for the board tests: a board source over real alert states, and headless Chromium.

:class:`StubSource` holds :class:`~agent.pipeline.alertlog.ActiveAlert` values (the real type) and
draws the board with the real view and SVG functions; a test changes them and calls
``server.changed()`` as the agent does on a commit. :class:`Browser` drives Debian's Chromium
through chromedriver (Selenium 4, nothing downloaded); its calls run in a thread so that the
board server, in the test's event loop, keeps answering.
"""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from agent.model import Severity
from agent.ops.board.history import AlertHistory
from agent.ops.board.svg import timeline
from agent.ops.board.view import MachineInfo, board_view
from agent.pipeline.alertlog import ActiveAlert

T = TypeVar("T")
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


class StubSource:
    """A board source for tests: machines and active alerts set by the test."""

    def __init__(self, machines: list[str], *, gateway: str = "gw-test", site: str | None = "lab") -> None:
        self.machines = [MachineInfo(m, "modbus", True, time.time()) for m in machines]
        self.active: dict[str, ActiveAlert] = {}
        self.history = AlertHistory()
        self.gateway, self.site = gateway, site
        self.ack_enabled = False
        self.acks: list[tuple[str, str, str | None]] = []
        self.charts: dict[str, str] = {}

    def raise_(self, key: str, severity: Severity, message: str, since: float | None = None) -> None:
        self.active[key] = ActiveAlert(key, severity, None, message, time.time() if since is None else since)

    def clear(self, key: str) -> None:
        del self.active[key]

    def view(self) -> dict[str, Any]:
        return board_view(
            gateway=self.gateway,
            site=self.site,
            machines=self.machines,
            alerts=self.active.values(),
            ack=self.ack_enabled,
            charts=list(self.charts),
        )

    def alert(self, key: str) -> ActiveAlert | None:
        return self.active.get(key)

    async def acknowledge(self, key: str, by: str, note: str | None) -> bool:
        if key not in self.active:
            return False
        self.acks.append((key, by, note))
        self.active[key] = dataclasses.replace(self.active[key], ack_by=by, ack_at=time.time(), ack_note=note)
        return True

    def history_svg(self, machine: str) -> str | None:
        if machine not in {m.id for m in self.machines}:
            return None
        return timeline(self.history.bars(machine, time.time()), time.time())

    def chart_svg(self, name: str) -> str | None:
        return self.charts.get(name)


def chrome(user_data_dir: Path, *, width: int = 1280, height: int = 900) -> Any:
    """Headless Chromium from Debian's packages (no Selenium Manager, nothing downloaded)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--window-size={width},{height}",
        f"--user-data-dir={user_data_dir}",
    ):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)


class Browser:
    """One Chromium for the whole test session; every call runs in a worker thread."""

    def __init__(self) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="andon-chromium-"))
        self.driver = chrome(self._dir)

    def close(self) -> None:
        self.driver.quit()
        shutil.rmtree(self._dir, ignore_errors=True)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.to_thread(fn, *args)

    async def open(self, url: str) -> None:
        await self.run(self.driver.get, url)

    async def js(self, script: str, *args: Any) -> Any:
        return await self.run(self.driver.execute_script, script, *args)

    async def until(self, script: str, *args: Any, within: float = 5.0) -> Any:
        """Wait until ``script`` (a JS expression returned by a function body) gives a truthy value.

        The browser evaluates it on each animation frame (``execute_async_script``), so this waits
        for the page, not for a clock.
        """
        waiter = """
            const [body, args, within] = [arguments[0], arguments[1], arguments[2]];
            const done = arguments[arguments.length - 1];
            const check = new Function(...args.map((_, i) => 'a' + i), body);
            const end = performance.now() + within * 1000;
            (function step() {
                let value = null;
                try { value = check(...args); } catch (e) { value = null; }
                if (value) return done({ok: true, value});
                if (performance.now() > end) return done({ok: false, value});
                requestAnimationFrame(step);
            })();
        """
        self.driver.set_script_timeout(within + 5)
        result = await self.run(self.driver.execute_async_script, waiter, script, list(args), within)
        assert result["ok"], f"timed out after {within}s waiting for: {script}"
        return result["value"]


def browser_session() -> Iterator[Browser]:
    browser = Browser()
    try:
        yield browser
    finally:
        browser.close()
