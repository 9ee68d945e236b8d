"""The control API over real loopback HTTP, against a fake Control: every resource, the errors,
the token, the event stream, and the stdlib client the CLI uses."""

from __future__ import annotations

import ipaddress
import json
import socket
from dataclasses import dataclass, field
from functools import partial
from typing import Any
from urllib.parse import quote

import h11
import pytest
import trio
import trio.testing

from faultlab.api import ProfileError, serve_api
from faultlab.api import client
from faultlab.api.client import ApiClientError
from faultlab.trace import Event

TOKEN = "s3cret-token"


# -- a fake proxy ---------------------------------------------------------------------------------

def _device(spec: str | None) -> str | None:
    """"IP" or "IP:PORT" ("[v6]:PORT"), as the relay will accept them."""
    if spec is None:
        return None
    try:
        ipaddress.ip_address(spec)
        return spec
    except ValueError:
        pass
    host, _, port = spec.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"bad device {spec!r}: expected IP or IP:PORT") from None
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"bad device {spec!r}: port {port!r} is not 1-65535")
    return spec


class FakeControl:
    LIBRARY = [
        {"name": "clean", "summary": "Nothing changes.", "source": "profiles/clean.toml"},
        {"name": "register-drop", "summary": "The PBX never sees a REGISTER.", "source": "profiles/register-drop.toml"},
        {"name": "broken", "summary": "A profile whose file does not load.", "source": "profiles/broken.toml"},
    ]

    def __init__(self) -> None:
        self.clock = 100.0
        self.global_entry: dict | None = None
        self.device_entries: dict[str, dict] = {}
        self.rule_lists: dict[str | None, list[dict]] = {None: []}
        self.held = {
            "h1": {"id": "h1", "flow": "udp-1", "direction": "to-pbx", "summary": "INVITE sip:bob", "held_at": 1.0},
            "h2": {"id": "h2", "flow": "udp-1", "direction": "to-device", "summary": "BYE sip:alice", "held_at": 2.0},
        }
        self.subscribers: list[trio.MemorySendChannel] = []
        self.subscribed = trio.Event()

    def list_profiles(self) -> list[dict]:
        return [dict(p) for p in self.LIBRARY]

    def active(self) -> dict:
        return {"global": self.global_entry, "devices": dict(self.device_entries)}

    def set_profile(self, name: str | None, device: str | None = None) -> dict | None:
        device = _device(device)
        if name == "broken":
            raise ProfileError("profiles/broken.toml", "rules[0].action.delay", "3",
                               "a duration with a unit: 250ms, 3s, 1.5s, 2m")
        if name is not None and name not in [p["name"] for p in self.LIBRARY]:
            raise ProfileError("<api>", "profile", name, "not in the profile library")  # names left out on purpose
        entry = None
        if name is not None:
            self.clock += 1
            summary = next(p["summary"] for p in self.LIBRARY if p["name"] == name)
            entry = {"name": name, "summary": summary, "activated_at": self.clock}
        if device is None:
            self.global_entry = entry
        elif entry is None:
            self.device_entries.pop(device, None)
        else:
            self.device_entries[device] = entry
        return entry

    def add_rule(self, rule: dict, device: str | None = None, index: int | None = None) -> dict:
        rules = self.rule_lists.setdefault(_device(device), [])
        if not isinstance(rule.get("name"), str) or not isinstance(rule.get("action"), dict):
            raise ProfileError("<api>", "rule", rule, "a table with a name and an action")
        if any(r["name"] == rule["name"] for r in rules):
            raise ProfileError("<api>", "rule.name", rule["name"], "a name no other rule has")
        stored = {"match": {}, "continue": False, **rule}
        rules.insert(len(rules) if index is None else index, stored)
        return stored

    def remove_rule(self, name: str, device: str | None = None) -> None:
        rules = self.rule_lists.get(_device(device), [])
        for i, rule in enumerate(rules):
            if rule["name"] == name:
                del rules[i]
                return
        raise KeyError(name)

    def rules(self, device: str | None = None) -> list[dict]:
        return list(self.rule_lists.get(_device(device), []))

    def holds(self) -> list[dict]:
        return list(self.held.values())

    def release(self, hold_id: str | None = None) -> int:
        if hold_id is None:
            count = len(self.held)
            self.held.clear()
            return count
        del self.held[hold_id]  # KeyError for an unknown id
        return 1

    def flows(self) -> list[dict]:
        return [{"id": "udp-1", "transport": "udp", "device": "10.0.0.2:5060", "pbx_side": "127.0.0.1:40000",
                 "opened_at": 0.5, "messages": 3}]

    def subscribe(self) -> trio.MemoryReceiveChannel[Event]:
        send, receive = trio.open_memory_channel(100)
        self.subscribers.append(send)
        self.subscribed.set()
        return receive

    def seed(self) -> int:
        return 1234

    # test side
    def publish(self, event: Event) -> None:
        for channel in list(self.subscribers):
            try:
                channel.send_nowait(event)
            except trio.BrokenResourceError:
                self.subscribers.remove(channel)

    def open_subscriptions(self) -> int:
        return sum(1 for c in self.subscribers if c.statistics().open_receive_channels)

    def end_subscriptions(self) -> None:
        for channel in self.subscribers:
            channel.close()


