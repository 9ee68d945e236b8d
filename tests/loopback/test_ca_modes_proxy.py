"""`faultlab proxy` with a TLS listener uses the lab CA: a key that others can read is made private and the proxy
says so on stderr and serves; a CA directory that others can write to stops it at start with how to fix it."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import trio

from faultlab.ca import CA_KEY_FILE, LabCA
from tests.actors import actor_env, open_actors


def proxy_args(confdir: Path) -> list[str]:
    return ["proxy", "--listen", "tls:127.0.0.1:0", "--upstream", "tls:127.0.0.1:9", "--upstream-insecure",
            "--confdir", str(confdir), "--quiet"]


async def test_the_proxy_makes_a_readable_key_private_and_says_so(tmp_path: Path):
    confdir = tmp_path / "ca"
    LabCA.init(confdir)
    key = confdir / CA_KEY_FILE
    os.chmod(key, 0o644)
    async with open_actors(actor_env(tmp_path / "home")) as actors:
        with trio.fail_after(30):
            proxy = await actors.spawn("proxy", *proxy_args(confdir))
            await proxy.wait_line("stderr", rf"the lab CA key {key} could be read by others \(mode 0644\); "
                                            r"its mode is now 0600")
            await proxy.wait_line("stderr", r"listening on tls:127\.0\.0\.1:\d+")
            assert await actors.stop(proxy) == 0, proxy.output()
    assert stat.S_IMODE(key.stat().st_mode) == 0o600


async def test_the_proxy_refuses_a_ca_directory_others_can_write(tmp_path: Path):
    confdir = tmp_path / "ca"
    LabCA.init(confdir)
    os.chmod(confdir, 0o777)
    async with open_actors(actor_env(tmp_path / "home")) as actors:
        with trio.fail_after(30):
            proxy = await actors.spawn("proxy", *proxy_args(confdir))
            assert await proxy.wait_exit() == 2, proxy.output()
    error = "\n".join(proxy.lines["stderr"])
    assert f"faultlab: the lab CA directory {confdir} is writable by others (mode 0777)" in error
    assert f"chmod 700 {confdir}" in error and "Traceback" not in error
    assert not any("listening on" in line for line in proxy.lines["stderr"])
