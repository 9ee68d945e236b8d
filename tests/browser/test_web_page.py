"""The control API's web page in headless Chromium (Debian ``chromium`` and ``chromium-driver``, driven by Selenium
through /usr/bin/chromedriver, so nothing is downloaded), against a running faultlab.

1. Every lab actor as a process on loopback, as in tests/loopback/test_lab_processes.py; the device also posts
   its events to faultlab's ``POST /events``, as an instrumented app does. faultlab's timeline has only its own SIP
   events and the device's (the push goes around it, as Apple's push service does for a real iPhone)::

       caller (this test) --udp--> faultlab pbx <--udp-- faultlab proxy (--api) <--udp-- faultlab device
                                       |                   ^    ^                            ^   |
                                       +--HTTP/2--> faultlab push-gateway --stream-----------+   |
                                                           |    +--- POST /events (--events-url)-+
                                                       Chromium (the page: profiles, ladder, guided S02)

   Choosing a profile on the page changes the API's state (read back with faultlab.api.client); a SIP message
   sent through faultlab appears in the ladder; a guided scenario (S02: INVITE delayed 3 s) switches its faults
   on, marks the delayed INVITE in the ladder, and renders its verdict once the device's events arrive.
2. An API with a token, in this process: the page takes ``/?token=``, and the live ladder follows the timeline
   over ``fetch`` (EventSource cannot send the token).

Every wait polls the page's DOM (WebDriverWait) or a process's output, with a timeout; no fixed sleeps. Selenium
calls block, so they run in worker threads while trio serves the proxy.
"""

from __future__ import annotations

import re
import socket
from functools import partial
from pathlib import Path

import pytest
import trio

from faultlab.api import client
from faultlab.lab.caller import Caller
from faultlab.lab.timeline import Timeline
from faultlab.addr import parse_endpoint
from faultlab.api.run import serve_proxy_with_api
from faultlab.proxy import ProxyConfig
from tests.actors import actor_env, open_actors
from tests.browser.chrome import open_chrome

# integration: skips (no Chromium) count as failures under CI=true (tests/conftest.py)
pytestmark = [pytest.mark.browser, pytest.mark.integration]

HOST = "127.0.0.1"
PUSH_TOKEN = "a1b2c3d4e5f60718"
WAIT = 20.0  # seconds for any one page condition

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[test]')")
from selenium.common.exceptions import StaleElementReferenceException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.select import Select  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


@pytest.fixture
def browser():
    # a phone's screen: headless Chromium's window is at least 500 pixels wide, the emulated viewport is not
    driver = open_chrome("390,844", mobile={"width": 390, "height": 844, "pixelRatio": 2})
    try:
        yield driver
    finally:
        driver.quit()


