"""The web page's endpoints (faultlab.api.web) on a running relay over loopback, without a browser: the page and its
files, the ladder, the scenario catalogue, guided runs (start, status, stop) and device events on the timeline."""

from __future__ import annotations

import socket

import trio
import trio.testing

from faultlab.api import client
from faultlab.faults import load_profile
from faultlab.addr import parse_endpoint
from faultlab.api.run import serve_proxy_with_api
from faultlab.proxy import ProxyConfig
from faultlab.sip import build_response, parse_datagram
from tests.loopback.test_api import in_thread, request

TOKEN = "web-page-token"
REGISTER = (b"REGISTER sip:lab.test SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKr1;rport\r\n"
            b"From: <sip:alice@lab.test>;tag=a\r\nTo: <sip:alice@lab.test>\r\nCall-ID: reg1\r\nCSeq: 1 REGISTER\r\n"
            b"Contact: <sip:alice@127.0.0.1:5060>\r\nExpires: 60\r\nContent-Length: 0\r\n\r\n")
INVITE = (b"INVITE sip:alice@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKi1\r\n"
          b"From: <sip:bob@lab.test>;tag=b\r\nTo: <sip:alice@lab.test>\r\nCall-ID: call1\r\nCSeq: 1 INVITE\r\n"
          b"Contact: <sip:bob@127.0.0.1:5070>\r\nContent-Length: 0\r\n\r\n")
BYE = (b"BYE sip:alice@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKb1\r\n"
       b"From: <sip:bob@lab.test>;tag=b\r\nTo: <sip:alice@lab.test>;tag=x\r\nCall-ID: call1\r\nCSeq: 2 BYE\r\n"
       b"Content-Length: 0\r\n\r\n")
JSON = {"content-type": "application/json"}


class Lab:
    """A relay with its API, a device socket and a PBX socket, all on 127.0.0.1."""

    def __init__(self, proxy, pbx, device, token):
        self.proxy, self.pbx, self.device, self.token = proxy, pbx, device, token
        self.port = proxy.api_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.pbx_side = None  # faultlab's socket toward the PBX for this device

    def headers(self, **more):
        auth = {"authorization": f"Bearer {self.token}"} if self.token else {}
        return {**auth, **more}

    async def get(self, path, **headers):
        return await request(self.port, "GET", path, headers=self.headers(**headers))

    async def post(self, path, body, **headers):
        return await request(self.port, "POST", path, json_body=body, headers=self.headers(**JSON, **headers))

    async def register(self):
        await self.device.send(REGISTER)
        data, self.pbx_side = await self.pbx.recvfrom(65535)
        await self.pbx.sendto(build_response(parse_datagram(data), 200, "OK"), self.pbx_side)
        assert parse_datagram(await self.device.recv(65535)).status == 200

    async def from_pbx(self, data: bytes):
        """A request from the PBX to the device, through faultlab; what the device got."""
        await self.pbx.sendto(data, self.pbx_side)
        return parse_datagram(await self.device.recv(65535))


async def start_lab(nursery, *, token=None, profile=None) -> Lab:
    pbx = trio.socket.socket(type=socket.SOCK_DGRAM)
    await pbx.bind(("127.0.0.1", 0))
    proxy = await nursery.start(serve_proxy_with_api, ProxyConfig(
        listen=[parse_endpoint("udp:127.0.0.1:0")],
        upstream=[parse_endpoint(f"udp:127.0.0.1:{pbx.getsockname()[1]}")],
        profile=load_profile(profile) if profile else None, seed=7, api=("127.0.0.1", 0), api_token=token))
    device = trio.socket.socket(type=socket.SOCK_DGRAM)
    await device.bind(("127.0.0.1", 0))
    await device.connect(proxy.bound["udp"])
    return Lab(proxy, pbx, device, token)


def device_event(event, **fields):
    return {"device": "alice-iphone", "event": event, "client_time": 1764166500.0, **fields}


# -- the page ---------------------------------------------------------------------------------------------

async def test_the_page_to_a_browser_and_the_index_to_json_clients(nursery):
    lab = await start_lab(nursery)
    page = await lab.get("/", accept="text/html,application/xhtml+xml,*/*;q=0.8")
    assert page.status == 200 and page.headers["content-type"].startswith("text/html")
    assert b'<script src="/static/app.js">' in page.body and b"http" not in page.body.replace(b"http-equiv", b"")
    index = await lab.get("/")
    assert index.headers["content-type"] == "application/json"
    assert "POST /api/guided/start" in index.json()["resources"]
    for name, ctype in (("app.js", "text/javascript"), ("app.css", "text/css")):
        reply = await lab.get(f"/static/{name}")
        assert reply.status == 200 and reply.headers["content-type"].startswith(ctype) and reply.body
    missing = await lab.get("/static/../app.py")
    assert missing.status == 404