# -- a raw HTTP client (h11 over a trio stream), to see statuses, headers and streams as they are --

@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes = b""

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Http:
    port: int
    host: str = "127.0.0.1"
    stream: trio.SocketStream | None = None
    conn: h11.Connection = field(default_factory=lambda: h11.Connection(h11.CLIENT))
    buffer: bytes = b""

    async def start(self, method: str, path: str, *, headers: dict[str, str] | None = None,
                    body: bytes | None = None, json_body: Any = None) -> Reply:
        hdrs = {"host": f"{self.host}:{self.port}", **(headers or {})}
        if json_body is not None:
            body = json.dumps(json_body).encode()
            hdrs.setdefault("content-type", "application/json")
        if body is not None or method in ("PUT", "POST"):
            hdrs["content-length"] = str(len(body or b""))
        self.stream = await trio.open_tcp_stream(self.host, self.port)
        await self.stream.send_all(self.conn.send(h11.Request(method=method, target=path, headers=list(hdrs.items()))))
        if body:
            await self.stream.send_all(self.conn.send(h11.Data(data=body)))
        await self.stream.send_all(self.conn.send(h11.EndOfMessage()))
        response = await self._next()
        assert isinstance(response, h11.Response), response
        return Reply(response.status_code, {k.decode(): v.decode() for k, v in response.headers})

    async def _next(self) -> Any:
        while True:
            event = self.conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            self.conn.receive_data(await self.stream.receive_some(65536))

    async def read_until(self, separator: bytes) -> bytes | None:
        """The next chunk of the body up to ``separator``; None at the end of the body."""
        while separator not in self.buffer:
            event = await self._next()
            if isinstance(event, h11.EndOfMessage):
                return None
            assert isinstance(event, h11.Data), event
            self.buffer += event.data
        chunk, _, self.buffer = self.buffer.partition(separator)
        return chunk

    async def read_body(self) -> bytes:
        body = b""
        while not isinstance(event := await self._next(), h11.EndOfMessage):
            body += event.data
        return body

    async def aclose(self) -> None:
        if self.stream is not None:
            await self.stream.aclose()


async def request(port: int, method: str, path: str, **kwargs: Any) -> Reply:
    http = Http(port, host=kwargs.pop("host", "127.0.0.1"))
    try:
        with trio.fail_after(5):
            reply = await http.start(method, path, **kwargs)
            reply.body = await http.read_body()
    finally:
        await http.aclose()
    return reply


async def in_thread(fn, *args, **kwargs):
    """Run a (blocking) client call in a worker thread, so the server keeps running in this one."""
    with trio.fail_after(5):
        return await trio.to_thread.run_sync(partial(fn, *args, **kwargs))


@dataclass
class Api:
    fake: FakeControl
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


async def start_api(nursery, token: str | None = None, host: str = "127.0.0.1") -> Api:
    fake = FakeControl()
    bound_host, port = await nursery.start(partial(serve_api, fake, host, 0, token=token))
    assert bound_host == host and port > 0
    return Api(fake, port)


