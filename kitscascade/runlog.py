"""Logging set-up for workflow jobs: everything a step says goes to its rule's log file."""

from __future__ import annotations

import logging
import sys
from pathlib import Path


def start(log_path) -> None:
    """Send stderr (tracebacks, tqdm) and the ``logging`` records of a job to ``log_path``.

    The log is appended to, so a retried or requeued job keeps the earlier attempt's lines.
    """
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    sys.stderr = open(log_path, "a", buffering=1)
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True
    )
