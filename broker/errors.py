"""The broker's failures: one tree, each class carrying its HTTP status and `error` code."""

from __future__ import annotations


class BrokerError(Exception):
    """A failure the client caused or can act on; rendered as the contract's failure body."""

    status = 400
    code = "bad_request"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(BrokerError):
    code = "bad_request"


class TopicExists(BrokerError):
    code = "topic_exists"


class UnknownTopic(BrokerError):
    code = "unknown_topic"


class UnknownId(BrokerError):
    code = "unknown_id"


class NotRegistered(BrokerError):
    code = "not_registered"


class QueueEmpty(BrokerError):
    code = "queue_empty"


class Unauthorized(BrokerError):
    status = 401
    code = "unauthorized"


class Forbidden(BrokerError):
    """A valid token whose scopes do not cover this verb on this topic."""

    status = 403
    code = "forbidden"


class TokenExists(BrokerError):
    code = "token_exists"


class UnknownToken(BrokerError):
    code = "unknown_token"


class TooLarge(BrokerError):
    status = 413
    code = "too_large"


class Unavailable(BrokerError):
    """The database did not answer: the client may retry, nothing was acknowledged."""

    status = 503
    code = "unavailable"


class UnsupportedMediaType(BrokerError):
    """A Content-Type the endpoint does not read (OTLP: protobuf or JSON)."""

    status = 415
    code = "unsupported_media_type"


class NotInstalled(BrokerError):
    """An optional feature whose extra is not installed (`pip install 'logqueue[otlp]'`)."""

    status = 501
    code = "not_installed"


class UnsupportedEncoding(BrokerError):
    """A Content-Encoding the broker cannot decode."""

    status = 415
    code = "unsupported_encoding"


class Leased(BrokerError):
    """consume, fetch or commit on a registration whose work is handed out in leases."""

    status = 409
    code = "leased"


class LeaseLost(BrokerError):
    """The lease is no longer the caller's: it expired and went to another holder, or it was
    acked or released already. The caller's work on it is a redelivery."""

    status = 409
    code = "lease_lost"