@pytest.fixture
async def api(nursery) -> Api:
    return await start_api(nursery)


def error_of(reply: Reply) -> str:
    body = reply.json()
    assert body["status"] == reply.status, body
    return body["error"]


# -- resources ------------------------------------------------------------------------------------

async def test_read_only_resources(api):
    from faultlab import __version__

    assert (await request(api.port, "GET", "/version")).json() == {"version": __version__}
    assert (await request(api.port, "GET", "/profiles")).json() == FakeControl.LIBRARY
    assert (await request(api.port, "GET", "/active")).json() == {"global": None, "devices": {}}
    assert (await request(api.port, "GET", "/holds")).json() == api.fake.holds()
    assert (await request(api.port, "GET", "/flows")).json() == api.fake.flows()
    assert (await request(api.port, "GET", "/seed")).json() == {"seed": 1234}
    index = await request(api.port, "GET", "/")
    assert index.headers["content-type"] == "application/json"
    assert "PUT /active" in index.json()["resources"]


async def test_global_profile_switch_and_back_to_none(api):
    reply = await request(api.port, "PUT", "/active", json_body={"profile": "register-drop"})
    assert reply.status == 200
    entry = {"name": "register-drop", "summary": "The PBX never sees a REGISTER.", "activated_at": 101.0}
    assert reply.json() == {"global": entry, "devices": {}}
    assert (await request(api.port, "GET", "/active")).json()["global"] == entry
    reply = await request(api.port, "PUT", "/active", json_body={"profile": None})
    assert reply.json() == {"global": None, "devices": {}}


@pytest.mark.parametrize("device", ["10.0.0.2", "10.0.0.2:5060", "[2001:db8::2]:5060"])
async def test_device_profile_put_get_delete(api, device):
    path = f"/devices/{quote(device, safe='')}/profile"
    reply = await request(api.port, "PUT", path, json_body={"profile": "register-drop"})
    assert reply.status == 200
    assert reply.json() == {"device": device, "profile": api.fake.device_entries[device]}
    assert (await request(api.port, "GET", path)).json()["profile"]["name"] == "register-drop"
    assert (await request(api.port, "GET", "/devices")).json() == {device: api.fake.device_entries[device]}
    assert (await request(api.port, "GET", "/active")).json()["devices"] == {device: api.fake.device_entries[device]}
    assert (await request(api.port, "DELETE", path)).status == 204
    assert api.fake.device_entries == {}
    reply = await request(api.port, "GET", path)
    assert reply.status == 404 and "follows the global one" in error_of(reply)


async def test_unknown_profile_is_404_naming_the_available_ones(api):
    for path in ("/active", "/devices/10.0.0.2/profile"):
        reply = await request(api.port, "PUT", path, json_body={"profile": "register-dorp"})
        assert reply.status == 404
        message = error_of(reply)
        assert "register-dorp" in message
        assert "available profiles: clean, register-drop, broken" in message
    assert api.fake.active() == {"global": None, "devices": {}}


async def test_a_profile_that_does_not_load_is_400_with_the_loader_message(api):
    reply = await request(api.port, "PUT", "/active", json_body={"profile": "broken"})
    assert reply.status == 400
    assert error_of(reply).startswith("profiles/broken.toml: rules[0].action.delay: '3' — a duration with a unit")


async def test_bad_device_is_400_with_the_reason(api):
    reply = await request(api.port, "PUT", "/devices/not-an-ip/profile", json_body={"profile": "clean"})
    assert reply.status == 400
    assert error_of(reply).startswith("bad device 'not-an-ip': expected IP or IP:PORT")
    reply = await request(api.port, "GET", "/rules?device=10.0.0.2:99999")
    assert reply.status == 400 and "port '99999'" in error_of(reply)


