"""Ship stdlib :mod:`logging` to a LogQueue broker.

* :class:`LogQueueHandler`: a handler for ``logging.config.dictConfig`` that batches records
  on a background thread, spools them to disk while the broker is down, and never blocks,
  loses or recurses (see :mod:`lq_logging.handler`).
* :class:`JSONFormatter`: the LogQueue record format, usable with any handler
  (see :mod:`lq_logging.record`).
"""

from lq_logging.handler import LogQueueHandler
from lq_logging.record import JSONFormatter

__all__ = ["JSONFormatter", "LogQueueHandler"]
