"""Where a webhook may be sent. A URL a tenant registers is fetched by the service from inside
the operator's network, so by default it must be https on a public address: loopback, private,
link-local (cloud metadata at 169.254.169.254), shared, multicast and reserved ranges are refused
at registration and again before every delivery (a name may resolve elsewhere later).
TUNEDOCK_WEBHOOK_ALLOW_PRIVATE_URLS lets an operator send to receivers inside the network."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from urllib.parse import urlsplit

from service.errors import Unprocessable

REFUSED = "webhook_url_refused"


def _public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def check_form(url: str, allow_private: bool) -> tuple[str, int]:
    """(host, port) of a webhook URL this service may call, or Unprocessable (422: the URL is
    well-formed, but not one to send to) saying what to change."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise Unprocessable("url is not a valid URL", param="url", code=REFUSED) from None
    schemes = ("https", "http") if allow_private else ("https",)
    if parts.scheme not in schemes:
        raise Unprocessable("url must be https://… (http only where the operator allows private "
                             "receivers: TUNEDOCK_WEBHOOK_ALLOW_PRIVATE_URLS)", param="url", code=REFUSED)
    if not parts.hostname or parts.username or parts.password:
        raise Unprocessable("url must name a host, without user:password@", param="url", code=REFUSED)
    return parts.hostname, port or (443 if parts.scheme == "https" else 80)


async def check(url: str, allow_private: bool) -> None:
    """Refuse a URL this service must not call: its scheme, and every address its host resolves to."""
    host, port = check_form(url, allow_private)
    if allow_private:
        return
    try:
        found = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError, ValueError):  # no such name, or not a valid host name
        raise Unprocessable(f"url's host {host!r} does not resolve", param="url", code=REFUSED) from None
    if not found or not all(_public(info[4][0]) for info in found):
        raise Unprocessable(f"url's host {host!r} is not a public address (loopback, private, "
                             "link-local and reserved ranges are refused unless the operator sets "
                             "TUNEDOCK_WEBHOOK_ALLOW_PRIVATE_URLS)", param="url", code=REFUSED)
