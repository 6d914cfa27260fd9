"""Prefect's temporary local API (no PREFECT_API_URL), started so that it outlives a Ctrl-C.

Prefect starts it as a child in dfcl's own process group, so Ctrl-C in the terminal (SIGINT to
the whole foreground group) stopped the API at the moment the interrupted flow reports its crash
to it: `dfcl retrain` waiting for ops then hung for minutes in the client's retries and ended
with "ConnectError: Connection refused" instead of "interrupted" (measured: 156 s). Started
here, the same server runs in a process group of its own, and is ended with dfcl: by Prefect's
own atexit hook, or by the kernel (PR_SET_PDEATHSIG) when dfcl dies without running it.
Prefect has no option for either, hence this subclass; its client finds it as its own, since
every SubprocessASGIServer() is one instance per port.
"""
from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import threading

from prefect.server.api.server import SubprocessASGIServer


class LocalAPI(SubprocessASGIServer):
    def _run_uvicorn_command(self) -> subprocess.Popen:
        popen = subprocess.Popen
        subprocess.Popen = functools.partial(popen, process_group=0, preexec_fn=_end_with_parent(os.getpid()))
        try:  # Prefect's own command line and environment, in a group of its own
            return super()._run_uvicorn_command()
        finally:
            subprocess.Popen = popen


def _end_with_parent(parent: int):
    """In the child, before exec: SIGTERM when the thread that started it ends, however it ends
    (Linux only; elsewhere, or when started from another thread than the main one, which may end
    long before dfcl does, Prefect's atexit hook alone stops it)."""
    main = threading.current_thread() is threading.main_thread()

    def arrange() -> None:
        if sys.platform == "linux" and main:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG
            if os.getppid() != parent:  # dfcl died before the line above: nobody to outlive
                os._exit(0)
    return arrange


def start_local_api() -> str:
    """Start the temporary API now, from the main thread (PR_SET_PDEATHSIG follows the thread
    that forks), before Prefect's client starts one of its own; its API URL."""
    server = LocalAPI()
    server.start()
    return server.api_url
