"""The web page on a phone-sized screen (headless Chromium, 390 x 844 CSS pixels), against a faultlab proxy in this
process: the profile selector opens on the profile in force for its target (so one tap never applies a fault
nobody chose), the live ladder gives each device its own column, and the sticky page header never covers the
ladder's first row. Waits poll the page (WebDriverWait) with a timeout; no fixed sleeps."""

from __future__ import annotations

import socket

import pytest
import trio

from faultlab.api import client
from faultlab.addr import parse_endpoint
from faultlab.api.run import serve_proxy_with_api
from faultlab.proxy import ProxyConfig
from tests.browser.test_web_page import HOST, Page, browser, wait_api  # noqa: F401  (browser: the fixture)

pytestmark = [pytest.mark.browser, pytest.mark.integration]

from selenium.webdriver.common.by import By  # noqa: E402  (after test_web_page's importorskip)
from selenium.webdriver.support.select import Select  # noqa: E402


async def start_proxy(nursery):
    pbx = trio.socket.socket(type=socket.SOCK_DGRAM)
    await pbx.bind((HOST, 0))
    proxy = await nursery.start(serve_proxy_with_api, ProxyConfig(
        listen=[parse_endpoint(f"udp:{HOST}:0")], upstream=[parse_endpoint(f"udp:{HOST}:{pbx.getsockname()[1]}")],
        seed=11, api=(HOST, 0)))
    return proxy, pbx, f"http://{HOST}:{proxy.api_address[1]}"


def selected(page: Page) -> str:
    return Select(page.d.find_element(By.ID, "profile-select")).first_selected_option.get_attribute("value")


def shows(page: Page, name: str, what: str) -> None:
    page.until(f"the selector on {name or 'no profile'} ({what})", lambda d: selected(page) == name)


async def test_the_profile_selector_opens_on_the_profile_in_force_for_its_target(nursery, browser):
    proxy, pbx, api = await start_proxy(nursery)
    await trio.to_thread.run_sync(lambda: client.set_profile(api, "register-503"))
    await trio.to_thread.run_sync(lambda: client.set_profile(api, "invite-drop", device="127.0.0.2"))
    page = Page(browser)
    await page.run(page.open, api + "/")
    await page.run(shows, page, "register-503", "the global profile, not the library's first entry")
    assert "all devices" in await page.run(page.text, "profile-target")

    # choosing a device shows that device's profile; a device without one shows the global one it follows
    await page.run(page.type, "device-input", "127.0.0.2")
    await page.run(shows, page, "invite-drop", "127.0.0.2's own")
    assert await page.run(page.text, "profile-target") == "Showing 127.0.0.2's own profile."
    await page.run(page.type, "device-input", "127.0.0.3:5060")
    await page.run(shows, page, "register-503", "127.0.0.3 follows the global one")
    assert "127.0.0.3:5060 has no profile of its own" in await page.run(page.text, "profile-target")
    await page.run(page.type, "device-input", "127.0.0.2:5060")  # IP:PORT gets the IP's profile, as the relay does
    await page.run(shows, page, "invite-drop", "127.0.0.2's own, for any port")

    # one tap on "Use for this device" re-applies what is in force: no other fault
    await page.run(page.click, "apply-device")
    await wait_api(lambda: client.get_active(api)["devices"].get("127.0.0.2:5060", {}).get("name") == "invite-drop",
                   "invite-drop kept for 127.0.0.2:5060")
    assert ((await trio.to_thread.run_sync(client.get_active, api))["global"] or {}).get("name") == "register-503"

    # back to every device; a change made elsewhere (the CLI) moves the selector while the user has not touched it
    await page.run(page.type, "device-input", "")
    await page.run(shows, page, "register-503", "the global profile again")
    # a field emptied without an `input` event (autofill, a script, WebDriver's clear(): only `change`) as well
    await page.run(page.type, "device-input", "127.0.0.2")
    await page.run(shows, page, "invite-drop", "127.0.0.2's own, typed again")
    await page.run(lambda: browser.find_element(By.ID, "device-input").clear())
    await page.run(shows, page, "register-503", "the global profile after a clear() that fires only `change`")
    await trio.to_thread.run_sync(lambda: client.set_profile(api, "bye-drop"))
    await page.run(shows, page, "bye-drop", "the global profile switched through the API")

    # a choice the user made stays until applied, even when the profile changes elsewhere meanwhile
    await page.run(page.choose, "profile-select", "register-drop")
    await trio.to_thread.run_sync(lambda: client.set_profile(api, "invite-delay-3s"))
    await page.run(page.until, "the page shows invite-delay-3s in force",
                   lambda d: page.text("active-global") == "invite-delay-3s")
    assert await page.run(selected, page) == "register-drop"
    await page.run(page.click, "apply-global")
    await wait_api(lambda: (client.get_active(api)["global"] or {}).get("name") == "register-drop", "register-drop")

    # no profile in force: the selector says so, and a tap applies nothing
    await trio.to_thread.run_sync(lambda: client.set_profile(api, None))
    await page.run(shows, page, "", "none in force")
    await page.run(page.click, "apply-global")
    await page.run(page.until, "a hint to choose", lambda d: page.text("problem") == "Choose a profile from the list first.")
    assert (await trio.to_thread.run_sync(client.get_active, api))["global"] is None
    # the hint stays while refreshes arrive (here: a device's profile set elsewhere, shown on the page)
    await trio.to_thread.run_sync(lambda: client.set_profile(api, "invite-drop", device="127.0.0.9"))
    await page.run(page.until, "127.0.0.9's profile shown",
                   lambda d: "127.0.0.9: invite-drop" in page.text("active-devices"))
    assert await page.run(page.text, "problem") == "Choose a profile from the list first."
    pbx.close()


