"""Partner API keys: hashed keys from config or a secret file, and each key's limits.

A partner sends its key in the ``x-api-key`` gRPC metadata. The server never stores a key,
only its SHA-256 (hex): config holds entries ``{id, sha256, max_calls}``, inline under
``auth.keys`` or in a secret file named by ``auth.keys_file`` (YAML, the same list; mount it
with mode 0600). A value that is not 64 hex digits is refused at startup, so a plaintext key
pasted into config is caught, not silently used. ``maata apikey --id NAME`` makes a new key
and prints the entry to add.

No key, or a key whose hash is unknown: UNAUTHENTICATED (the key itself is never logged). Each
key's limits (``max_calls`` live calls, ``calls_per_minute``, ``max_sessions`` resumable
histories kept) are enforced by ``services.gateway.admission`` (the key is the call's tenant).

The key ``id`` (not the key) names the partner in logs and metrics and namespaces its call ids,
so one partner cannot resume another's call.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from maata import config as cfglib
from services.gateway.admission import Tenant

API_KEY_METADATA = "x-api-key"
KEY_ID = re.compile(r"[A-Za-z0-9_-]{1,31}")
SHA256_HEX = re.compile(r"[0-9a-f]{64}")
KEY_PREFIX = "mk_"


class AuthError(Exception):
    """A call refused by authentication or quota; ``code`` is the gRPC status name."""

    def __init__(self, code: str, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


@dataclass(frozen=True)
class ApiKey:
    """One partner key: its id, the SHA-256 hex of the key, and its limits."""

    id: str
    sha256: str
    max_calls: int = 4  # live calls at once
    calls_per_minute: int = 120  # call starts per minute
    max_sessions: int = 16  # resumable histories kept for the key (calls that ended without hanging up)

    def __post_init__(self) -> None:
        if not KEY_ID.fullmatch(self.id):
            raise ValueError(f"API key id {self.id!r} must be 1-31 characters of [A-Za-z0-9_-]")
        if not SHA256_HEX.fullmatch(self.sha256):
            raise ValueError(f"API key {self.id!r}: sha256 must be the 64 lowercase hex digits of the key's SHA-256, "
                             "never the key itself (`maata apikey` prints a new key and its hash)")
        if self.max_calls < 1 or self.calls_per_minute < 1:
            raise ValueError(f"API key {self.id!r}: max_calls and calls_per_minute must be >= 1, got "
                             f"{self.max_calls} and {self.calls_per_minute}")
        if self.max_sessions < 0:
            raise ValueError(f"API key {self.id!r}: max_sessions must be >= 0, got {self.max_sessions}")

    @property
    def tenant(self) -> Tenant:
        """Whom this key's calls are charged to (``services.gateway.admission``)."""
        return Tenant(self.id, self.max_calls, self.calls_per_minute, self.max_sessions)


@dataclass(frozen=True)
class AuthConfig:
    """Where the hashed keys come from: inline ``keys`` and/or the secret file ``keys_file``."""

    keys: list[ApiKey] = field(default_factory=list)
    keys_file: str = ""  # YAML list of {id, sha256, max_calls}; mode 0600 recommended


def hash_key(key: str) -> str:
    """The SHA-256 hex digest config stores for ``key``."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def new_key() -> str:
    """A fresh random API key (256 bits)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def read_keys_file(path: str | Path) -> list[ApiKey]:
    """The keys of a secret file: a YAML list of ``{id, sha256, max_calls}`` (or ``{keys: [...]}``)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"API keys file not found: {path}")
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or []
    if isinstance(data, dict):
        data = data.get("keys", [])
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a list of {{id, sha256, max_calls}} entries")
    return [cfglib.from_dict(ApiKey, entry, f"{path}[{i}]") for i, entry in enumerate(data)]


class Authenticator:
    """Checks ``x-api-key`` metadata against the hashed keys."""

    def __init__(self, keys: Iterable[ApiKey]) -> None:
        self._keys: dict[str, ApiKey] = {}
        ids: set[str] = set()
        for key in keys:
            if key.id in ids:
                raise ValueError(f"API key id {key.id!r} is configured twice")
            if key.sha256 in self._keys:
                raise ValueError(f"API keys {self._keys[key.sha256].id!r} and {key.id!r} have the same hash")
            ids.add(key.id)
            self._keys[key.sha256] = key

    @classmethod
    def from_config(cls, config: AuthConfig) -> Authenticator:
        keys = list(config.keys)
        if config.keys_file:
            keys += read_keys_file(config.keys_file)
        return cls(keys)

    @property
    def empty(self) -> bool:
        return not self._keys

    def add(self, key: ApiKey) -> None:
        """Accept one more key (e.g. ``maata serve``'s ephemeral development key)."""
        self._keys[key.sha256] = key

    def authenticate(self, metadata: Sequence[tuple[str, str | bytes]] | None) -> ApiKey:
        """The key the metadata carries, or AuthError UNAUTHENTICATED."""
        presented = next((v for k, v in metadata or () if k == API_KEY_METADATA), None)
        if isinstance(presented, bytes):
            presented = presented.decode("utf-8", "replace")
        if not presented:
            raise AuthError("UNAUTHENTICATED", f"missing API key: send it in the `{API_KEY_METADATA}` metadata")
        digest = hash_key(presented)
        key = self._keys.get(digest)
        # the dict lookup is on the digest, not the key; compare again in constant time all the same
        if key is None or not hmac.compare_digest(key.sha256, digest):
            raise AuthError("UNAUTHENTICATED", "invalid API key")
        return key

    def by_id(self, key_id: str) -> ApiKey | None:
        """The key named ``key_id`` (call tokens name their key by id)."""
        return next((k for k in self._keys.values() if k.id == key_id), None)


__all__ = ["API_KEY_METADATA", "ApiKey", "AuthConfig", "AuthError", "Authenticator", "hash_key", "new_key",
           "read_keys_file"]
