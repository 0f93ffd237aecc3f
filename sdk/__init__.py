"""LogQueue client SDK: the classic API (:class:`MyQueue`) and the Pythonic one (:class:`Client`).

::

    from sdk import Client, MyQueue, QueueEmpty

The classic ``Producer`` and ``Consumer`` are in :mod:`sdk.classic` (``MyQueue`` creates them);
``sdk.Producer`` and ``sdk.Consumer`` are the Pythonic ones. This package never imports the
broker or Flask.
"""

from sdk.classic import MyQueue
from sdk.client import Client, Message, SendResult, TopicStats
from sdk.consumer import Consumer
from sdk.exceptions import (
    BadRequest,
    BrokerUnavailable,
    Forbidden,
    InternalError,
    Leased,
    LeaseLost,
    LogQueueError,
    MethodNotAllowed,
    NotFound,
    NotRegistered,
    ProtocolError,
    QueueEmpty,
    TooLarge,
    TopicExists,
    Unauthorized,
    UnencodableRequest,
    UnknownId,
    UnknownTopic,
)
from sdk.producer import Producer
from sdk.transport import Transport

__all__ = [
    "BadRequest",
    "BrokerUnavailable",
    "Client",
    "Consumer",
    "Forbidden",
    "InternalError",
    "LeaseLost",
    "Leased",
    "LogQueueError",
    "Message",
    "MethodNotAllowed",
    "MyQueue",
    "NotFound",
    "NotRegistered",
    "Producer",
    "ProtocolError",
    "QueueEmpty",
    "SendResult",
    "TooLarge",
    "TopicExists",
    "TopicStats",
    "Transport",
    "Unauthorized",
    "UnencodableRequest",
    "UnknownId",
    "UnknownTopic",
]