class Page:
    """The page in the browser; every method blocks, so call them through :meth:`run` from trio."""

    def __init__(self, driver) -> None:
        self.d = driver

    async def run(self, fn, *args):
        return await trio.to_thread.run_sync(partial(fn, *args))

    def until(self, what: str, condition, timeout: float = WAIT):
        """Poll ``condition(driver)`` until it is truthy; on timeout, fail with what was awaited and the page."""
        def check(driver):
            try:
                return condition(driver)
            except StaleElementReferenceException:  # the page re-rendered that part: look again
                return False
        try:
            return WebDriverWait(self.d, timeout, poll_frequency=0.1).until(check)
        except Exception as exc:
            text = self.d.find_element(By.TAG_NAME, "body").text
            raise AssertionError(f"page: {what} within {timeout} s did not happen; the page shows:\n{text}") from exc

    def text(self, element_id: str) -> str:
        return self.d.find_element(By.ID, element_id).text

    def open(self, url: str) -> None:
        self.d.get(url)
        self.until("ready and following the timeline", lambda d: d.find_element(By.TAG_NAME, "body")
                   .get_attribute("data-ready") == "true" and self.text("live") == "live")
        self.until("the profile library listed", lambda d: len(Select(d.find_element(By.ID, "profile-select"))
                                                              .options) > 3)

    def choose(self, select_id: str, value: str) -> None:
        Select(self.d.find_element(By.ID, select_id)).select_by_value(value)

    def click(self, element_id: str) -> None:
        """Click as a user does once the button stands still: live rows arriving above it move the page, and a
        click aimed at where it was lands on whatever is there now (chromedriver does not always notice)."""
        element = self.d.find_element(By.ID, element_id)
        self.d.execute_script("arguments[0].scrollIntoView({block: 'center'})", element)
        last = None

        def still(_driver):
            nonlocal last
            here = (element.rect["x"], element.rect["y"], self.d.execute_script("return window.scrollY"))
            steady, last = here == last, here
            return steady

        self.until(f"the {element_id} button to stand still", still)
        element.click()

    def type(self, element_id: str, text: str) -> None:
        """Replace the field's text as a user does, with keys (select all, delete, type): each key fires the
        ``input`` event the page follows. WebDriver's ``clear()`` fires no ``input`` event in Chromium."""
        box = self.d.find_element(By.ID, element_id)
        box.send_keys(Keys.CONTROL, "a")
        box.send_keys(Keys.BACKSPACE)
        if text:
            box.send_keys(text)
        self.until(f"{element_id} holding {text!r}", lambda d: box.get_attribute("value") == text)

    def ladder_row(self, label: str, fault: str | None = None):
        """Wait for a ladder row with this arrow label (and a fault text containing ``fault``)."""
        def row(d):
            for r in d.find_elements(By.CSS_SELECTOR, "#ladder-rows .row"):
                if r.get_attribute("data-label") == label and (
                        fault is None or fault in r.text and "fault" in r.get_attribute("class").split()):
                    return r
            return None
        return self.until(f"a ladder row {label}" + (f" marked {fault!r}" if fault else ""), row)


async def wait_api(condition, what: str, timeout: float = WAIT):
    """Poll the API (through the stdlib client, in a thread) until ``condition()`` holds."""
    with trio.move_on_after(timeout):
        while True:
            value = await trio.to_thread.run_sync(condition)
            if value:
                return value
            await trio.sleep(0.05)
    raise AssertionError(f"API: {what} within {timeout} s did not happen")