async def test_with_a_token_only_the_page_and_its_files_are_public(nursery):
    lab = await start_lab(nursery, token=TOKEN)
    for path, accept in (("/", "text/html"), ("/static/app.js", "*/*"), ("/static/app.css", "*/*")):
        reply = await request(lab.port, "GET", path, headers={"accept": accept, "host": "lab-gw.example.test"})
        assert reply.status == 200, path
    for method, path in (("GET", "/"), ("GET", "/api/ladder"), ("GET", "/api/scenarios"), ("GET", "/api/guided"),
                         ("POST", "/api/guided/start"), ("POST", "/api/guided/stop"), ("POST", "/events")):
        reply = await request(lab.port, method, path, json_body={} if method == "POST" else None)
        assert reply.status == 401, (method, path)
    assert (await lab.get("/api/scenarios")).status == 200



async def raw_get(port: int, head: bytes) -> tuple[int, bytes, bytes]:
    """``GET /`` with these raw header lines (a client may repeat a header): (status, headers, body)."""
    with trio.fail_after(5):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(b"GET / HTTP/1.1\r\nHost: lab-gw.example.test\r\n" + head
                                  + b"Connection: close\r\n\r\n")
            data = b""
            while chunk := await stream.receive_some(65536):
                data += chunk
    top, _, body = data.partition(b"\r\n\r\n")
    return int(top.split(b" ", 2)[1]), top, body


async def test_the_guard_and_the_page_read_the_same_accept_headers(nursery):
    """Two Accept headers, in either order: the page (public) both times, never the JSON index without the token."""
    lab = await start_lab(nursery, token=TOKEN)
    for head in (b"Accept: application/json\r\nAccept: text/html\r\n",
                 b"Accept: text/html\r\nAccept: application/json\r\n"):
        status, top, body = await raw_get(lab.port, head)
        assert status == 200 and b"content-type: text/html" in top.lower(), (head, top, body[:200])
        assert b'<script src="/static/app.js">' in body and b"resources" not in body
    status, _, _ = await raw_get(lab.port, b"Accept: application/json\r\n")
    assert status == 401  # the JSON index still needs the token

# -- the ladder ---------------------------------------------------------------------------------------------

async def test_ladder_shows_the_newest_call_with_an_invite_by_default(nursery):
    lab = await start_lab(nursery)
    with trio.fail_after(10):
        empty = (await lab.get("/api/ladder")).json()
        assert empty == {"call": None, "calls": [], "devices": [], "rows": []}
        await lab.register()
        await trio.testing.wait_all_tasks_blocked()
        only_register = (await lab.get("/api/ladder")).json()
        assert only_register["call"] == "reg1"
        assert [(r["from"], r["to"], r["label"]) for r in only_register["rows"]] == [
            ("device", "faultlab", "REGISTER"), ("faultlab", "pbx", "REGISTER"),
            ("pbx", "faultlab", "200/REGISTER"), ("faultlab", "device", "200/REGISTER")]
        assert (await lab.from_pbx(INVITE)).method == "INVITE"
        await trio.testing.wait_all_tasks_blocked()
        ladder = (await lab.get("/api/ladder")).json()
    assert ladder["call"] == "call1"
    assert [c["call_id"] for c in ladder["calls"]] == ["reg1", "call1"]
    assert [c["first"] for c in ladder["calls"]] == ["REGISTER", "INVITE"]
    assert [(r["from"], r["to"], r["label"]) for r in ladder["rows"]] == [
        ("pbx", "faultlab", "INVITE"), ("faultlab", "device", "INVITE")]
    me = f"127.0.0.1:{lab.device.getsockname()[1]}"
    assert ladder["devices"] == [me] and {r["device"] for r in ladder["rows"]} == {me}
    assert (await lab.get("/api/ladder?call=reg1")).json()["call"] == "reg1"
    unknown = await lab.get("/api/ladder?call=nope")
    assert unknown.status == 404 and "calls: reg1, call1" in unknown.json()["error"]


