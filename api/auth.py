"""Who may write: reads are open; writes need a key from PGCLIP_API_KEYS.

With no keys configured, writes are allowed only on a loopback listener (the
embedded demo keeps working); ``pgclip serve`` refuses to listen anywhere else
without keys.
"""

from __future__ import annotations

import hmac
import ipaddress

from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException
from litestar.handlers.base import BaseRouteHandler


# What a 401 for a missing or wrong key asks for (RFC 9110 §11.6.1; RFC 6750's scheme).
CHALLENGE = {"WWW-Authenticate": 'Bearer realm="pgclip"'}


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def key_matches(given: str, keys: tuple[str, ...]) -> bool:
    """Constant-time comparison against every key (no early exit that leaks which)."""
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(given.encode(), key.encode())
    return matched


def require_write_key(connection: ASGIConnection, _: BaseRouteHandler) -> None:
    keys = connection.app.state.service.settings.write_keys
    if not keys:
        server = connection.scope.get("server") or (None, None)
        if is_loopback(server[0]):
            return
        raise NotAuthorizedException("writes are disabled: no PGCLIP_API_KEYS configured on this server")
    scheme, _, token = connection.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise NotAuthorizedException("this request changes data: send Authorization: Bearer <API key>",
                                     headers=CHALLENGE)
    if not key_matches(token.strip(), keys):
        raise NotAuthorizedException("the API key is not valid", headers={
            "WWW-Authenticate": f'{CHALLENGE["WWW-Authenticate"]}, error="invalid_token"'})
