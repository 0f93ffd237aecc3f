"""Who may do what: the bootstrap token (`LQ_TOKEN`) and the scoped tokens in the database.

Two steps. Before routing, the `Authorization: Bearer` header names an :class:`Access` (401
`unauthorized` when a token is required and this one is unknown). Each endpoint declares its
verb (`scope=` in api.py); its view runs only when the Access covers that verb on the
request's topic, else 403 `forbidden`, before any other work.

Constant time per request: the token's SHA-256, then one dict get, or (at most every
`CACHE_SECONDS` per token and process) one lookup by the digest's unique index. So a token
revoked on one broker is refused by every broker on the database within `CACHE_SECONDS`.
With no bootstrap token and no token in the database, auth is off (everything is allowed).
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Callable

from flask import Flask, g, request

from .errors import Forbidden, Unauthorized
from .store import Store, TokenRecord, get_store

EXTENSION = "logqueue.auth"
TOKEN_PREFIX = "lq_"  # recognisable in a leaked config file or a secret scanner
CACHE_SECONDS = 0.5
MAX_CACHED = 4096  # distinct tokens remembered per process (cleared when full)
VERBS = ("produce", "consume", "admin")


def _pattern(globs: tuple[str, ...]) -> re.Pattern[str] | None:
    return re.compile("|".join(fnmatch.translate(glob) for glob in globs)) if globs else None


class Access:
    """What one token may do: topic globs per verb; `admin` may do everything."""

    __slots__ = ("_patterns", "admin")

    def __init__(self, produce: tuple[str, ...] = (), consume: tuple[str, ...] = (),
                 admin: bool = False) -> None:
        self.admin = admin
        self._patterns = {"produce": _pattern(produce), "consume": _pattern(consume)}

    def has_verb(self, verb: str) -> bool:
        """Whether some topic allows `verb` (checked before the request is parsed)."""
        return self.admin or self._patterns.get(verb) is not None

    def allows(self, verb: str, topic: str) -> bool:
        if self.admin:
            return True
        pattern = self._patterns.get(verb)
        return pattern is not None and pattern.match(topic) is not None


EVERYTHING = Access(admin=True)


def digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "replace")).digest()


def new_token() -> tuple[str, str]:
    """A random token (256 bits) and the hex digest to store in its place."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    return token, digest(token).hex()


def bearer(header: str) -> str:
    """The token of an `Authorization: Bearer <token>` header ('' for any other); the
    scheme is matched without regard to case."""
    scheme, _, token = header.strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


class Auth:
    """One app's token checks and its short-lived cache of token lookups."""

    def __init__(self, store: Store, bootstrap: str | None) -> None:
        self.tokens = store.tokens
        self._bootstrap = digest(bootstrap) if bootstrap else None
        self._cache: dict[bytes, tuple[float, Access | None]] = {}
        self._enabled = (0.0, False)  # (until, whether any token is stored)

    def access(self, header: str) -> Access:
        token = bearer(header)
        given = digest(token) if token else None
        if given is not None:
            if self._bootstrap is not None and hmac.compare_digest(given, self._bootstrap):
                return EVERYTHING
            found = self._lookup(given)
            if found is not None:
                return found
        if self._bootstrap is None and not self._tokens_exist():
            return EVERYTHING  # auth is off
        raise Unauthorized("a valid 'Authorization: Bearer <token>' header is required")

    def is_off(self) -> bool:
        """No bootstrap token and no token stored (read now, not from the cache)."""
        return self._bootstrap is None and not self.tokens.exist()

    def forget(self) -> None:
        """Drop the cache: a token was created or revoked through this process."""
        self._cache = {}
        self._enabled = (0.0, False)

    def _lookup(self, key: bytes) -> Access | None:
        now = time.monotonic()
        hit = self._cache.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
        record = self.tokens.find(key.hex())
        access = None if record is None else _access(record)
        if len(self._cache) >= MAX_CACHED:
            self._cache = {}
        self._cache[key] = (now + CACHE_SECONDS, access)
        return access

    def _tokens_exist(self) -> bool:
        until, exist = self._enabled
        now = time.monotonic()
        if until <= now:
            exist = self.tokens.exist()
            self._enabled = (now + CACHE_SECONDS, exist)
        return exist


def _access(record: TokenRecord) -> Access:
    return Access(record.produce, record.consume, record.admin)


def current() -> Access:
    """The Access of the request being served (everything for the public paths)."""
    return g.get("lq_access", EVERYTHING)


def require(verb: str, topic: str | None = None) -> None:
    """403 unless the request's token may `verb` (on `topic`, when the request names one)."""
    access = current()
    if access.allows(verb, topic) if topic is not None else access.has_verb(verb):
        return
    where = f" on topic '{topic}'" if topic is not None else ""
    raise Forbidden(f"this token's scopes do not allow {verb}{where}")


def readable(topic: str) -> bool:
    """Whether the request's token may read `topic` (/stats, /topics and /metrics show only
    those)."""
    return current().allows("consume", topic)


def get_auth(app: Flask) -> Auth:
    return app.extensions[EXTENSION]


def init_app(app: Flask, is_public: Callable[[str], bool]) -> None:
    """Identify every request's token first, before routing and validation."""
    auth = app.extensions[EXTENSION] = Auth(get_store(app), app.config["LQ_TOKEN"])

    @app.before_request
    def identify() -> None:
        path = request.path
        if path.rstrip("/") == "/healthz" or is_public(path):
            return
        g.lq_access = auth.access(request.headers.get("Authorization", ""))