async def test_ladder_has_a_column_per_device(nursery):
    """The PBX forks one INVITE to two registered devices: each device's messages are on its own column, and a
    device event posted by an app lands on the only device's column when the call has one device."""
    lab = await start_lab(nursery)
    second = trio.socket.socket(type=socket.SOCK_DGRAM)
    await second.bind(("127.0.0.1", 0))
    await second.connect(lab.proxy.bound["udp"])
    with trio.fail_after(10):
        await lab.register()
        first_side = lab.pbx_side
        await second.send(REGISTER.replace(b"branch=z9hG4bKr1", b"branch=z9hG4bKr2").replace(b"reg1", b"reg2"))
        data, second_side = await lab.pbx.recvfrom(65535)
        await lab.pbx.sendto(build_response(parse_datagram(data), 200, "OK"), second_side)
        await second.recv(65535)
        assert (await lab.from_pbx(INVITE)).method == "INVITE"
        await lab.pbx.sendto(INVITE.replace(b"z9hG4bKi1", b"z9hG4bKi2"), second_side)
        assert parse_datagram(await second.recv(65535)).method == "INVITE"
        await trio.testing.wait_all_tasks_blocked()
        ladder = (await lab.get("/api/ladder")).json()
        one = f"127.0.0.1:{lab.device.getsockname()[1]}"
        two = f"127.0.0.1:{second.getsockname()[1]}"
        assert first_side != second_side and ladder["call"] == "call1"
        assert ladder["devices"] == [one, two]
        assert [(r["from"], r["to"], r["label"], r["device"]) for r in ladder["rows"]] == [
            ("pbx", "faultlab", "INVITE", one), ("faultlab", "device", "INVITE", one),
            ("pbx", "faultlab", "INVITE", two), ("faultlab", "device", "INVITE", two)]
        # the second device's REGISTER is a call of its own, with that device alone
        reg2 = (await lab.get("/api/ladder?call=reg2")).json()
        assert reg2["devices"] == [two] and {r["device"] for r in reg2["rows"]} == {two}
        # an app's event on a one-device call is on that device's column
        posted = await lab.post("/events", device_event("reported", call_id="reg1", uuid="u-1"))
        assert posted.status == 200, posted.body
        reg1 = (await lab.get("/api/ladder?call=reg1")).json()
    note = reg1["rows"][-1]
    assert (note["from"], note["to"], note["device"]) == ("device", None, one) and note["note"].startswith("reported")
    second.close()


# -- scenarios and guided runs --------------------------------------------------------------------------------

async def test_scenarios_are_the_catalogue(nursery):
    lab = await start_lab(nursery)
    scenarios = (await lab.get("/api/scenarios")).json()
    by_id = {s["id"]: s for s in scenarios}
    assert {"S01", "S17", "S09"} <= set(by_id)
    assert by_id["S17"]["rules"] == ["delay-invite-2s"] and by_id["S17"]["expect"]["early_answer"] is True
    assert by_id["S09"]["needs_push_gateway"] == ["cancel pushes dropped"]


async def test_guided_start_switches_the_scenarios_own_faults_on_and_stop_puts_back_the_profile(nursery):
    lab = await start_lab(nursery, profile="register-503")
    assert (await lab.get("/api/guided")).json() == {"phase": "idle"}
    started = await lab.post("/api/guided/start", {"scenario": "S17"})
    assert started.status == 200, started.body
    body = started.json()
    assert body["phase"] == "waiting" and body["scenario"]["id"] == "S17"
    active = await in_thread(client.get_active, lab.url)
    assert active["global"]["name"] == "answer-before-invite-faults"
    assert [r["name"] for r in await in_thread(client.rules, lab.url)] == ["delay-invite-2s"]
    # another scenario replaces it; stopping puts back what was active before the first
    assert (await lab.post("/api/guided/start", {"scenario": "invite-delayed-3s"})).status == 200
    stopped = (await lab.post("/api/guided/stop", {})).json()
    assert stopped["phase"] == "stopped" and stopped["restored"] is True
    assert (await in_thread(client.get_active, lab.url))["global"]["name"] == "register-503"
    assert (await lab.get("/api/guided")).json() == {"phase": "idle"}
    assert (await lab.post("/api/guided/stop", {})).status == 404
    guided = [e.detail for e in lab.proxy.events if e.kind == "guided"]
    assert [(d["action"], d["scenario"]) for d in guided] == [("start", "S17"), ("start", "S02"), ("stop", "S02")]