async def test_the_page_against_faultlab_and_the_lab_actors_as_processes(tmp_path, browser):
    page = Page(browser)
    async with open_actors(actor_env(tmp_path / "home")) as actors:
        with trio.fail_after(40):  # four interpreter start-ups
            gateway = await actors.spawn("push-gateway", "push-gateway", "--listen", f"{HOST}:0")
            p = int((await gateway.wait_line("stderr", r"push gateway on http://127\.0\.0\.1:(\d+) ")).group(1))
            pbx = await actors.spawn("pbx", "pbx", "--listen", f"udp:{HOST}:0", "--push-url", f"http://{HOST}:{p}")
            q = int((await pbx.wait_line("stderr", r"^faultlab pbx: udp on 127\.0\.0\.1:(\d+)$")).group(1))
            proxy = await actors.spawn("proxy", "proxy", "--listen", f"udp:{HOST}:0", "--upstream",
                                       f"udp:{HOST}:{q}", "--api", f"{HOST}:0", "-q")
            r = int((await proxy.wait_line("stderr", r"^faultlab: listening on udp:127\.0\.0\.1:(\d+) ")).group(1))
            a = int((await proxy.wait_line("stderr", r"control API on http://127\.0\.0\.1:(\d+)$")).group(1))
            api = f"http://{HOST}:{a}"
            device = await actors.spawn("device", "device", "--proxy", f"udp:{HOST}:{r}", "--user", "alice",
                                        "--domain", "lab.test", "--name", "alice-iphone", "--token", PUSH_TOKEN,
                                        "--push-url", f"http://{HOST}:{p}/devices/{PUSH_TOKEN}/pushes",
                                        "--answer-after", "1s", "--events-url", api)
            await device.wait_line("stderr", r"initial REGISTER: 200$")
            await gateway.wait_line("stdout", rf" device +connected token={PUSH_TOKEN}")

        await page.run(page.open, api + "/")

        # 1. profiles: globally, for one device, and back; the API's state follows each click
        await page.run(page.choose, "profile-select", "register-503")
        await page.run(page.click, "apply-global")
        await wait_api(lambda: (client.get_active(api)["global"] or {}).get("name") == "register-503",
                       "the global profile register-503")
        await page.run(page.until, "the page shows it", lambda d: page.text("active-global") == "register-503")
        await page.run(page.click, "clear-global")
        await wait_api(lambda: client.get_active(api)["global"] is None, "no global profile")
        await page.run(page.type, "device-input", "127.0.0.1")  # first the device: the selector shows its profile
        await page.run(page.choose, "profile-select", "invite-drop")
        await page.run(page.click, "apply-device")
        await wait_api(lambda: client.get_active(api)["devices"].get("127.0.0.1", {}).get("name") == "invite-drop",
                       "invite-drop for 127.0.0.1")
        await page.run(page.until, "the device's own profile shown",
                       lambda d: "127.0.0.1: invite-drop" in page.text("active-devices"))
        await page.run(page.click, "clear-device")
        await wait_api(lambda: client.get_active(api)["devices"] == {}, "no device profile")

        # 2. the flows list, and a SIP message sent through faultlab now appears in the ladder (live)
        await page.run(page.until, "the device's flow listed",
                       lambda d: d.find_elements(By.CSS_SELECTOR, "#flows tbody tr[data-flow]"))
        probe = trio.socket.socket(type=socket.SOCK_DGRAM)
        await probe.bind((HOST, 0))
        options = (f"OPTIONS sip:lab.test SIP/2.0\r\nVia: SIP/2.0/UDP {HOST}:{probe.getsockname()[1]};branch="
                   f"z9hG4bKprobe1;rport\r\nFrom: <sip:probe@lab.test>;tag=p\r\nTo: <sip:lab.test>\r\n"
                   f"Call-ID: probe-1\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n").encode()
        await probe.sendto(options, (HOST, r))
        row = await page.run(page.ladder_row, "OPTIONS")
        assert row.get_attribute("data-from") == f"{HOST}:{probe.getsockname()[1]}"  # the sender's own column
        assert row.get_attribute("data-to") == "faultlab"
        probe.close()

        # 3. a guided scenario: S02 switches its own faults on (the INVITE delayed 3 s), prompts, then the verdict
        await page.run(page.choose, "scenario-select", "S02")
        await page.run(page.click, "guided-start")
        await wait_api(lambda: (client.get_active(api)["global"] or {}).get("name") == "invite-delay-3s",
                       "S02's faults switched on")
        await page.run(page.until, "the prompt to call the device's AOR",
                       lambda d: page.text("guided-prompt") == "Call sip:alice@lab.test from another phone now")
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                caller = Caller("udp", (HOST, q), "bob", Timeline(), domain="lab.test", timeout=15.0)
                await caller.start(nursery)
                call = await caller.call("sip:alice@lab.test")
                final = await call.wait_final()
                assert final.status == 200, call.statuses
                # the device reported the call (its event posted to /events): the page moved on from "Call ..."
                await page.run(page.until, "the prompts past the call",
                               lambda d: page.text("guided-prompt") != "Call sip:alice@lab.test from another phone now"
                               and d.find_elements(By.CSS_SELECTOR, '#guided-steps li.done[data-step="call"]'))
                # the guided call is the ladder's: its INVITE reached the device 3 s late, marked as a fault
                await page.run(page.ladder_row, "INVITE", "delayed 3s [delay-invite-3s]")
                await call.hang_up()
                await caller.close()
                nursery.cancel_scope.cancel()
        verdict = await page.run(page.until, "a verdict", lambda d: d.find_element(By.ID, "verdict")
                                 .get_attribute("data-passed"))
        text = await page.run(page.text, "verdict")
        assert verdict == "true", text
        assert text.startswith("PASS") and "✓ ends-right" in text and "✓ invariants" in text, text
        assert "the iPhone ended the call (remoteEnded)" in text and call.call_id in text
        assert (await page.run(page.text, "guided-prompt")).startswith("Done: the iPhone ended the call")

        # finishing puts back the profile active before the run (none)
        await page.run(page.click, "guided-stop")
        await wait_api(lambda: client.get_active(api)["global"] is None, "the profile before the run back")
        await actors.stop_lab(device, proxy, pbx, gateway)
    posted = [line for line in device.lines["stderr"] if "posting" in line]
    assert posted == [], posted  # every device event reached /events