async def test_rules_add_list_remove(api):
    drop = {"name": "drop-register", "match": {"direction": "to-pbx", "method": "REGISTER"}, "action": {"drop": True}}
    delay = {"name": "delay-invite", "match": {"method": "INVITE"}, "action": {"delay": "3s"}}
    reply = await request(api.port, "POST", "/rules", json_body={"rule": drop})
    assert reply.status == 201
    assert reply.json() == {**drop, "continue": False}
    reply = await request(api.port, "POST", "/rules", json_body={"rule": delay, "index": 0})
    assert reply.status == 201
    assert [r["name"] for r in (await request(api.port, "GET", "/rules")).json()] == ["delay-invite", "drop-register"]
    assert (await request(api.port, "GET", "/rules/drop-register")).json()["action"] == {"drop": True}
    # per device
    reply = await request(api.port, "POST", "/rules", json_body={"rule": drop, "device": "10.0.0.2:5060"})
    assert reply.status == 201
    assert [r["name"] for r in (await request(api.port, "GET", "/rules?device=10.0.0.2%3A5060")).json()] == ["drop-register"]
    assert (await request(api.port, "DELETE", "/rules/drop-register?device=10.0.0.2:5060")).status == 204
    assert api.fake.rules("10.0.0.2:5060") == []
    assert (await request(api.port, "DELETE", "/rules/drop-register")).status == 204
    assert [r["name"] for r in api.fake.rules()] == ["delay-invite"]


async def test_rule_errors(api):
    reply = await request(api.port, "DELETE", "/rules/no-such-rule")
    assert reply.status == 404
    assert error_of(reply) == "no rule named 'no-such-rule'; rules: none"
    await request(api.port, "POST", "/rules", json_body={"rule": {"name": "a", "action": {"drop": True}}})
    reply = await request(api.port, "GET", "/rules/b")
    assert reply.status == 404 and error_of(reply) == "no rule named 'b'; rules: a"
    reply = await request(api.port, "POST", "/rules", json_body={"rule": {"name": "a", "action": {"drop": True}}})
    assert reply.status == 400 and "a name no other rule has" in error_of(reply)
    reply = await request(api.port, "POST", "/rules", json_body={"rule": {"name": "x"}})
    assert reply.status == 400 and "a table with a name and an action" in error_of(reply)
    for body, complaint in [
        ({"rule": "drop"}, '"rule" must be an object'),
        ({"rule": {}, "index": "1"}, '"index" must be an integer'),
        ({"rule": {}, "index": True}, '"index" must be an integer'),
        ({"rule": {}, "device": 5}, '"device" must be a string'),
        ({"rules": {}}, "unknown key 'rules' in the body; allowed: rule, device, index"),
        ({}, "missing key 'rule'"),
    ]:
        reply = await request(api.port, "POST", "/rules", json_body=body)
        assert reply.status == 400 and complaint in error_of(reply), (body, reply)


async def test_release_one_all_and_unknown(api):
    reply = await request(api.port, "POST", "/holds/release", json_body={"id": "h1"})
    assert reply.json() == {"released": 1}
    reply = await request(api.port, "POST", "/holds/release", json_body={"id": "h9"})
    assert reply.status == 404 and error_of(reply) == "no held message has id 'h9'; held: h2"
    reply = await request(api.port, "POST", "/holds/release", json_body={})
    assert reply.json() == {"released": 1}
    assert (await request(api.port, "GET", "/holds")).json() == []
    reply = await request(api.port, "POST", "/holds/release", json_body={"id": 3})
    assert reply.status == 400 and '"id" must be a string' in error_of(reply)


async def test_bad_bodies_are_refused_with_the_reason(api):
    cases = [
        (dict(body=b'{"profile": '), 400, "the body is not valid JSON"),
        (dict(body=b"\xff\xfe"), 400, "the body is not valid JSON"),
        (dict(json_body=["clean"]), 400, "the body must be a JSON object"),
        (dict(json_body={"profile": "clean", "extra": 1}), 400, "unknown key 'extra' in the body; allowed: profile"),
        (dict(json_body={}), 400, "missing key 'profile'"),
        (dict(json_body={"profile": 7}), 400, '"profile" must be a profile name'),
        (dict(json_body={"profile": ""}), 400, '"profile" must be a profile name'),
        (dict(body=b'{"profile": "clean"}', headers={"content-type": "text/plain"}), 415,
         "send the body as JSON with 'Content-Type: application/json'"),
        (dict(body=b'{"profile": "clean"}', headers={}), 415, "Content-Type: application/json"),
        (dict(json_body={"profile": "x" * 70_000}), 413, "the body is over 65536 bytes"),
    ]
    for kwargs, status, complaint in cases:
        kwargs.setdefault("headers", {"content-type": "application/json"})
        reply = await request(api.port, "PUT", "/active", **kwargs)
        assert reply.status == status and complaint in error_of(reply), (kwargs, reply)
    assert api.fake.global_entry is None


