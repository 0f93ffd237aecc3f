"""The token endpoints' requests and replies (/tokens; auth.py checks the tokens).

Apart from the queue's models in schemas.py: only an admin manages tokens, and a token's
name follows the topic-name rule.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, BeforeValidator, Field, StringConstraints

from .schemas import TOPIC_PATTERN, Reply, Request

GLOB_PATTERN = r"^[A-Za-z0-9._:*?\[\]!-]{1,200}$"
Glob = Annotated[str, StringConstraints(pattern=GLOB_PATTERN)]
TokenName = Annotated[str, StringConstraints(pattern=TOPIC_PATTERN)]


def _glob_list(value: object) -> object:
    """A query string or a form gives one string: globs separated by commas."""
    return [part for part in value.split(",") if part] if isinstance(value, str) else value


Globs = Annotated[list[Glob], BeforeValidator(_glob_list), Field(max_length=100)]


class CreateToken(Request):
    name: TokenName | None = Field(default=None, description="Default: token-<random>.")
    produce: Globs = Field(default_factory=list, description="Topic globs it may produce to.")
    consume: Globs = Field(default_factory=list, description="Topic globs it may read.")
    admin: bool = Field(default=False, description="Everything: topics, tokens, every topic.")


class TokenRef(Request):
    name: TokenName


class TokenCreated(Reply):
    name: str
    token: str = Field(description="Shown once: the broker keeps only its SHA-256.")
    produce: list[str]
    consume: list[str]
    admin: bool


class TokenOut(BaseModel):
    name: str
    produce: list[str]
    consume: list[str]
    admin: bool
    created: str
    last_used: str | None = None


class TokenList(Reply):
    tokens: list[TokenOut]
