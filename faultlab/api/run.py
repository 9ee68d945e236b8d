"""The proxy with its control API beside it: the composition above both (``faultlab proxy --api``, the pytest
plugin's ``faultlab_proxy(..., api=...)``).

:func:`serve_proxy_with_api` takes the same :class:`~faultlab.proxy.ProxyConfig` as
:func:`faultlab.proxy.serve_proxy`; when ``config.api`` is set it checks the API's address with the rest of the
configuration, before anything listens, and starts the API once the relay's listeners are bound.
"""

from __future__ import annotations

from functools import partial

import trio

from faultlab.addr import format_hostport
from faultlab.api.server import check_api_bind, serve_api
from faultlab.proxy import Proxy, ProxyConfig, ProxyControl, serve_proxy


def check_config(config: ProxyConfig) -> None:
    """:meth:`ProxyConfig.validate`, and the control API's address and token when ``config.api`` is set
    (:class:`~faultlab.proxy.ConfigError` or :class:`~faultlab.api.server.ApiBindError`)."""
    config.validate()
    if config.api is not None:
        check_api_bind(config.api[0], config.api_token)


async def serve_proxy_with_api(config: ProxyConfig, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Run :func:`faultlab.proxy.serve_proxy`, and the control API on ``config.api`` when set.

    ``task_status.started(proxy)`` reports the :class:`~faultlab.proxy.Proxy` once its listeners and the API are
    bound; ``proxy.api_address`` is the API's address and ``proxy.control`` the object it drives."""
    check_config(config)
    services = [partial(_serve_control_api, config)] if config.api is not None else []
    await serve_proxy(config, services=services, task_status=task_status)


async def _serve_control_api(config: ProxyConfig, proxy: Proxy, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    assert config.api is not None
    proxy.control = ProxyControl(proxy)
    async with trio.open_nursery() as nursery:
        proxy.api_address = await nursery.start(
            partial(serve_api, proxy.control, *config.api, token=config.api_token, ca_confdir=config.confdir))
        proxy.emit("api", detail={"address": format_hostport(*proxy.api_address)})
        task_status.started()
