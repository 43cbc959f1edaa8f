"""Call tokens: short-lived, signed, single-use permissions for one browser call, minted by a
partner's backend with its API key (in the style of LiveKit access tokens), so the partner's own
web page can place calls charged to the key without ever holding the key.

    token = mint_call_token(api_key, key_id="acme", ttl_s=120)    # the partner's backend
    # the page sends it with its offer: POST /api/offer {"sdp": ..., "token": token}
    key = verifier.verify(token)                                  # the gateway: the ApiKey, or TokenError

Format: ``mct1.<payload>.<signature>``, both parts base64url without padding. The payload is
JSON ``{"kid": key id, "iat": issued (unix s), "exp": expiry (unix s), "jti": random id}``; the
signature is HMAC-SHA256 over ``mct1.<payload>`` keyed with the 32-byte SHA-256 of the API key --
the very hash the gateway's key config holds, so the gateway verifies without knowing the key
(and the keys file must then be kept secret: mode 0600). A token is refused when its signature,
key or format is wrong, when it has expired or is not yet valid (``LEEWAY_S`` of clock skew
allowed), when it was issued to live longer than the gateway's ``max_ttl_s``, and when its
``jti`` was already used (single use; used ids are remembered until they expire).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable

from services.gateway.auth import KEY_ID, ApiKey, Authenticator

PREFIX = "mct1"
LEEWAY_S = 30.0  # clock skew allowed between the minting backend and the gateway
MAX_TOKEN_BYTES = 1024


class TokenError(ValueError):
    """A call token that cannot be used (the message says why; it never echoes the token)."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _sign(secret: bytes, signed: str) -> bytes:
    return hmac.new(secret, signed.encode("ascii"), hashlib.sha256).digest()


def mint_call_token(api_key: str, key_id: str, ttl_s: float = 120.0, now: float | None = None) -> str:
    """A call token for the key ``key_id`` whose secret is ``api_key``, valid ``ttl_s`` seconds."""
    if not KEY_ID.fullmatch(key_id):
        raise ValueError(f"key id {key_id!r} must be 1-31 characters of [A-Za-z0-9_-]")
    if not ttl_s > 0:
        raise ValueError(f"ttl_s must be positive, got {ttl_s}")
    issued = time.time() if now is None else now
    payload = {"kid": key_id, "iat": int(issued), "exp": int(issued + ttl_s), "jti": secrets.token_urlsafe(12)}
    signed = f"{PREFIX}.{_b64(json.dumps(payload, separators=(',', ':')).encode())}"
    return f"{signed}.{_b64(_sign(hashlib.sha256(api_key.encode('utf-8')).digest(), signed))}"


class TokenVerifier:
    """Verifies call tokens against the gateway's keys and remembers used ones (single use)."""

    def __init__(self, auth: Authenticator, max_ttl_s: float = 600.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.auth = auth
        self.max_ttl_s = max_ttl_s
        self._clock = clock
        self._used: dict[str, float] = {}  # jti -> exp

    def verify(self, token: object) -> ApiKey:
        """The key ``token`` is charged to; TokenError if it cannot be used."""
        if not isinstance(token, str) or len(token) > MAX_TOKEN_BYTES or token.count(".") != 2:
            raise TokenError(f"a call token is a string {PREFIX}.<payload>.<signature> of at most "
                             f"{MAX_TOKEN_BYTES} bytes")
        prefix, body, signature = token.split(".")
        if prefix != PREFIX:
            raise TokenError(f"unknown call token version {prefix[:16]!r}; expected {PREFIX}")
        try:
            payload = json.loads(_unb64(body))
            given = _unb64(signature)
            kid, iat, exp, jti = payload["kid"], payload["iat"], payload["exp"], payload["jti"]
        except (ValueError, KeyError, TypeError):
            raise TokenError("the call token is malformed") from None
        if not (isinstance(kid, str) and isinstance(jti, str) and isinstance(iat, (int, float))
                and isinstance(exp, (int, float))):
            raise TokenError("the call token is malformed")
        key = self.auth.by_id(kid)
        expected = _sign(bytes.fromhex(key.sha256), f"{prefix}.{body}") if key else b""
        if key is None or not hmac.compare_digest(given, expected):
            raise TokenError("the call token's signature is invalid (or its key is unknown)")
        now = self._clock()
        if exp - iat > self.max_ttl_s:
            raise TokenError(f"the call token was issued for {exp - iat:.0f} s; the limit is {self.max_ttl_s:g} s")
        if now > exp + LEEWAY_S:
            raise TokenError("the call token has expired; mint a new one")
        if now < iat - LEEWAY_S:
            raise TokenError("the call token is not valid yet (check the minting server's clock)")
        self._forget_expired(now)
        if jti in self._used:
            raise TokenError("the call token was already used; mint one per call")
        self._used[jti] = exp
        return key

    def _forget_expired(self, now: float) -> None:
        if len(self._used) > 1024:
            for jti in [j for j, exp in self._used.items() if exp + LEEWAY_S < now]:
                del self._used[jti]


__all__ = ["LEEWAY_S", "PREFIX", "TokenError", "TokenVerifier", "mint_call_token"]
