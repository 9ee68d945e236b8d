"""The control API at its edges: JSON too deep, too large, holding a lone surrogate or NaN gets a 4xx that says
why; an unknown or odd profile name a 404 that shows no path; an internal error a 500 that shows none either; text
from the wire in an answer is readable and valid UTF-8."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import faultlab
from faultlab.api import ProfileError
from tests.loopback.test_api import error_of, request, start_api
from tests.loopback.test_api_web import start_lab

JSON_HEADERS = {"content-type": "application/json"}
INSTALL = str(Path(faultlab.__file__).resolve().parent)

DEEP = b"[" * 30000 + b"]" * 30000


@pytest.mark.parametrize(("method", "path"), [("PUT", "/active"), ("POST", "/rules"), ("POST", "/holds/release"),
                                              ("PUT", "/devices/10.0.0.2/profile")])
@pytest.mark.parametrize(("body", "status", "says"), [
    (DEEP, 400, "the body is nested deeper than 32 levels"),
    (b'{"profile": ' + b"[" * 40 + b"]" * 40 + b"}", 400, "the body is nested deeper than 32 levels"),
    (b'{"profile": "\\udcbd"}', 400, "the body is not text: a string holds the lone surrogate \\udcbd"),
    (b'{"\\ud800": 1}', 400, "lone surrogate \\ud800"),
    (b'{"profile": "\xbd"}', 400, "the body is not UTF-8 (byte 0xbd at offset 13)"),
    (b'{"index": NaN}', 400, "NaN is not a JSON number"),
    (b'{"profile": "' + b"x" * 70_000 + b'"}', 413, "the body is over 65536 bytes"),
])
async def test_hostile_json_is_refused_saying_why(nursery, method, path, body, status, says):
    api = await start_api(nursery)
    reply = await request(api.port, method, path, body=body, headers=JSON_HEADERS)
    assert reply.status == status and says in error_of(reply), reply.body
    reply.body.decode("utf-8")


async def test_an_unknown_profile_name_of_any_length_is_a_404_without_paths(nursery):
    lab = await start_lab(nursery)  # the real proxy and its real library
    for name in ("x" * 5000, "a." * 2500 + "b", "register-dorp", "../../etc/passwd", "clean.toml", "é" * 300,
                 "a" * 300 + ".toml"):
        for path in ("/active", "/devices/10.0.0.2/profile"):
            reply = await request(lab.port, "PUT", path, body=json.dumps({"profile": name}).encode(),
                                  headers=JSON_HEADERS)
            assert reply.status == 404, (name[:20], reply.body[:200])
            message = error_of(reply)
            assert INSTALL not in message and "/faultlab/profiles" not in message, message
            assert len(message) < 1000 and "available profiles: " in message and "clean" in message
    reply = await request(lab.port, "PUT", "/active", body=b'{"profile": "register-dorp"}', headers=JSON_HEADERS)
    assert "did you mean 'register-drop'?" in error_of(reply)
    reply = await request(lab.port, "PUT", "/active", body=b'{"profile": "../x.toml"}', headers=JSON_HEADERS)
    assert "a profile file is loaded from the command line (--profile FILE)" in error_of(reply)
    assert (await request(lab.port, "GET", "/active")).json() == {"global": None, "devices": {}}


async def test_the_control_s_own_message_with_a_path_is_not_shown_for_an_unknown_name(nursery, monkeypatch):
    api = await start_api(nursery)

    def set_profile(name, device=None):
        raise ProfileError("profile library", "profile", name, f"none found; looked in: {INSTALL}/profiles")

    monkeypatch.setattr(api.fake, "set_profile", set_profile)
    reply = await request(api.port, "PUT", "/active", json_body={"profile": "nope"})
    assert reply.status == 404 and INSTALL not in error_of(reply)
    assert error_of(reply) == "no profile 'nope' in the library; available profiles: clean, register-drop, broken"


async def test_an_internal_error_is_a_500_that_names_no_path(nursery, monkeypatch):
    api = await start_api(nursery)

    def flows():
        raise OSError(36, "File name too long", f"{INSTALL}/profiles/{'a' * 300}.toml")

    monkeypatch.setattr(api.fake, "flows", flows)
    reply = await request(api.port, "GET", "/flows")
    assert reply.status == 500
    assert error_of(reply) == "internal error in faultlab (OSError) on GET /flows; the proxy's log has the details"


async def test_text_from_the_wire_in_an_answer_is_readable(nursery, monkeypatch):
    api = await start_api(nursery)
    api.fake.held["h1"]["summary"] = "MESSAGE sip:b\udcbd@x call=abc\udcff"  # as sip/ decodes it
    api.fake.held["h2"]["summary"] = "NaN delay"
    api.fake.held["h2"]["held_at"] = float("nan")
    reply = await request(api.port, "GET", "/holds")
    assert reply.status == 200
    holds = json.loads(reply.body.decode("utf-8"))
    assert holds[0]["summary"] == "MESSAGE sip:b\\xbd@x call=abc\\xff"
    assert holds[1]["held_at"] is None  # JSON has no NaN