GEOMETRY = """
const box = (e) => e.getBoundingClientRect();
const header = box(document.querySelector("header"));
const head = box(document.querySelector(".ladder-head"));
const row = document.querySelector("#ladder-rows .row");
const label = box(row.querySelector(".label"));
const hit = document.elementFromPoint(label.left + label.width / 2, label.top + label.height / 2);
const h2 = box(document.querySelector("#ladder-section h2"));
const spill = [...document.querySelectorAll("#ladder-parties span")].some((s) => box(s).bottom > head.bottom);
return {header: header.bottom, headTop: head.top, headBottom: head.bottom, rowTop: box(row).top, spill,
        firstRowVisible: row.contains(hit), h2Top: h2.top, scrollY: window.scrollY};
"""


def invite(port: int, cseq: int, method: str = "INVITE") -> bytes:
    return (f"{method} sip:bob@lab.test SIP/2.0\r\nVia: SIP/2.0/UDP {HOST}:{port};branch=z9hG4bK{port}x{cseq};rport\r\n"
            f"From: <sip:alice@lab.test>;tag={port}\r\nTo: <sip:bob@lab.test>\r\nCall-ID: two-devices\r\n"
            f"CSeq: {cseq} {method}\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n").encode()


async def test_the_ladder_has_a_column_per_device_and_the_header_never_covers_its_first_row(nursery, browser):
    proxy, pbx, api = await start_proxy(nursery)
    page = Page(browser)
    await page.run(page.open, api + "/")
    assert await page.run(browser.execute_script, "return [innerWidth, innerHeight]") == [390, 844]

    devices = []
    for i in range(2):  # long addresses (still loopback) that must wrap in a column a quarter of a phone wide
        sock = trio.socket.socket(type=socket.SOCK_DGRAM)
        await sock.bind((f"127.0.10.{200 + i}", 0))
        devices.append(sock)
    names = [f"127.0.10.{200 + i}:{d.getsockname()[1]}" for i, d in enumerate(devices)]
    with trio.fail_after(10):
        for cseq in range(1, 6):  # enough rows for the ladder to be taller than the screen
            for device in devices:
                await device.sendto(invite(device.getsockname()[1], cseq), proxy.bound["udp"])
                await pbx.recv(65535)

    def columns(d):
        found = [s.get_attribute("data-column") for s in d.find_elements(By.CSS_SELECTOR, "#ladder-parties span")]
        return found if len(d.find_elements(By.CSS_SELECTOR, "#ladder-rows .row")) == 20 else None

    found = await page.run(page.until, "the ladder of both devices' INVITEs", columns)
    assert found == [*names, "faultlab", "pbx"]
    rows = await page.run(browser.find_elements, By.CSS_SELECTOR, "#ladder-rows .row")
    ends = [(r.get_attribute("data-from"), r.get_attribute("data-to")) for r in rows[:4]]
    assert ends == [(names[0], "faultlab"), ("faultlab", "pbx"), (names[1], "faultlab"), ("faultlab", "pbx")]
    # each device's arrow starts under its own column's name
    for row, name in ((rows[0], names[0]), (rows[2], names[1])):
        arrow = await page.run(row.find_element, By.CSS_SELECTOR, ".arrow")
        heading = await page.run(browser.find_element, By.CSS_SELECTOR, f'#ladder-parties span[data-column="{name}"]')
        centre = heading.rect["x"] + heading.rect["width"] / 2
        assert abs(arrow.rect["x"] - centre) < 3, (arrow.rect, heading.rect)

    # the header covers neither the first row nor the section's title, wherever the page is scrolled to
    for scroll in ("window.scrollTo(0, 0)",
                   "document.getElementById('ladder-section').scrollIntoView()",
                   "document.getElementById('ladder').scrollIntoView()",
                   "window.scrollTo(0, document.getElementById('ladder').getBoundingClientRect().top"
                   " + window.scrollY - 52)"):
        await page.run(browser.execute_script, scroll)
        g = await page.run(browser.execute_script, GEOMETRY)
        assert g["headTop"] >= g["header"] - 0.5, (scroll, g)  # the ladder's head is never under the page's
        assert not g["spill"], (scroll, g)  # the column names (wrapped) stay inside the ladder's head
        if g["rowTop"] < 844:  # the first row is on the screen: it is visible, under neither header
            assert g["firstRowVisible"] and g["rowTop"] >= g["headBottom"] - 0.5, (scroll, g)
        if "ladder-section" in scroll:
            assert g["h2Top"] >= g["header"], (scroll, g)
    # scrolled past its first rows, the ladder's head sticks just below the page's header
    await page.run(browser.execute_script, "document.querySelectorAll('#ladder-rows .row')[8].scrollIntoView()")
    g = await page.run(browser.execute_script, GEOMETRY)
    assert abs(g["headTop"] - g["header"]) < 1, g
    for device in devices:
        device.close()
    pbx.close()
