"""structlog through the stdlib into LogQueue: key-value fields land in the record's ``extra``.

Run a broker, then this script, then read the topic back:

    lq broker &
    python examples/structlog_app.py       # also prints structlog's console lines to stderr
    lq tail example-structlog              # 2026-...Z INFO     shop.orders: order created
    lq tail example-structlog --json       # ..."extra":{"order_id":42,"customer":"ada",...}

How it is wired (structlog's "render within logging" way):

* ``structlog.stdlib.LoggerFactory()``: every structlog logger wraps a stdlib logger of the
  same name, so the stdlib's levels, handlers and ``dictConfig`` apply, and ``module``,
  ``function`` and ``line`` name the caller, not structlog.
* the processors run first (context variables, ``%s`` arguments, ...); the last one,
  ``structlog.stdlib.render_to_log_kwargs``, calls the stdlib logger with the event as the
  message and every other key as ``extra=``. (``exc_info=True`` passes through: the handler
  writes the traceback.)
* :class:`lq_logging.LogQueueHandler` then writes its usual record: ``message`` is the event,
  ``level``, ``logger``, and the fields under ``extra``, exactly as for
  ``logging.info("order created", extra={"order_id": 42})``.
* the console handler renders the same stdlib records with structlog's
  ``ProcessorFormatter``: ``ExtraAdder`` puts the ``extra`` fields back into the event, so the
  console shows ``order created  order_id=42 ...``.

A field named like a ``LogRecord`` attribute (``message``, ``module``, ``name``, ...) cannot
be an ``extra`` field: the stdlib refuses it (``KeyError``), so pick other names.
"""

from __future__ import annotations

import argparse
import logging
import logging.config
import os

import structlog


def configure(url: str, topic: str) -> None:
    """Route structlog into the stdlib, and the stdlib root logger into LogQueue."""
    logging.config.dictConfig({
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "console": {
                "()": structlog.stdlib.ProcessorFormatter,
                "processor": structlog.dev.ConsoleRenderer(
                    colors=False, exception_formatter=structlog.dev.plain_traceback),
                "foreign_pre_chain": [structlog.stdlib.add_log_level,
                                      structlog.stdlib.add_logger_name,
                                      structlog.stdlib.ExtraAdder()],
            },
        },
        "handlers": {
            "logqueue": {
                "class": "lq_logging.LogQueueHandler",
                "url": url,
                "topic": topic,
                "fields": {"service": "example-structlog"},
            },
            "console": {"class": "logging.StreamHandler", "formatter": "console"},
        },
        "root": {"level": "INFO", "handlers": ["logqueue", "console"]},
    })
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,  # bind_contextvars(request_id=...)
            structlog.stdlib.filter_by_level,         # skip the work below for dropped levels
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.stdlib.render_to_log_kwargs,    # event -> msg, other keys -> extra=
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=os.environ.get("LQ_URL", "http://127.0.0.1:5000"))
    parser.add_argument("--topic", default="example-structlog")
    args = parser.parse_args()
    configure(args.url, args.topic)

    log = structlog.get_logger("shop.orders")
    structlog.contextvars.bind_contextvars(request_id="req-7")
    log.info("order created", order_id=42, customer="ada")
    log.bind(order_id=42).warning("payment slow", seconds=3.5)
    try:
        raise ValueError("card declined")
    except ValueError:
        log.error("payment failed", order_id=42, exc_info=True)
    # Nothing else to do: the handler flushes at exit (atexit), waiting at most `timeout`.


if __name__ == "__main__":
    main()
