"""Who is calling: API keys in ``Authorization: Bearer <key>`` or ``X-API-Key``, checked in constant time.

A presented key is hashed and compared with every stored hash using
``hmac.compare_digest``, always all of them: neither the answer time nor an
early exit tells a caller how close a guess was or which names exist.
No key or an unknown key is 401; a known key without the route's scope is 403.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from workers.api.config import ApiKey, Scope


@dataclass(frozen=True)
class Principal:
    """The caller of a request: a key's name and scopes, or ``anonymous`` (read-only, when allowed)."""

    name: str
    scopes: frozenset[str]


ANONYMOUS = Principal(name="anonymous", scopes=frozenset({"read"}))


class KeyRing:
    """The configured keys, by hash.

    >>> from workers.api.keys import hash_key
    >>> ring = KeyRing([ApiKey(name="shop", sha256=hash_key("s3cret-key"), scopes=["read", "write"])])
    >>> ring.identify("s3cret-key").name, ring.identify("guess")
    ('shop', None)
    """

    def __init__(self, keys: Sequence[ApiKey], *, allow_anonymous_read: bool = False) -> None:
        self._entries = [(bytes.fromhex(k.sha256), k) for k in keys]
        self.allow_anonymous_read = allow_anonymous_read

    def __len__(self) -> int:
        return len(self._entries)

    def identify(self, presented: str) -> ApiKey | None:
        digest = hashlib.sha256(presented.encode()).digest()
        found = None
        for stored, key in self._entries:  # every entry, whatever matched before
            if hmac.compare_digest(digest, stored):
                found = key
        return found


_bearer = HTTPBearer(auto_error=False, scheme_name="bearer", description="`Authorization: Bearer <key>`")
_header = APIKeyHeader(name="X-API-Key", auto_error=False, scheme_name="apiKey", description="`X-API-Key: <key>`")


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, detail=detail, headers={"WWW-Authenticate": "Bearer"})


def require(scope: Scope) -> Callable[..., Coroutine[Any, Any, Principal]]:
    """A dependency that answers 401/403 unless the caller holds ``scope``."""

    async def caller(
        request: Request,
        bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
        header: Annotated[str | None, Depends(_header)],
    ) -> Principal:
        ring: KeyRing = request.app.state.gateway.keyring
        presented = bearer.credentials if bearer is not None else header
        if presented is None:
            if scope == "read" and ring.allow_anonymous_read:
                return ANONYMOUS
            raise _unauthorized("an API key is required (Authorization: Bearer <key> or X-API-Key)")
        key = ring.identify(presented)
        if key is None:
            raise _unauthorized("unknown API key")
        if scope not in key.scopes:
            raise HTTPException(status.HTTP_403_FORBIDDEN, detail=f"this key lacks the {scope!r} scope")
        return Principal(name=key.name, scopes=frozenset(key.scopes))

    caller.__name__ = f"require_{scope.replace(':', '_')}"
    return caller


ReadCaller = Annotated[Principal, Depends(require("read"))]
WriteCaller = Annotated[Principal, Depends(require("write"))]
PredictCaller = Annotated[Principal, Depends(require("predict"))]
