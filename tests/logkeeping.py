"""``kept_logging()``: let a test run code that sets the root logger up (``main()`` does: its handler
writes to the stdout it finds, a captured one in a test) and put the logging back afterwards.

Used inside a test, not as a fixture: pytest's own capture handlers change between the setup, call
and teardown phases, and a fixture would put back the setup phase's, whose streams are closed later.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

NAMES = ("", "pymodbus", "asyncua", "httpx", "httpcore")


@contextlib.contextmanager
def kept_logging() -> Iterator[None]:
    saved = {name: (logging.getLogger(name).handlers[:], logging.getLogger(name).level) for name in NAMES}
    try:
        yield
    finally:
        root = logging.getLogger()
        for handler in root.handlers:
            if handler not in saved[""][0]:
                handler.close()
        for name, (handlers, level) in saved.items():
            logger = logging.getLogger(name)
            logger.handlers[:] = handlers
            logger.setLevel(level)