async def test_unknown_resource_and_wrong_method_are_json_errors(api):
    reply = await request(api.port, "GET", "/proxies")
    assert reply.status == 404 and error_of(reply) == "no resource /proxies; GET / lists them"
    reply = await request(api.port, "DELETE", "/active")
    assert reply.status == 405 and error_of(reply).startswith("DELETE is not allowed on /active; allowed:")
    assert "PUT" in reply.headers["allow"]


# -- access ---------------------------------------------------------------------------------------

async def test_token_is_required_on_every_request_when_set(nursery):
    api = await start_api(nursery, token=TOKEN)
    for method, path in [("GET", "/version"), ("GET", "/active"), ("GET", "/events"), ("GET", "/nope")]:
        reply = await request(api.port, method, path)
        assert reply.status == 401
        assert error_of(reply).startswith("this control API needs a token: send 'Authorization: Bearer TOKEN'")
        assert reply.headers["www-authenticate"] == 'Bearer realm="faultlab"'
    reply = await request(api.port, "PUT", "/active", json_body={"profile": "clean"},
                          headers={"authorization": "Bearer wrong", "content-type": "application/json"})
    assert reply.status == 401 and error_of(reply) == "wrong API token"
    assert api.fake.global_entry is None
    reply = await request(api.port, "GET", "/active", headers={"authorization": "Basic czNjcmV0"})
    assert reply.status == 401
    reply = await request(api.port, "PUT", "/active", json_body={"profile": "clean"},
                          headers={"authorization": f"Bearer {TOKEN}", "content-type": "application/json"})
    assert reply.status == 200 and reply.json()["global"]["name"] == "clean"
    # the client sends it; without it the server's message comes through
    assert (await in_thread(client.get_active, api.url, token=TOKEN))["global"]["name"] == "clean"
    with pytest.raises(ApiClientError) as info:
        await in_thread(client.set_profile, api.url, "register-drop")
    assert info.value.status == 401 and "needs a token" in info.value.message


async def test_without_a_token_only_loopback_host_names_are_answered(api):
    # a web page that rebinds its own name to 127.0.0.1 sends its own name as Host
    reply = await request(api.port, "PUT", "/active", json_body={"profile": "clean"},
                          headers={"host": "attacker.example.test", "content-type": "application/json"})
    assert reply.status == 403 and "is not a loopback name" in error_of(reply)
    assert api.fake.global_entry is None
    for host in (f"localhost:{api.port}", f"127.0.0.1:{api.port}"):
        assert (await request(api.port, "GET", "/seed", headers={"host": host})).status == 200


async def test_with_a_token_any_host_name_is_fine(nursery):
    api = await start_api(nursery, token=TOKEN)
    reply = await request(api.port, "GET", "/seed",
                          headers={"host": "lab-gw.example.test:5099", "authorization": f"Bearer {TOKEN}"})
    assert reply.status == 200


async def test_ipv6_loopback(nursery):
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    api = await start_api(nursery, host="::1")
    assert await in_thread(client.seed, f"http://[::1]:{api.port}") == 1234


# -- the event stream -----------------------------------------------------------------------------

EV1 = Event(t=1.25, kind="received", flow="udp-1", direction="to-pbx", transport="udp",
            summary="REGISTER sip:pbx", method="REGISTER", raw=b"REGISTER sip:pbx SIP/2.0\r\n\r\n")
EV2 = Event(t=1.5, kind="dropped", flow="udp-1", detail={"rule": "drop-register"})


async def wait_unsubscribed(fake: FakeControl) -> None:
    """Until the server has closed every subscription (each pass lets all tasks, and the sockets, settle)."""
    with trio.fail_after(5):
        while fake.open_subscriptions():
            await trio.testing.wait_all_tasks_blocked()


