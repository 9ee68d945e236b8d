"""The push gateway's relay signing its pushes with APNs token authentication, against a local mock APNs that
checks the provider token as Apple does (403 MissingProviderToken / InvalidProviderToken), over h2c on loopback.

Time for the tokens comes from an injected clock: no test sleeps."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import trio
from cryptography.hazmat.primitives.asymmetric import ec

from faultlab.lab.push.auth import ApnsSigner
from faultlab.lab.push import PushClient, PushGateway, PushRejected, serve_push_gateway
from faultlab.lab.timeline import Timeline
from tests.unit.test_apns_auth import KEY_ID, TEAM_ID, Clock, verify

TOKEN = "ab" * 32
TOPIC = "com.example.app.voip"
CALL = {"aps": {}, "type": "call", "call-id": "c1@pbx", "uuid": "6f1c0a4e-0d0b-4c77-9b6e-2f3a0e5b1d10",
        "from-uri": "sip:bob@example.com", "display-name": "Bob", "send-time": 1764166500}


class StrictApns(PushGateway):
    """A mock APNs that, like Apple, refuses a push without a provider token that verifies with the team's key;
    ``seen`` records each request's authorization header."""

    def __init__(self, public_key: ec.EllipticCurvePublicKey) -> None:
        super().__init__(Timeline())
        self.public_key = public_key
        self.seen: list[str | None] = []

    async def handle(self, method: str, path: str, headers: Mapping[str, str] | Iterable[tuple[Any, Any]],
                     body: bytes) -> tuple[int, dict[str, str], bytes]:
        pairs = headers.items() if isinstance(headers, Mapping) else headers
        auth = {(k.decode() if isinstance(k, bytes) else k).lower(): (v.decode() if isinstance(v, bytes) else v)
                for k, v in pairs}.get("authorization")
        self.seen.append(auth)
        if auth is None:
            return 403, {"content-type": "application/json"}, b'{"reason":"MissingProviderToken"}'
        try:
            assert auth.startswith("bearer ")
            header, claims = verify(auth.removeprefix("bearer "), self.public_key)
            assert header == {"alg": "ES256", "kid": KEY_ID} and claims["iss"] == TEAM_ID
        except Exception:
            return 403, {"content-type": "application/json"}, b'{"reason":"InvalidProviderToken"}'
        return await super().handle(method, path, headers, body)


async def test_relayed_pushes_carry_a_provider_token_that_verifies_and_replaces_the_pbxs():
    key = ec.generate_private_key(ec.SECP256R1())
    apns = StrictApns(key.public_key())
    channel = apns.channel(TOKEN)
    clock = Clock(1764166500)
    timeline = Timeline()
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            ahost, aport = await nursery.start(serve_push_gateway, apns, "127.0.0.1", 0)
            signer = ApnsSigner(key, KEY_ID, TEAM_ID, clock=clock)
            relay = PushGateway(timeline, relay_url=f"http://{ahost}:{aport}", relay_auth=signer)
            rhost, rport = await nursery.start(serve_push_gateway, relay, "127.0.0.1", 0)
            async with PushClient(f"http://{rhost}:{rport}") as pbx:  # sends no authorization, as faultlab pbx
                assert (await pbx.send(TOKEN, CALL, topic=TOPIC))[0] == 200
                first = (await channel.receive()).headers["authorization"]
                assert verify(first.removeprefix("bearer "), key.public_key()) == (
                    {"alg": "ES256", "kid": KEY_ID}, {"iss": TEAM_ID, "iat": 1764166500})

                clock.now += 49 * 60  # the same token within 50 minutes
                assert (await pbx.send(TOKEN, CALL, topic=TOPIC))[0] == 200
                assert (await channel.receive()).headers["authorization"] == first

                clock.now += 60  # 50 minutes: a fresh token
                assert (await pbx.send(TOKEN, CALL, topic=TOPIC))[0] == 200
                fresh = (await channel.receive()).headers["authorization"]
                assert fresh != first
                assert verify(fresh.removeprefix("bearer "), key.public_key())[1]["iat"] == 1764166500 + 50 * 60

            # a PBX that signs with a stale or foreign token: the gateway's own token replaces it
            async with PushClient(f"http://{rhost}:{rport}", authorization="bearer not-a-jwt") as pbx:
                assert (await pbx.send(TOKEN, CALL, topic=TOPIC))[0] == 200
                assert (await channel.receive()).headers["authorization"] == fresh

            # the embedded PBX of the external lab pushes in-process (local_sender): signed the same way
            await relay.local_sender(topic=TOPIC)(TOKEN, CALL)
            assert (await channel.receive()).headers["authorization"] == fresh
            nursery.cancel_scope.cancel()
    assert apns.seen == [first, first, fresh, fresh, fresh]
    relayed = [e.detail for e in timeline.events if e.kind == "push" and e.detail.get("relay")]
    assert [(d["outcome"], d["status"]) for d in relayed] == [("relayed", 200)] * 5


async def test_without_a_key_the_senders_authorization_passes_and_none_is_refused():
    key = ec.generate_private_key(ec.SECP256R1())
    apns = StrictApns(key.public_key())
    channel = apns.channel(TOKEN)
    own = "bearer " + ApnsSigner(key, KEY_ID, TEAM_ID, clock=Clock(1764166500)).token()
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            ahost, aport = await nursery.start(serve_push_gateway, apns, "127.0.0.1", 0)
            relay = PushGateway(Timeline(), relay_url=f"http://{ahost}:{aport}")
            rhost, rport = await nursery.start(serve_push_gateway, relay, "127.0.0.1", 0)
            async with PushClient(f"http://{rhost}:{rport}") as pbx:
                # what happened before token authentication: Apple refuses the unsigned push, the PBX hears it
                assert await pbx.send(TOKEN, CALL, topic=TOPIC) == (403, {"reason": "MissingProviderToken"})
                try:
                    await relay.local_sender(topic=TOPIC)(TOKEN, CALL)
                except PushRejected as exc:
                    assert (exc.status, exc.reason) == (403, "MissingProviderToken")
                else:
                    raise AssertionError("an unsigned push was accepted")
            async with PushClient(f"http://{rhost}:{rport}", authorization=own) as pbx:  # a PBX that signs itself
                assert (await pbx.send(TOKEN, CALL, topic=TOPIC))[0] == 200
                assert (await channel.receive()).headers["authorization"] == own
            nursery.cancel_scope.cancel()
    assert apns.seen == [None, None, own]
