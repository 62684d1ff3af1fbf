"""The board in a real browser (Debian's headless Chromium via Selenium): it shows the machines,
follows alerts without a reload, shows offline, acknowledges with the token, refuses without it,
and shows a hostile message as text. One browser for the session; a board server per test."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable

import pytest

from agent.model import Severity
from agent.ops.board.web import BoardServer
from tests.board_helpers import Browser, StubSource

TOKEN = "board-token-123"
Make = Callable[..., contextlib.AbstractAsyncContextManager[tuple[BoardServer, StubSource]]]


@pytest.fixture
def board(browser: Browser) -> Make:
    @contextlib.asynccontextmanager
    async def make(token: str | None = TOKEN) -> AsyncIterator[tuple[BoardServer, StubSource]]:
        source = StubSource(["press-1", "press-2", "lathe-3"])
        source.ack_enabled = token is not None
        async with BoardServer(source, "127.0.0.1", 0, token=token) as server:
            await browser.run(browser.driver.set_window_size, 1280, 900)
            await browser.open(f"http://127.0.0.1:{server.port}/")
            await browser.until("return window.andonBoard && window.andonBoard.renders > 0")
            await browser.js("window.__loadedOnce = true; localStorage.clear();")  # a reload would lose it
            yield server, source
            await browser.open("about:blank")

    return make


async def state_of(browser: Browser, machine: str) -> str:
    state: str = await browser.js(f"return document.querySelector('[data-machine=\"{machine}\"]').dataset.state")
    return state


async def test_board_shows_every_machine(browser: Browser, board: Make) -> None:
    async with board():
        tiles = await browser.js(
            "return [...document.querySelectorAll('[data-machine]')].map(t => [t.dataset.machine, t.dataset.state])"
        )
        assert tiles == [["press-1", "ok"], ["press-2", "ok"], ["lathe-3", "ok"]]
        assert await browser.js("return document.getElementById('link').dataset.link") == "live"
        errors = [e for e in await browser.run(browser.driver.get_log, "browser") if e["level"] == "SEVERE"]
        assert errors == []  # no missing file, no script error, no CSP violation


async def test_board_follows_a_raised_and_a_cleared_alert_without_a_reload(browser: Browser, board: Make) -> None:
    async with board() as (server, source):
        source.raise_("press-1/wear", Severity.WARNING, "press-1 tool1_wear 81.2 % over 80 %")
        server.changed()
        await browser.until("return document.querySelector('[data-alert=\"press-1/wear\"]')", within=2)
        assert await state_of(browser, "press-1") == "warning"
        text = await browser.js("return document.querySelector('[data-alert=\"press-1/wear\"] .msg').textContent")
        assert text == "press-1 tool1_wear 81.2 % over 80 %"
        source.raise_("press-1/fault", Severity.CRITICAL, "Spindle fault")
        server.changed()
        await browser.until("return document.querySelector('[data-machine=\"press-1\"]').dataset.state === 'critical'")
        order = await browser.js(
            "return [...document.querySelectorAll('[data-machine=\"press-1\"] [data-alert]')]"
            ".map(a => [a.dataset.alert, a.dataset.severity])"
        )
        assert order == [["press-1/fault", "critical"], ["press-1/wear", "warning"]]  # worst first
        flashing = await browser.js(
            "return getComputedStyle(document.querySelector('[data-alert=\"press-1/fault\"]')).animationName"
        )
        assert flashing == "flash"  # a critical alert flashes until acknowledged
        source.clear("press-1/fault")
        source.clear("press-1/wear")
        server.changed()
        await browser.until("return !document.querySelector('[data-machine=\"press-1\"] [data-alert]')", within=2)
        assert await state_of(browser, "press-1") == "ok"
        assert await browser.js("return window.__loadedOnce === true")  # the same page all along


async def test_board_shows_a_machine_offline(browser: Browser, board: Make) -> None:
    async with board() as (server, source):
        source.raise_("press-2/offline", Severity.WARNING, "press-2 is not answering")
        server.changed()
        await browser.until("return document.querySelector('[data-machine=\"press-2\"]').dataset.state === 'offline'")
        colour = await browser.js(
            "return getComputedStyle(document.querySelector('[data-machine=\"press-2\"]')).borderTopColor"
        )
        assert colour == "rgb(30, 111, 217)"  # IEC 60073 blue
        assert await browser.js("return document.querySelector('[data-alert=\"press-2/offline\"]').dataset.severity")


async def open_ack_dialog(browser: Browser, key: str) -> None:
    await browser.js(f"document.querySelector('[data-alert=\"{key}\"] button.ack').click()")
    await browser.until("return document.getElementById('ack-dialog').open")


async def fill_and_send(browser: Browser, by: str, note: str, token: str) -> None:
    await browser.js(
        "const f = document.getElementById('ack-form');"
        "f.elements.by.value = arguments[0]; f.elements.note.value = arguments[1];"
        "f.elements.token.value = arguments[2];"
        "document.getElementById('ack-send').click();",
        by,
        note,
        token,
    )


async def test_board_acknowledges_with_the_token(browser: Browser, board: Make) -> None:
    async with board() as (server, source):
        source.raise_("press-1/fault", Severity.CRITICAL, "Spindle fault")
        server.changed()
        await browser.until("return document.querySelector('[data-alert=\"press-1/fault\"] button.ack')")
        assert await browser.js(
            "return document.querySelector('[data-machine=\"press-1\"]').hasAttribute('data-flash')"
        )
        await open_ack_dialog(browser, "press-1/fault")
        await fill_and_send(browser, "Ana", "changing the drive", TOKEN)
        await browser.until("return !document.getElementById('ack-dialog').open")
        assert source.acks == [("press-1/fault", "Ana", "changing the drive")]
        server.changed()  # the agent's commit of the acknowledgement
        await browser.until(
            "return document.querySelector('[data-alert=\"press-1/fault\"]').hasAttribute('data-acked')"
        )
        shown = await browser.js("return document.querySelector('[data-alert=\"press-1/fault\"] .acked').textContent")
        assert shown.startswith("acknowledged by Ana at ") and shown.endswith(": changing the drive")
        assert not await browser.js("return !!document.querySelector('[data-alert=\"press-1/fault\"] button.ack')")
        assert not await browser.js(
            "return document.querySelector('[data-machine=\"press-1\"]').hasAttribute('data-flash')"
        )


async def test_board_refuses_a_wrong_token(browser: Browser, board: Make) -> None:
    async with board() as (server, source):
        source.raise_("press-1/fault", Severity.CRITICAL, "Spindle fault")
        server.changed()
        await browser.until("return document.querySelector('[data-alert=\"press-1/fault\"] button.ack')")
        await open_ack_dialog(browser, "press-1/fault")
        await fill_and_send(browser, "Mallory", "", "guess")
        await browser.until("return document.getElementById('ack-error').textContent === 'wrong token'")
        assert await browser.js("return document.getElementById('ack-dialog').open")
        assert source.acks == [] and not source.active["press-1/fault"].acknowledged


async def test_board_without_a_token_offers_no_button(browser: Browser, board: Make) -> None:
    async with board(token=None) as (server, source):
        source.raise_("press-1/fault", Severity.CRITICAL, "Spindle fault")
        server.changed()
        await browser.until("return document.querySelector('[data-alert=\"press-1/fault\"]')")
        assert await browser.js("return document.querySelectorAll('button.ack').length") == 0


HOSTILE = '<img src=x onerror="window.__pwned=1"></script><script>window.__pwned=2</script> & "x"'


async def test_board_shows_a_hostile_message_as_text(browser: Browser, board: Make) -> None:
    async with board() as (server, source):
        source.raise_("lathe-3/code", Severity.WARNING, HOSTILE)
        server.changed()
        await browser.until("return document.querySelector('[data-alert=\"lathe-3/code\"]')")
        shown = await browser.js("return document.querySelector('[data-alert=\"lathe-3/code\"] .msg').textContent")
        assert shown == HOSTILE
        assert await browser.js("return document.querySelectorAll('#machines img, #machines script').length") == 0
        assert await browser.js("return window.__pwned === undefined")
        await open_ack_dialog(browser, "lathe-3/code")  # the dialog shows it as text too
        assert HOSTILE in await browser.js("return document.getElementById('ack-what').textContent")
        await browser.js("document.getElementById('ack-dialog').close()")


async def test_board_fits_a_phone(browser: Browser, board: Make) -> None:
    async with board() as (server, source):
        await browser.run(browser.driver.set_window_size, 390, 844)
        source.raise_("press-1/fault", Severity.CRITICAL, "Spindle fault on press-1: check the spindle drive")
        server.changed()
        await browser.until("return document.querySelector('[data-alert=\"press-1/fault\"] button.ack')")
        width = await browser.js("return [document.documentElement.scrollWidth, window.innerWidth]")
        assert width[0] <= width[1]  # nothing wider than the screen
        lefts = await browser.js(
            "return [...document.querySelectorAll('.tile')].map(t => Math.round(t.getBoundingClientRect().left))"
        )
        assert len(set(lefts)) == 1  # one column
        button = await browser.js(
            "const r = document.querySelector('button.ack').getBoundingClientRect(); return [r.width, r.height]"
        )
        assert button[0] >= 44 and button[1] >= 40  # a finger can hit it
