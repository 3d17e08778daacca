"""The one network rule of both HTTP legs (aligner and gateway upstream): which proxy, which CAs.

A request goes direct to loopback always, and to the hosts ``NO_PROXY`` names; otherwise through
the explicit proxy when one is given, else through ``HTTPS_PROXY`` / ``HTTP_PROXY`` / ``ALL_PROXY``
(upper or lower case, as ``curl`` and ``httpx`` read them), unless the environment is ignored.
HTTPS targets are tunnelled through an HTTP proxy with ``CONNECT``.

Example:
    >>> proxy_for("http://127.0.0.1:8080/v1", proxy="http://proxy.internal:3128")
    >>> proxy_for("https://api.example.com/v1", proxy="http://proxy.internal:3128", use_env=False)
    'http://proxy.internal:3128'
"""

from __future__ import annotations

import ipaddress
import os
import ssl
from collections.abc import Mapping
from typing import Any

# What urllib itself uses to honour NO_PROXY (in the standard library since Python 2, though left
# out of its documentation and of typeshed).
from urllib.request import proxy_bypass_environment  # type: ignore[attr-defined]

import httpx2

__all__ = ["RoutedTransport", "proxy_for", "ssl_context"]


def _loopback(host: str) -> bool:
    if host.lower() in ("localhost", "localhost.localdomain") or host.lower().endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def proxy_for(
    url: str, *, proxy: str | None = None, use_env: bool = True, environ: Mapping[str, str] | None = None
) -> str | None:
    """The proxy a request to ``url`` goes through, or ``None`` to go direct.

    Args:
        url: the target, ``http://`` or ``https://``.
        proxy: an explicit proxy URL, which wins over ``HTTPS_PROXY`` and friends (``NO_PROXY`` still applies).
        use_env: read the proxy variables; ``False`` ignores them all.
        environ: the variables to read (``os.environ`` when ``None``).
    """
    target = httpx2.URL(url)
    if _loopback(target.host):
        return None
    if not use_env:
        return proxy
    found = _env_proxies(os.environ if environ is None else environ)
    if _bypassed(target.host, target.port, found.get("no", "")):
        return None
    if proxy is not None:
        return proxy
    chosen = found.get(target.scheme) or found.get("all")
    if chosen is None:
        return None
    return chosen if "://" in chosen else f"http://{chosen}"


def _bypassed(host: str, port: int | None, no_proxy: str) -> bool:
    # The standard library's reading of NO_PROXY (as curl's): "*", or names matching the host or a
    # parent domain (a leading dot is ignored), an entry with ":port" matching that port only.
    if ":" in host:
        host = f"[{host.strip('[]')}]"  # an IPv6 literal keeps its brackets, so its colons are not a port
    target = host if port is None else f"{host}:{port}"
    return bool(no_proxy) and proxy_bypass_environment(target, {"no": no_proxy})


def _env_proxies(environ: Mapping[str, str]) -> dict[str, str]:
    # urllib's reading (lower case wins, as curl), from a given mapping rather than the process's.
    found: dict[str, str] = {}
    for name, value in environ.items():
        lowered = name.lower()
        if value and lowered.endswith("_proxy") and (name == lowered or lowered not in environ):
            found[lowered[:-6]] = value
    return found


def ssl_context(ca_bundle: str | None = None) -> ssl.SSLContext:
    """The system's trust store, plus ``SSL_CERT_FILE`` when it is set, plus ``ca_bundle`` when given.

    Raises:
        FileNotFoundError: a bundle does not exist.
        ssl.SSLError: a bundle is not PEM certificates.
    """
    context = ssl.create_default_context()
    for bundle in (os.environ.get("SSL_CERT_FILE"), ca_bundle):
        if bundle:
            context.load_verify_locations(cafile=bundle)
    return context


class RoutedTransport(httpx2.AsyncBaseTransport):
    """Sends each request direct or through its proxy, as :func:`proxy_for` decides.

    The environment is read once, when the transport is built; each target's decision is kept.

    Args:
        proxy: the explicit proxy, as :func:`proxy_for`.
        use_env: as :func:`proxy_for`.
        verify: the TLS context for HTTPS targets.
        **options: further ``httpx2.AsyncHTTPTransport`` options (``limits``...).
    """

    def __init__(
        self, *, proxy: str | None = None, use_env: bool = True, verify: ssl.SSLContext | bool = True, **options: Any
    ) -> None:
        self._proxy = proxy
        self._use_env = use_env
        self._environ = dict(os.environ)
        self._options = {"verify": verify, **options}
        self._direct = httpx2.AsyncHTTPTransport(**self._options)
        self._proxied: dict[str, httpx2.AsyncHTTPTransport] = {}
        self._routes: dict[tuple[bytes, str, int | None], httpx2.AsyncHTTPTransport] = {}

    def _route(self, url: httpx2.URL) -> httpx2.AsyncHTTPTransport:
        key = (url.raw_scheme, url.host, url.port)
        route = self._routes.get(key)
        if route is None:
            origin = str(url.copy_with(path="/", query=None, fragment=None))
            via = proxy_for(origin, proxy=self._proxy, use_env=self._use_env, environ=self._environ)
            if via is None:
                route = self._direct
            else:
                route = self._proxied.get(via)
                if route is None:
                    route = self._proxied[via] = httpx2.AsyncHTTPTransport(proxy=via, **self._options)
            self._routes[key] = route
        return route

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        """Send ``request`` on its route."""
        return await self._route(request.url).handle_async_request(request)

    async def aclose(self) -> None:
        """Close the direct and the proxied pools."""
        await self._direct.aclose()
        for transport in self._proxied.values():
            await transport.aclose()
