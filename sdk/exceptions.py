"""The SDK's exceptions: one root, one subclass per broker ``error`` code.

Every failure the SDK raises is a :class:`LogQueueError` carrying the broker's machine-readable
``code``, the HTTP ``status`` (``None`` when no response arrived) and the decoded ``response``
body. Catch the root to handle everything, or a subclass to handle one case::

    try:
        consumer.receive_one("orders")
    except QueueEmpty:
        ...

Some classes also derive from a builtin where that makes them easier to catch:
:class:`BrokerUnavailable` is a :class:`ConnectionError`, :class:`BadRequest` a
:class:`ValueError`, :class:`UnknownTopic` and :class:`UnknownId` are :class:`LookupError`\\ s.
:class:`UnencodableRequest` is raised before anything is sent: a :class:`BadRequest` for a
request that cannot even be encoded (a lone surrogate in a message, say).
"""

from __future__ import annotations

from typing import Any


class LogQueueError(Exception):
    """Root of every SDK error.

    Attributes:
        message: the human-readable text (the broker's ``message`` when it sent one).
        code: the broker's ``error`` code, e.g. ``"queue_empty"``.
        status: the HTTP status, or ``None`` when the broker never answered.
        response: the decoded JSON body of the failure, or ``None``.
    """

    code: str = "error"
    status: int | None = None

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None,
                 response: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.response = response

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.message!r}, code={self.code!r}, "
                f"status={self.status!r})")


class BadRequest(LogQueueError, ValueError):
    """A missing or ill-typed field, an invalid topic name, a commit past the end (HTTP 400)."""

    code = "bad_request"
    status = 400


class UnencodableRequest(BadRequest):
    """The request could not be encoded, so it was never sent: a lone surrogate (``"\\ud800"``)
    in a message or name, which UTF-8 cannot carry, a value JSON cannot hold, or a token that
    is not Latin-1. A :class:`BadRequest` (and so a :class:`ValueError`): sending it again as
    it is cannot help."""

    code = "unencodable"
    status = None  # the broker never saw it


class TopicExists(LogQueueError):
    """``create_topic`` for a topic that already exists (HTTP 400)."""

    code = "topic_exists"
    status = 400


class UnknownTopic(LogQueueError, LookupError):
    """The topic does not exist (HTTP 400)."""

    code = "unknown_topic"
    status = 400


class UnknownId(LogQueueError, LookupError):
    """No producer or consumer has this id (HTTP 400)."""

    code = "unknown_id"
    status = 400


class NotRegistered(LogQueueError):
    """The producer or consumer is not registered for this topic (HTTP 400).

    The classic API also raises it, without asking the broker, for a topic that was never
    passed to ``registerTopic``.
    """

    code = "not_registered"
    status = 400


class QueueEmpty(LogQueueError):
    """No message is waiting for this consumer on this topic (HTTP 400)."""

    code = "queue_empty"
    status = 400


class Leased(LogQueueError):
    """consume, fetch or commit on a registration whose work is handed out in leases (409):
    one consumer name is drained one way at a time."""

    code = "leased"
    status = 409


class LeaseLost(LogQueueError):
    """The lease is no longer the caller's (409): it expired and went to another holder, or
    was acked or released already. The caller's work on it will be done again."""

    code = "lease_lost"
    status = 409


class Unauthorized(LogQueueError):
    """The broker wants a token (``Authorization: Bearer``) and got none or a wrong one (401)."""

    code = "unauthorized"
    status = 401


class Forbidden(LogQueueError):
    """The token is valid, but its scopes do not allow this verb on this topic (403)."""

    code = "forbidden"
    status = 403


class NotFound(LogQueueError):
    """No such path on the broker: usually a wrong url prefix or an older broker (404)."""

    code = "not_found"
    status = 404


class MethodNotAllowed(LogQueueError):
    """The path exists but not with this HTTP method (405)."""

    code = "method_not_allowed"
    status = 405


class TooLarge(LogQueueError):
    """A message, batch or body over the broker's limits (413)."""

    code = "too_large"
    status = 413


class InternalError(LogQueueError):
    """The broker failed unexpectedly (500): a broker bug, retried like any 5xx."""

    code = "internal"
    status = 500


class BrokerUnavailable(LogQueueError, ConnectionError):
    """No broker answered usefully after every retry and every url.

    Raised for connection errors, timeouts and 502/503/504 answers (``unavailable`` is the
    broker's 503 when its database is down); a 500 is :class:`InternalError`. It is also a
    builtin :class:`ConnectionError`.
    """

    code = "unavailable"
    status = None  # the broker's 503 sets it; a connection error leaves it None


class ProtocolError(LogQueueError):
    """The answer was not the contract's JSON (e.g. an HTML page from a proxy)."""

    code = "bad_response"


#: ``error`` code -> exception class; codes not listed map by HTTP status, then to the root.
ERRORS_BY_CODE: dict[str, type[LogQueueError]] = {
    cls.code: cls
    for cls in (BadRequest, TopicExists, UnknownTopic, UnknownId, NotRegistered, QueueEmpty,
                Unauthorized, Forbidden, NotFound, MethodNotAllowed, TooLarge, InternalError,
                BrokerUnavailable, Leased, LeaseLost)
}
_ERRORS_BY_STATUS: dict[int, type[LogQueueError]] = {
    400: BadRequest, 401: Unauthorized, 403: Forbidden, 404: NotFound, 405: MethodNotAllowed,
    413: TooLarge,
    500: InternalError, 502: BrokerUnavailable, 503: BrokerUnavailable, 504: BrokerUnavailable,
}


def error_from_response(status: int, body: dict[str, Any] | None) -> LogQueueError:
    """Build the exception for a failure answer (``status`` and decoded JSON ``body``)."""
    body = body or {}
    code = body.get("error")
    cls = ERRORS_BY_CODE.get(code) if isinstance(code, str) else None
    if cls is None:
        cls = _ERRORS_BY_STATUS.get(status, BrokerUnavailable if status >= 500 else LogQueueError)
    message = body.get("message") or f"HTTP {status}"
    return cls(str(message), code=code if isinstance(code, str) else None, status=status,
               response=body or None)


__all__ = [
    "ERRORS_BY_CODE",
    "BadRequest",
    "BrokerUnavailable",
    "Forbidden",
    "InternalError",
    "LeaseLost",
    "Leased",
    "LogQueueError",
    "MethodNotAllowed",
    "NotFound",
    "NotRegistered",
    "ProtocolError",
    "QueueEmpty",
    "TooLarge",
    "TopicExists",
    "Unauthorized",
    "UnknownId",
    "UnencodableRequest",
    "UnknownTopic",
    "error_from_response",
]