async def test_events_as_ndjson_from_subscription_until_disconnect(api):
    api.fake.publish(EV1)  # before anyone subscribed: not delivered
    http = Http(api.port)
    with trio.fail_after(5):
        reply = await http.start("GET", "/events")
        assert reply.status == 200
        assert reply.headers["content-type"] == "application/x-ndjson; charset=utf-8"
        assert api.fake.open_subscriptions() == 1  # the headers come once the subscription is open
        api.fake.publish(EV1)
        api.fake.publish(EV2)
        assert json.loads(await http.read_until(b"\n")) == EV1.to_json()
        assert json.loads(await http.read_until(b"\n")) == EV2.to_json()
    await http.aclose()
    await wait_unsubscribed(api.fake)


async def test_events_as_server_sent_events(api):
    http = Http(api.port)
    with trio.fail_after(5):
        reply = await http.start("GET", "/events", headers={"accept": "text/event-stream"})
        assert reply.headers["content-type"] == "text/event-stream; charset=utf-8"
        assert reply.headers["cache-control"] == "no-store"
        api.fake.publish(EV2)
        record = await http.read_until(b"\n\n")
    assert record.startswith(b"data: ")
    assert json.loads(record[len(b"data: "):]) == EV2.to_json()
    await http.aclose()
    await wait_unsubscribed(api.fake)


async def test_several_followers_each_get_every_event(api):
    followers = [Http(api.port) for _ in range(3)]
    with trio.fail_after(5):
        for http in followers:
            await http.start("GET", "/events")
        api.fake.publish(EV1)
        for http in followers:
            assert json.loads(await http.read_until(b"\n"))["kind"] == "received"
        await followers[0].aclose()
        await wait_unsubscribed_count(api.fake, 2)
        api.fake.publish(EV2)
        for http in followers[1:]:
            assert json.loads(await http.read_until(b"\n"))["kind"] == "dropped"
    for http in followers[1:]:
        await http.aclose()
    await wait_unsubscribed(api.fake)


async def wait_unsubscribed_count(fake: FakeControl, left: int) -> None:
    with trio.fail_after(5):
        while fake.open_subscriptions() > left:
            await trio.testing.wait_all_tasks_blocked()


async def test_events_end_cleanly_when_the_proxy_ends_the_subscription(api):
    http = Http(api.port)
    with trio.fail_after(5):
        await http.start("GET", "/events")
        api.fake.publish(EV1)
        api.fake.end_subscriptions()
        assert json.loads(await http.read_until(b"\n")) == EV1.to_json()
        assert await http.read_until(b"\n") is None  # the chunked body ends properly
    await http.aclose()


async def test_a_replay_from_a_control_without_history_is_a_501_and_subscribes_nothing(api):
    reply = await request(api.port, "GET", "/events?since=0")
    assert reply.status == 501
    message = reply.json()["error"]
    assert "keeps no history" in message and "without since, after or Last-Event-ID" in message
    assert api.fake.subscribers == []


async def test_head_events_does_not_subscribe(api):
    reply = await request(api.port, "HEAD", "/events")
    assert reply.status == 200 and reply.headers["content-type"].startswith("application/x-ndjson")
    assert api.fake.subscribers == []


async def test_stopping_the_api_ends_open_streams_promptly():
    fake = FakeControl()
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            _, port = await nursery.start(partial(serve_api, fake, "127.0.0.1", 0, token=None))
            http = Http(port)
            await http.start("GET", "/events")
            nursery.cancel_scope.cancel()
    with trio.fail_after(5), pytest.raises((h11.RemoteProtocolError, trio.BrokenResourceError)):
        await http.read_until(b"\n")  # the server is gone mid-body: the read fails, it does not hang
    await http.aclose()
    assert fake.open_subscriptions() == 0


# -- the stdlib client ----------------------------------------------------------------------------