async def test_the_page_with_an_api_token_follows_the_timeline_over_fetch(nursery, browser):
    token = "page-token-1234"
    pbx = trio.socket.socket(type=socket.SOCK_DGRAM)
    await pbx.bind((HOST, 0))
    proxy = await nursery.start(serve_proxy_with_api, ProxyConfig(
        listen=[parse_endpoint(f"udp:{HOST}:0")], upstream=[parse_endpoint(f"udp:{HOST}:{pbx.getsockname()[1]}")],
        seed=3, api=(HOST, 0), api_token=token))
    api = f"http://{HOST}:{proxy.api_address[1]}"
    page = Page(browser)
    await page.run(page.open, f"{api}/?token={token}")
    assert "token" not in browser.current_url  # taken out of the address bar (and its history)

    await page.run(page.choose, "profile-select", "bye-drop")
    await page.run(page.click, "apply-global")
    await wait_api(lambda: (client.get_active(api, token=token)["global"] or {}).get("name") == "bye-drop",
                   "bye-drop through the token")

    device = trio.socket.socket(type=socket.SOCK_DGRAM)
    await device.bind((HOST, 0))
    register = (f"REGISTER sip:lab.test SIP/2.0\r\nVia: SIP/2.0/UDP {HOST}:{device.getsockname()[1]};branch="
                f"z9hG4bKt1;rport\r\nFrom: <sip:carol@lab.test>;tag=c\r\nTo: <sip:carol@lab.test>\r\n"
                f"Call-ID: tok-reg-1\r\nCSeq: 1 REGISTER\r\nContent-Length: 0\r\n\r\n").encode()
    await device.sendto(register, proxy.bound["udp"])
    with trio.fail_after(5):
        await pbx.recv(65535)
    await page.run(page.ladder_row, "REGISTER")
    device.close()
    pbx.close()



BAD_GATEWAY = """
const [path, done] = arguments;
const real = window.fetch;
window.fetch = (url, init) => url === path
  ? Promise.resolve(new Response("<html><body><h1>502 Bad Gateway</h1></body></html>",
                                 {status: 502, statusText: "Bad Gateway", headers: {"Content-Type": "text/html"}}))
  : real(url, init);
api("GET", path).then(() => done("resolved"), (err) => done(document.getElementById("problem").textContent
                                                             + " | " + String(err && err.message)));
"""


async def test_an_error_that_is_not_json_shows_its_status(nursery, browser):
    """A reverse proxy in front of faultlab may answer an HTML 502: the page says "HTTP 502 Bad Gateway"."""
    pbx = trio.socket.socket(type=socket.SOCK_DGRAM)
    await pbx.bind((HOST, 0))
    proxy = await nursery.start(serve_proxy_with_api, ProxyConfig(
        listen=[parse_endpoint(f"udp:{HOST}:0")], upstream=[parse_endpoint(f"udp:{HOST}:{pbx.getsockname()[1]}")],
        seed=5, api=(HOST, 0)))
    page = Page(browser)
    await page.run(page.open, f"http://{HOST}:{proxy.api_address[1]}/")
    shown = await page.run(browser.execute_async_script, BAD_GATEWAY, "/api/behind-a-gateway")
    assert shown == "HTTP 502 Bad Gateway | HTTP 502 Bad Gateway", shown
    assert await page.run(page.text, "problem") == "HTTP 502 Bad Gateway"
    pbx.close()

def test_the_page_has_no_external_resources():
    """No CDN, no external fonts: the page, its script and its style sheet load from faultlab only."""
    static = Path(__file__).resolve().parents[2] / "faultlab" / "api" / "static"
    for path in static.iterdir():
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text, re.IGNORECASE), path.name
