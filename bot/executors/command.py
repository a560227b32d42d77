"""The ``command`` engine: run the team's own deploy program on this host.

The program gets the deploy in its environment (``SLIPWAY_VERSION``,
``SLIPWAY_SERVICE``… see :attr:`bot.executors.base.Job.environ`), never in
a shell string, and its exit status is the outcome.

A restarted Slipway must never lose track of a program it started (it runs
in a session of its own, so it outlives Slipway). Two facts are recorded
for that, each before the moment it covers: the intent, a fresh mark put in
the program's environment as ``SLIPWAY_LAUNCH_ID``, before the program is
spawned; its pid (the leader of its process group) as soon as it runs.
After a restart, a recorded pid is checked and its group stopped; an intent
without a pid (Slipway died in between) is followed by the mark: every
process whose environment carries it is found in ``/proc`` and its group
stopped. No window is left in which the program runs and nothing recorded
leads to it.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from bot.config import DeployExecutor
from bot.executors.base import Job, NotResumable, Outcome, RememberReference
from bot.executors.process import ProcessResult, run_process

LAUNCH_VARIABLE = "SLIPWAY_LAUNCH_ID"  # the mark a restarted Slipway finds its program by


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

        The intent (``launch``, the mark in the program's environment) is
        remembered before the program is spawned, and its pid as soon as it
        runs, so that a Slipway restarted at any moment finds it (see the
        module's docstring).

        Raises:
            asyncio.CancelledError: the deploy was cancelled; the command's
                process group has been killed.
            Exception: whatever ``remember`` raised; nothing was started if it
                failed on the intent, the process group was killed if on the pid.
        """
        assert self.spec.command is not None  # checked in __init__
        launch = secrets.token_hex(16)
        await remember({"launch": launch})

        async def started(pid: int) -> None:
            # its own session: the pid is also the process group's id
            await remember({"pid": pid, "process_start": process_start(pid)})

        result = await run_process(self.spec.command, env={**job.environ, LAUNCH_VARIABLE: launch},
                                   timeout=self.spec.timeout, withhold=job.withhold,
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
        pid, started, launch = reference.get("pid"), reference.get("process_start"), reference.get("launch")
        if isinstance(pid, int) and started is not None and process_start(pid) == started:
            await stop_group(pid)
            raise NotResumable(f"the deploy command (pid {pid}) outlived the Slipway that ran it and was stopped; "
                               "its outcome is unknown")
        if isinstance(launch, str) and not isinstance(pid, int):
            # Slipway stopped between the intent and the pid: the program may run, found by its mark
            found = await asyncio.to_thread(launched_processes, launch)
            if found:
                await stop_launched(found)
                raise NotResumable(f"the deploy command (pid {min(found)}) was starting as the Slipway that ran it "
                                   "stopped, and was stopped; its outcome is unknown")
            raise NotResumable("Slipway stopped as it started the deploy command, and no process of it is left; "
                               "whether it ran is unknown")
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


async def stop_group(pid: int, grace: float = 5.0, members: Iterable[int] = ()) -> None:
    """SIGTERM the process group ``pid`` (its leader's pid), then SIGKILL it
    unless its leader and ``members`` are gone by then."""
    watched = (pid, *members)
    for signum in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, signum)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace
        while any(process_start(p) is not None for p in watched) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)  # not our child: there is nothing to wait on but /proc
        if all(process_start(p) is None for p in watched):
            return


def launched_processes(launch: str) -> list[int]:
    """The live processes whose environment carries ``SLIPWAY_LAUNCH_ID=launch``:
    the program started with that mark, and what it started in turn (they
    inherit it). Read from ``/proc`` (only this user's processes are readable,
    which is where Slipway's programs are)."""
    mark = f"{LAUNCH_VARIABLE}={launch}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            variables = (entry / "environ").read_bytes().split(b"\0")
        except OSError:  # gone meanwhile, or another user's
            continue
        if mark in variables and process_start(int(entry.name)) is not None:
            found.append(int(entry.name))
    return sorted(found)


async def stop_launched(pids: list[int]) -> None:
    """Stop the process groups of ``pids`` (found by their mark), never
    Slipway's own group."""
    groups: dict[int, list[int]] = {}
    for pid in pids:
        try:
            groups.setdefault(os.getpgid(pid), []).append(pid)
        except ProcessLookupError:
            continue
    own = os.getpgrp()
    for group, members in groups.items():
        if group != own:
            await stop_group(group, members=members)


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
