"""The ``command`` engine: run the team's own deploy program on this host.

The program gets the deploy in its environment (``SLIPWAY_VERSION``,
``SLIPWAY_SERVICE``… see :attr:`bot.executors.base.Job.environ`), never in
a shell string, and its exit status is the outcome.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path
from typing import Any

from bot.config import DeployExecutor
from bot.executors.base import Job, NotResumable, Outcome, RememberReference
from bot.executors.process import ProcessResult, run_process


class CommandExecutor:
    """Runs ``deploy.command`` (an argv list) and waits up to ``deploy.timeout``."""

    kind = "command"

    def __init__(self, spec: DeployExecutor, *, tail_bytes: int = 4000) -> None:
        """Build the engine from a service's ``deploy`` (or ``rollback``) block.

        Raises:
            ValueError: ``spec`` configures another engine (webhook, GitHub Actions).
        """
        if spec.command is None:
            raise ValueError(f"a {spec.kind} engine is not a command; CommandExecutor needs deploy.command")
        self.spec = spec
        self.tail_bytes = tail_bytes

    async def run(self, job: Job, remember: RememberReference) -> Outcome:
        """Run the command for ``job`` and report how it ended.

        The pid is remembered as soon as the program runs, so that a Slipway
        restarted meanwhile knows a local process was under way.

        Raises:
            asyncio.CancelledError: the deploy was cancelled; the command's
                process group has been killed.
        """
        assert self.spec.command is not None  # checked in __init__

        async def started(pid: int) -> None:
            await remember({"pid": pid, "process_start": process_start(pid)})

        result = await run_process(self.spec.command, env=job.environ, timeout=self.spec.timeout,
                                   withhold=job.withhold,
                                   cwd=self.spec.working_dir, tail_bytes=self.tail_bytes, on_start=started)
        return _outcome(result)

    async def resume(self, job: Job, reference: dict[str, Any], remember: RememberReference) -> Outcome:
        """A local command cannot be followed up by another Slipway process:
        its output went to the one that stopped. If the program is still
        running (it has its own session, so it outlived Slipway), its process
        group is stopped first, so that no fix or rollback runs alongside it.

        Raises:
            NotResumable: always, saying whether a leftover program was stopped.
        """
        pid, started = reference.get("pid"), reference.get("process_start")
        if isinstance(pid, int) and started is not None and process_start(pid) == started:
            await stop_group(pid)
            raise NotResumable(f"the deploy command (pid {pid}) outlived the Slipway that ran it and was stopped; "
                               "its outcome is unknown")
        raise NotResumable(
            "the deploy command ran inside the Slipway process that stopped; its outcome is unknown")


def process_start(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot), or None if it is
    gone or a zombie. With the pid it names one process for sure, even after
    the pid is reused."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    return None if fields[0] in ("Z", "X") else int(fields[19])


async def stop_group(pid: int, grace: float = 5.0) -> None:
    """SIGTERM the process group led by ``pid``, then SIGKILL what is left."""
    for signum in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, signum)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace
        while process_start(pid) is not None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)  # not our child: there is nothing to wait on but /proc
        if process_start(pid) is None:
            return


def _outcome(result: ProcessResult) -> Outcome:
    return Outcome(
        succeeded=result.succeeded,
        summary=result.summary,
        exit_code=result.exit_code,
        log_tail=result.output_tail,
        reference={
            "pid": result.pid,
            "output_bytes": result.output_bytes,
            # lets a benchmark measure request-to-spawn latency on the same clock
            "spawned_at_monotonic": result.started_at_monotonic,
        },
    )