async def test_guided_start_for_one_device(nursery):
    lab = await start_lab(nursery)
    reply = await lab.post("/api/guided/start", {"scenario": "S17", "device": "127.0.0.1"})
    assert reply.status == 200 and reply.json()["device"] == "127.0.0.1"
    active = await in_thread(client.get_active, lab.url)
    assert active["global"] is None and active["devices"]["127.0.0.1"]["name"] == "answer-before-invite-faults"
    await lab.post("/api/guided/stop", {})
    assert (await in_thread(client.get_active, lab.url))["devices"] == {}



async def test_a_device_run_of_a_scenario_without_faults_is_clean_for_that_device_not_the_global_profile(nursery):
    lab = await start_lab(nursery, profile="invite-drop")
    with trio.fail_after(10):
        await lab.register()
        reply = await lab.post("/api/guided/start", {"scenario": "S01", "device": "127.0.0.1"})
        assert reply.status == 200, reply.body
        active = await in_thread(client.get_active, lab.url)
        assert active["global"]["name"] == "invite-drop" and active["devices"]["127.0.0.1"]["name"] == "clean"
        assert (await lab.from_pbx(INVITE)).method == "INVITE"  # not dropped by the global invite-drop
        # the app's report names the Call-ID; the guided call is the INVITE faultlab delivered to 127.0.0.1
        await lab.post("/events", device_event("reported", uuid="U1", call_id="call1"))
        status = (await lab.get("/api/guided")).json()
        assert status["phase"] == "ringing" and status["call"]["call_id"] == "call1"
        await lab.post("/api/guided/stop", {})
    active = await in_thread(client.get_active, lab.url)
    assert active["global"]["name"] == "invite-drop" and active["devices"] == {}
    guided = [e.detail for e in lab.proxy.events if e.kind == "guided"]
    assert guided[0]["profile"] == "clean"

async def test_guided_start_refuses_what_is_not_a_catalogue_scenario(nursery):
    lab = await start_lab(nursery)
    for body, status, text in (
        ({"scenario": "S99"}, 404, "no scenario 'S99' in the catalogue; scenarios: S01, "),
        ({"scenario": "scenarios/S01-baseline.toml"}, 404, "no scenario"),  # names only, never a path
        ({"scenario": "/etc/passwd"}, 404, "no scenario"),
        ({"scenario": 17}, 400, '"scenario" must be a scenario id or slug'),
        ({"scenario": "S01", "device": "phone"}, 400, "device 'phone': give an IP address"),
        ({"scenario": "S01", "extra": 1}, 400, "unknown key 'extra'"),
        ({}, 400, "missing key 'scenario'"),
    ):
        reply = await lab.post("/api/guided/start", body)
        assert reply.status == status and text in reply.json()["error"], (body, reply.body)
    assert (await in_thread(client.get_active, lab.url))["global"] is None


# -- device events and a whole guided call ----------------------------------------------------------------------

async def test_device_events_go_onto_the_proxys_timeline(nursery):
    lab = await start_lab(nursery)
    reply = await lab.post("/events", [device_event("reported", uuid="U1", call_id="call1"),
                                       device_event("ended", uuid="U1", reason="unanswered")])
    assert reply.status == 200 and reply.json() == {"accepted": 2}
    recorded = [e for e in lab.proxy.events if e.kind == "device"]
    assert [(e.source, e.call_id, e.detail["event"], e.detail.get("reason"), e.detail["origin"])
            for e in recorded] == [("device:alice-iphone", "call1", "reported", None, "collector"),
                                   ("device:alice-iphone", None, "ended", "unanswered", "collector")]
    assert 0 < recorded[0].t <= lab.proxy.now()
    bad = await lab.post("/events", [device_event("reported", uuid="U1"), device_event("ended", uuid="U1")])
    assert bad.status == 422 and bad.json()["error"].startswith("event 1: reason: None is not one of")
    assert (bad.json()["field"], bad.json()["index"], bad.json()["status"]) == ("reason", 1, 422)
    garbled = await request(lab.port, "POST", "/events", body=b'{"device": ', headers={"content-type": "application/json"})
    assert garbled.status == 400 and "field" not in garbled.json()
    plain = await request(lab.port, "POST", "/events", body=b'{"device": "x"}', headers={"content-type": "text/plain"})
    assert plain.status == 415
    assert len([e for e in lab.proxy.events if e.kind == "device"]) == 2  # nothing of the bad ones