async def test_client_functions(api):
    url = api.url + "/"  # a trailing slash is fine
    assert await in_thread(client.version, url)
    assert [p["name"] for p in await in_thread(client.list_profiles, url)] == ["clean", "register-drop", "broken"]
    entry = await in_thread(client.set_profile, url, "register-drop")
    assert entry == api.fake.global_entry and entry["name"] == "register-drop"
    entry = await in_thread(client.set_profile, url, "clean", device="[2001:db8::2]:5060")
    assert api.fake.device_entries == {"[2001:db8::2]:5060": entry}
    assert await in_thread(client.set_profile, url, None, device="[2001:db8::2]:5060") is None
    assert (await in_thread(client.get_active, url))["devices"] == {}
    rule = {"name": "drop register/udp", "action": {"drop": True}}  # a name that needs quoting in a path
    assert (await in_thread(client.add_rule, url, rule, device="10.0.0.2", index=0))["name"] == rule["name"]
    assert [r["name"] for r in await in_thread(client.rules, url, device="10.0.0.2")] == [rule["name"]]
    assert await in_thread(client.remove_rule, url, rule["name"], device="10.0.0.2") is None
    assert await in_thread(client.rules, url, device="10.0.0.2") == []
    assert [h["id"] for h in await in_thread(client.holds, url)] == ["h1", "h2"]
    assert await in_thread(client.release, url, "h2") == 1
    assert await in_thread(client.release, url) == 1
    assert (await in_thread(client.flows, url))[0]["id"] == "udp-1"
    assert await in_thread(client.seed, api.url.removeprefix("http://")) == 1234  # bare HOST:PORT


async def test_client_errors_carry_the_server_message(api):
    with pytest.raises(ApiClientError) as info:
        await in_thread(client.set_profile, api.url, "nope")
    assert info.value.status == 404
    assert "available profiles: clean, register-drop, broken" in info.value.message
    with pytest.raises(ApiClientError) as info:
        await in_thread(client.release, api.url, "h9")
    assert info.value.status == 404 and info.value.message == "no held message has id 'h9'; held: h1, h2"
    with pytest.raises(ApiClientError) as info:
        await in_thread(client.remove_rule, api.url, "nope")
    assert info.value.status == 404 and "no rule named 'nope'" in info.value.message


async def test_client_says_when_no_api_is_there():
    with socket.socket() as s:  # a port that was just free: nothing listens on it now
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    with pytest.raises(ApiClientError) as info:
        await in_thread(client.get_active, url)
    assert info.value.message == f"no faultlab control API at {url}: is `faultlab proxy --api ...` running?"
    assert info.value.status is None
    with pytest.raises(ApiClientError, match="not an http:// URL"):
        client.get_active("ftp://127.0.0.1:21")


async def test_client_follows_events(api):
    def first_two() -> list[dict]:
        stream = client.events(api.url, timeout=5)
        try:
            return [next(stream), next(stream)]
        finally:
            stream.close()

    async with trio.open_nursery() as nursery:
        got: list[list[dict]] = []

        async def follow() -> None:
            got.append(await in_thread(first_two))

        nursery.start_soon(follow)
        with trio.fail_after(5):
            await api.fake.subscribed.wait()
        api.fake.publish(EV1)
        api.fake.publish(EV2)
    assert got == [[EV1.to_json(), EV2.to_json()]]
    await wait_unsubscribed(api.fake)


async def test_client_events_end_when_the_proxy_stops():
    fake = FakeControl()
    got: list[dict] = []
    got_one = trio.Event()

    def follow(url: str) -> None:
        for event in client.events(url, timeout=5):
            got.append(event)
            trio.from_thread.run_sync(got_one.set)

    async with trio.open_nursery() as outer:
        async with trio.open_nursery() as server:
            _, port = await server.start(partial(serve_api, fake, "127.0.0.1", 0, token=None))
            outer.start_soon(in_thread, follow, f"http://127.0.0.1:{port}")
            with trio.fail_after(5):
                await fake.subscribed.wait()
                fake.publish(EV1)
                await got_one.wait()
            server.cancel_scope.cancel()  # the proxy stops: the iterator ends, it does not raise
    assert got == [EV1.to_json()]


async def test_client_events_timeout_is_an_api_client_error(api):
    with pytest.raises(ApiClientError, match=r"no event from http://127\.0\.0\.1:\d+ within 0\.05 s"):
        await in_thread(lambda: next(client.events(api.url, timeout=0.05)))
