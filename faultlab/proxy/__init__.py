"""The proxy: the composition above ``faultlab.net``. It serves the relay (``faultlab.relay``) on its
listeners (``serve``), checks its configuration (``config``) and offers the control object the API
drives (``control``)."""

from faultlab.proxy.config import ConfigError, ProxyConfig
from faultlab.proxy.control import ProxyControl
from faultlab.proxy.serve import Proxy, keep_flushed, serve_proxy

__all__ = ["ConfigError", "Proxy", "ProxyConfig", "ProxyControl", "keep_flushed", "serve_proxy"]
