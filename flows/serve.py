"""`dfcl serve`: the two retraining deployments on one Prefect runner, and the watcher that
queues a run for each new dataset in data/incoming/, until SIGTERM (systemd, containers) or
SIGINT (Ctrl-C) stops them cleanly."""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
from typing import Callable

from prefect.client.schemas.objects import (
    ConcurrencyLimitConfig,
    ConcurrencyLimitStrategy,
)
from prefect.runner import Runner
from prefect.schedules import Cron

from dfcl.config import Params
from dfcl.workspace import Workspace, ensure_workspace
from flows.incoming import queue_new_datasets, retrain_incoming
from flows.retrain import retrain_detector

log = logging.getLogger("dfcl.serve")


class StoppableRunner(Runner):
    """Prefect's runner, stopped alike by SIGTERM and SIGINT: the runs in flight are cancelled
    and marked so (the next `dfcl serve` queues their datasets again, see
    flows.incoming.run_state), the schedules are paused, then `serve` returns. Prefect's own
    SIGTERM handler calls the async stop() from inside the running event loop, where it is
    never awaited, and exits at once."""

    stopped_by: str | None = None

    def handle_sigterm(self, signum: int, frame=None) -> None:  # start() installs it for SIGTERM
        self.stopped_by = self.stopped_by or signal.Signals(signum).name
        self._stop_loop.call_soon_threadsafe(self._stop.set)

    async def serve(self, started: Callable[[], None], stopping: Callable[[], None]) -> str:
        """Run until a signal stops it: `stopping()` (in a thread) first, then the runner; the
        signal's name."""
        self._stop_loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._stop_loop.add_signal_handler(sig, self.handle_sigterm, sig)
        running = asyncio.create_task(self.start())
        started()
        await asyncio.wait([running, asyncio.create_task(self._stop.wait())], return_when=asyncio.FIRST_COMPLETED)
        await asyncio.to_thread(stopping)
        while not self.started and not running.done():  # a signal while it starts: stop it once started
            await asyncio.sleep(0.1)
        if self.started:
            await self.astop()
        await running  # raises what stopped it, when that was not a signal
        return self.stopped_by or "runner exited"


def watch_incoming(params: Params, stop: threading.Event) -> None:
    """The trigger: a new dataset starts a run without waiting for the cron."""
    while not stop.wait(params.flow.serve.poll_s):
        try:
            queue_new_datasets(params)
        except Exception as e:  # e.g. the deployments are not registered yet; try again next poll
            log.warning("watching data/incoming/: %s", e)


def serve_retraining(params: Params, say=print) -> str:
    """Serve `retrain-detector/triggered` (one run at a time, the others wait in line) and
    `retrain-incoming/scheduled` (cron), and watch data/incoming/ every `flow.serve.poll_s`
    seconds, until SIGTERM or SIGINT; returns the signal's name once stopped."""
    ws = Workspace.here()
    ensure_workspace(ws, params.dvc)
    ws.incoming.mkdir(parents=True, exist_ok=True)
    os.environ["DFCL_WORKSPACE"] = str(ws.root)  # the served runs are subprocesses
    sp = params.flow.serve
    runner = StoppableRunner()
    runner.add_deployment(retrain_detector.to_deployment(
        "triggered", description="retrain on one dataset; one run at a time, the others wait in line",
        concurrency_limit=ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE)))
    runner.add_deployment(retrain_incoming.to_deployment(
        "scheduled", schedules=[Cron(sp.cron, timezone=sp.timezone)], parameters={"params": params},
        description="queue a retraining run for every new dataset in data/incoming/"))
    stop = threading.Event()
    watcher = threading.Thread(target=watch_incoming, args=(params, stop), name="watch-incoming")

    def stop_watching() -> None:
        # Before the runs in flight are cancelled, or the watcher would queue their datasets again;
        # a check under way finishes, so no run is queued without its ledger entry.
        stop.set()
        if watcher.is_alive():
            watcher.join()

    if sp.poll_s:
        watcher.start()
    try:
        return asyncio.run(runner.serve(started=lambda: say(
            f"serving retrain-detector/triggered and retrain-incoming/scheduled (cron {sp.cron!r} {sp.timezone})"
            + (f"; watching {ws.incoming} every {sp.poll_s} s" if sp.poll_s else "")
            + "; stop with Ctrl-C or SIGTERM"), stopping=stop_watching))
    finally:
        stop_watching()
