"""Where and how a report was made: the command, the date and the machine."""

from __future__ import annotations

import datetime
import os
import platform
import shlex
import sys
from collections.abc import Sequence


def machine_info() -> dict[str, str]:
    """The machine in words: CPU cores (those this process may use), torch and advx versions,
    Python and the platform."""
    import torch

    from .. import __version__

    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 0
    return {
        "cores": str(cores),
        "torch": torch.__version__,
        "torch threads": str(torch.get_num_threads()),
        "advx": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
    }


def machine_text(info: dict | None = None) -> str:
    """'2 cores, torch 2.13.0 (1 thread), advx 0.1.0, Python 3.11.2, Linux-...' for ``info``
    (default: this machine, now)."""
    info = machine_info() if info is None else info
    threads = info.get("torch threads", "?")
    plural = "" if threads == "1" else "s"
    return (
        f"{info.get('cores', '?')} cores, torch {info.get('torch', '?')} ({threads} thread{plural}), "
        f"advx {info.get('advx', '?')}, Python {info.get('python', '?')}, {info.get('platform', '?')}"
    )


def provenance(argv: Sequence[str] | None = None) -> dict:
    """What a run records about how it was made: the command, the date and the machine."""
    return {"command": command_text(argv), "date": utc_now(), "machine": machine_info()}


def command_text(argv: Sequence[str] | None = None) -> str:
    """The command line that is running (``advx`` and its arguments)."""
    args = list(sys.argv[1:] if argv is None else argv)
    return shlex.join(["advx", *args])


def utc_now() -> str:
    """The current time, UTC, to the minute."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
