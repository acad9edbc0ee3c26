"""Who may call the admin API: the token, and the Host, Origin and Sec-Fetch-Site a browser sets.

It is not for browsers: a request whose Host is not the listening address
(or a name in ``ROSETTA_ADMIN_ALLOWED_HOSTS``), or that a browser marks
cross-site (``Origin``, ``Sec-Fetch-Site``), is refused with 403, so a web
page can neither post to it nor read it through DNS rebinding. When a token
is set (``ROSETTA_ADMIN_TOKEN``, required off loopback) every request must
carry ``Authorization: Bearer <token>`` (401).
"""

from __future__ import annotations

import hmac
import ipaddress
import re
from http.server import BaseHTTPRequestHandler

from compute.admin.http_errors import refusal_body
from compute.admin.response import Response
from config.settings import AdminConfig


class AccessCheck:
    """The checks every request passes before its route runs."""

    def __init__(self, config: AdminConfig) -> None:
        self.config = config

    def refusal(self, handler: BaseHTTPRequestHandler) -> Response | None:
        """The 403 or 401 answer for a request that may not call the API, else None."""
        return self._check_site(handler) or self._check_token(handler)

    def _accepted_hosts(self, handler: BaseHTTPRequestHandler) -> list[str]:
        """Host header values this connection may carry: the address it reached
        (and the loopback names, on loopback), the configured host, and
        ``ROSETTA_ADMIN_ALLOWED_HOSTS``."""
        local = handler.connection.getsockname()
        port = int(local[1])
        names = [_host_form(str(local[0]))]
        if ipaddress.ip_address(names[0].strip("[]")).is_loopback:
            names += ["localhost", "127.0.0.1", "[::1]"]
        host = self.config.host.lower()
        if host not in ("0.0.0.0", "::", ""):
            names.append(f"[{host}]" if ":" in host else host)
        accepted = list(dict.fromkeys(f"{name}:{port}" for name in names))
        return accepted + list(self.config.allowed_hosts)

    def _check_site(self, handler: BaseHTTPRequestHandler) -> Response | None:
        """403 unless the request names this server as its host and is not cross-site.

        A browser sends whatever a web page asks to loopback, and a host name
        rebound to 127.0.0.1 makes it same-origin; Host, Origin and
        Sec-Fetch-Site are set by the browser, not by the page.
        """
        hosts = handler.headers.get_all("Host") or []
        accepted = self._accepted_hosts(handler)
        given = hosts[0] if len(hosts) == 1 else None
        ok = False
        if given is not None:
            try:
                name, port = _split_host(given)
            except ValueError:
                pass
            else:
                port = 80 if port is None else port
                for entry in accepted:
                    entry_name, entry_port = _split_host(entry)
                    if name == entry_name and entry_port in (None, port):
                        ok = True
                        break
        if not ok:
            shown = "no Host header" if not hosts else f"Host {', '.join(hosts)!r}"
            return Response(
                403,
                refusal_body(
                    403,
                    f"{shown} is not this server: expected one of "
                    f"{', '.join(accepted)}; add other names to ROSETTA_ADMIN_ALLOWED_HOSTS",
                    accepted=accepted,
                ),
            )
        assert given is not None
        origin = handler.headers.get("Origin")
        own = [f"http://{given.strip().lower()}", f"https://{given.strip().lower()}"]
        if origin is not None and origin.strip().lower().rstrip("/") not in own:
            return Response(
                403,
                refusal_body(
                    403,
                    f"cross-site request refused: Origin {origin!r} is not this "
                    f"server's ({own[0]}); the admin API does not serve web pages",
                    accepted=own,
                ),
            )
        fetch_site = handler.headers.get("Sec-Fetch-Site")
        if fetch_site is not None and fetch_site.strip().lower() not in ("same-origin", "none"):
            return Response(
                403,
                refusal_body(
                    403,
                    f"cross-site request refused: Sec-Fetch-Site {fetch_site!r}; "
                    "the admin API does not serve web pages",
                    accepted=["same-origin", "none"],
                ),
            )
        return None

    def _check_token(self, handler: BaseHTTPRequestHandler) -> Response | None:
        if self.config.token is None:
            return None
        given = handler.headers.get("Authorization", "")
        expected = f"Bearer {self.config.token}"
        if hmac.compare_digest(given.encode(), expected.encode()):
            return None
        return Response(
            401,
            refusal_body(401, "missing or wrong token: send 'Authorization: Bearer <token>'"),
            headers={"WWW-Authenticate": "Bearer"},
        )


def _split_host(text: str) -> tuple[str, int | None]:
    """``name[:port]`` or ``[v6][:port]`` -> (lower-case name, port or None); ValueError."""
    value = text.strip().lower()
    match = re.fullmatch(r"(\[[0-9a-f:.]+\]|[^:\[\]/@\s]+)(?::(\d{1,5}))?", value)
    if match is None:
        raise ValueError(text)
    return match.group(1).rstrip("."), int(match.group(2)) if match.group(2) else None


def _host_form(address: str) -> str:
    """An IP address as it appears in a Host header (IPv6 in brackets, mapped v4 unwrapped)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return f"[{ip}]" if ip.version == 6 else str(ip)