async def test_device_events_need_the_token_when_one_is_set(nursery):
    lab = await start_lab(nursery, token=TOKEN)
    event = device_event("reported", uuid="U1")
    assert (await request(lab.port, "POST", "/events", json_body=event)).status == 401
    assert (await lab.post("/events", event)).json() == {"accepted": 1}


async def test_the_schemas_are_public_even_with_a_token(nursery):
    lab = await start_lab(nursery, token=TOKEN)
    for name in ("events", "push-stream"):
        reply = await request(lab.port, "GET", f"/schema/{name}.json")  # no token: a schema holds no data
        assert reply.status == 200 and reply.headers["content-type"] == "application/schema+json"
        assert reply.json()["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert (await request(lab.port, "GET", "/schema/other.json")).status == 401  # only the schemas are public
    missing = await lab.get("/schema/other.json")
    assert missing.status == 404 and "/schema/events.json" in missing.json()["error"]


async def test_a_guided_call_through_faultlab_gets_its_verdict_from_device_events(nursery):
    lab = await start_lab(nursery)
    with trio.fail_after(10):
        await lab.register()
        status = (await lab.post("/api/guided/start", {"scenario": "S01"})).json()
        assert status["prompt"] == "Call sip:alice@lab.test from another phone now"
        assert status["aor"]["aor"] == "sip:alice@lab.test"
        assert (await lab.from_pbx(INVITE)).method == "INVITE"
        # the app knows only its CallKit uuid here: the call is the INVITE's
        await lab.post("/events", device_event("reported", uuid="U1"))
        status = (await lab.get("/api/guided")).json()
        assert status["phase"] == "ringing" and status["call"]["call_id"] == "call1"
        assert status["call"]["t0_from"] == "reported"
        await lab.post("/events", device_event("answer-tapped", uuid="U1"))
        await lab.device.send(build_response(parse_datagram(INVITE), 200, "OK", to_tag="x"))
        await lab.pbx.recv(65535)
        await lab.post("/events", device_event("answer-fulfilled", uuid="U1"))
        assert (await lab.get("/api/guided")).json()["phase"] == "in-call"
        assert (await lab.from_pbx(BYE)).method == "BYE"
        await lab.post("/events", device_event("ended", uuid="U1", reason="remoteEnded"))
        done = (await lab.get("/api/guided")).json()
    assert done["phase"] == "done", done
    verdict = done["verdict"]
    assert verdict["passed"] is True and verdict["call_id"] == "call1", verdict
    assert [c["check"] for c in verdict["checks"]] == ["ends-right", "invariants", "sip-duties"]
    assert "device reported (no push gateway: t0)" in verdict["checks"][0]["evidence"][0]


async def test_guided_prompts_are_published_on_get_prompts_when_due(nursery):
    """A program follows GET /prompts (with the API's token) while nobody polls the page: the call prompt comes
    at the start, the answer prompt when it is due (S17: 1 s after the app reported the call), with the call's
    Call-ID and the uuid the app reported."""
    import json

    import httpx

    lab = await start_lab(nursery, token=TOKEN)
    assert (await request(lab.port, "GET", "/prompts")).status == 401  # the API's token rules
    with trio.fail_after(10):
        await lab.register()
        async with httpx.AsyncClient(timeout=None, headers=lab.headers()) as http:
            async with http.stream("GET", f"{lab.url}/prompts") as response:
                assert response.status_code == 200
                it = response.aiter_lines()

                async def prompt() -> dict:
                    while not (line := await it.__anext__()).strip():
                        pass
                    return json.loads(line)

                assert (await lab.post("/api/guided/start", {"scenario": "S17"})).status == 200
                call = await prompt()
                assert {k: call[k] for k in ("seq", "action", "scenario", "call_id", "uuid", "deadline")} == {
                    "seq": 1, "action": "call", "scenario": "S17", "call_id": None, "uuid": None, "deadline": None}
                assert call["text"] == "Call sip:alice@lab.test from another phone now"
                assert (await lab.from_pbx(INVITE)).method == "INVITE"
                await lab.post("/events", device_event("reported", uuid="6F1C-U1", call_id="call1"))
                answer = await prompt()
        await lab.post("/api/guided/stop", {})
    assert {k: answer[k] for k in ("seq", "action", "scenario", "call_id", "uuid", "text")} == {
        "seq": 2, "action": "answer", "scenario": "S17", "call_id": "call1", "uuid": "6f1c-u1",
        "text": "Tap Answer on the iPhone now"}
    assert answer["deadline"] == answer["at"] + 2.0
