"""Worker URL checks: a worker is a valid http(s) base URL and never the router itself.

:func:`normalize_worker_url` rejects (``ValueError`` with the reason) anything that would otherwise be
registered and stay "starting" forever: spaces and control characters, unbalanced IPv6 brackets, ports out
of range, oversized or malformed host names, userinfo, queries, fragments and non-http(s) schemes.
:func:`is_self_address` recognises the router's own listening address under the aliases it can detect
without DNS (loopback names, the wildcard address, this machine's host name).
"""

from __future__ import annotations

import ipaddress
import re
import socket
import urllib.parse

MAX_URL_LEN = 2048
MAX_HOST_LEN = 253  # DNS limit
_LABEL = re.compile(r"^(?!-)[A-Za-z0-9_-]{1,63}(?<!-)$")
_PATH = re.compile(r"^[A-Za-z0-9._~!$&'()*+,;=:@%/-]*$")
LOOPBACK_ALIASES = frozenset({"localhost", "127.0.0.1", "::1", "0.0.0.0", "::", "ip6-localhost", "ip6-loopback"})


def _check_host(host: str) -> None:
    if not host:
        raise ValueError("has no host")
    if len(host) > MAX_HOST_LEN:
        raise ValueError(f"host name is longer than {MAX_HOST_LEN} characters")
    try:
        ipaddress.ip_address(host)
        return
    except ValueError:
        pass
    if not all(_LABEL.match(part) for part in host.rstrip(".").split(".")):
        raise ValueError(f"host {host[:80]!r} is not a valid host name or IP address")


def normalize_worker_url(url: object) -> str:
    """The canonical form of a worker URL (no trailing slash), or ``ValueError`` saying what is wrong."""
    if not isinstance(url, str):
        raise ValueError(f"worker url must be a string, got {type(url).__name__}")
    if not url:
        raise ValueError("worker url is empty")
    if len(url) > MAX_URL_LEN:
        raise ValueError(f"worker url is longer than {MAX_URL_LEN} characters")
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F or not c.isascii() for c in url):
        raise ValueError(f"worker url {url[:80]!r} contains whitespace, control or non-ASCII characters")
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port  # raises for non-numeric or out-of-range ports
        host = parts.hostname or ""
    except ValueError as e:
        raise ValueError(f"worker url {url[:80]!r} is malformed: {e}") from None
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"worker url {url[:80]!r} must start with http:// or https://")
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"worker url {url[:80]!r} must not carry credentials")
    if parts.query or parts.fragment or url.endswith(("?", "#")):
        raise ValueError(f"worker url {url[:80]!r} must not have a query or fragment")
    if port == 0 or (parts.netloc.endswith(":") and port is None):
        raise ValueError(f"worker url {url[:80]!r} has an invalid port")
    if not _PATH.match(parts.path):
        raise ValueError(f"worker url {url[:80]!r} has an invalid path")
    try:
        _check_host(host)
    except ValueError as e:
        raise ValueError(f"worker url {url[:80]!r} {e}") from None
    return url.rstrip("/")


def local_host_names(bind_host: str | None = None) -> set[str]:
    """Names under which this machine can reach its own listening sockets (no DNS lookups)."""
    names = set(LOOPBACK_ALIASES)
    for fn in (socket.gethostname, socket.getfqdn):
        try:
            names.add(fn().lower())
        except OSError:  # pragma: no cover
            pass
    if bind_host:
        names.add(bind_host.lower().strip("[]"))
    return names


def is_self_address(url: str, port: int | None, hosts: set[str]) -> bool:
    """Whether ``url`` (already normalized) points at ``port`` on one of ``hosts``."""
    if not port:
        return False
    parts = urllib.parse.urlsplit(url)
    url_port = parts.port or (443 if parts.scheme == "https" else 80)
    host = (parts.hostname or "").lower()
    if url_port != port:
        return False
    if host in hosts:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
