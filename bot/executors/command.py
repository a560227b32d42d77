"""The ``command`` engine: run the team's own deploy program on this host.

The program gets the deploy in its environment (``SLIPWAY_VERSION``,
``SLIPWAY_SERVICE``… see :attr:`bot.executors.base.Job.environ`), never in
a shell string, and its exit status is the outcome.
"""

from __future__ import annotations

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
            await remember({"pid": pid})

        result = await run_process(self.spec.command, env=job.environ, timeout=self.spec.timeout,
                                   withhold=job.withhold,
                                   cwd=self.spec.working_dir, tail_bytes=self.tail_bytes, on_start=started)
        return _outcome(result)

    async def resume(self, job: Job, reference: dict[str, Any], remember: RememberReference) -> Outcome:
        """A local command cannot be followed up by another Slipway process.

        Raises:
            NotResumable: always.
        """
        raise NotResumable(
            "the deploy command ran inside the Slipway process that stopped; its outcome is unknown")


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
