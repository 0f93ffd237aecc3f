"""Scoped tokens: only each token's SHA-256 (hex) is stored, so no table holds one in clear.

A scope is a tuple of topic globs per verb, kept one glob per line. What a token may do is
decided in auth.py; this module only reads and writes the rows.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UnknownToken
from . import queries as q
from .database import Database
from .records import now_us

TOUCH_EVERY_US = 60_000_000  # `used_us` is written at most once a minute per token and process


@dataclass(frozen=True, slots=True)
class TokenRecord:
    name: str
    produce: tuple[str, ...]
    consume: tuple[str, ...]
    admin: bool
    created_us: int = 0
    used_us: int | None = None


def _globs(text: str) -> tuple[str, ...]:
    return tuple(line for line in text.split("\n") if line)


class Tokens:
    def __init__(self, db: Database) -> None:
        self.db = db

    def create(self, name: str, digest: str, produce: tuple[str, ...],
               consume: tuple[str, ...], admin: bool) -> None:
        """TokenExists when the name is taken (driver.py maps the constraint)."""
        with self.db.transaction(write=True) as conn, self.db.translated(name=name):
            conn.execute(q.INSERT_TOKEN, {"name": name, "digest": digest,
                                          "produce": "\n".join(produce),
                                          "consume": "\n".join(consume),
                                          "admin": int(admin), "now": now_us()})

    def find(self, digest: str) -> TokenRecord | None:
        """The token with this digest (one indexed lookup), marking it used."""
        with self.db.transaction() as conn:
            row = conn.execute(q.SELECT_TOKEN, {"digest": digest}).first()
        if row is None:
            return None
        produce, consume, admin, used_us = row
        now = now_us()
        if used_us is None or now - used_us > TOUCH_EVERY_US:
            with self.db.transaction(write=True) as conn:
                conn.execute(q.TOUCH_TOKEN, {"digest": digest, "now": now})
        return TokenRecord("", _globs(produce), _globs(consume), bool(admin))

    def exist(self) -> bool:
        """Whether any token is stored (then auth is on even without a bootstrap token)."""
        with self.db.transaction() as conn:
            return conn.execute(q.ANY_TOKEN).first() is not None

    def all(self) -> list[TokenRecord]:
        with self.db.transaction() as conn:
            rows = conn.execute(q.SELECT_TOKENS).all()
        return [TokenRecord(name, _globs(produce), _globs(consume), bool(admin), created, used)
                for name, produce, consume, admin, created, used in rows]

    def revoke(self, name: str) -> None:
        with self.db.transaction(write=True) as conn:
            if not conn.execute(q.DELETE_TOKEN, {"name": name}).rowcount:
                raise UnknownToken(f"no token is named {name!r}")
