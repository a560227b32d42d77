"""Running a local program for Slipway: a deploy command or a smoke test.

The program is started from an argv list, never through a shell, so a
version such as ``1.0.0+$(touch /tmp/x)`` reaches it as the literal text it
is. Its output (stdout and stderr together) is consumed as it arrives and
only a bounded tail is kept, so a chatty deploy cannot exhaust Slipway's
memory. It runs in a process group of its own, which is what is killed on a
timeout or a cancellation, so the ``sleep`` or ``kubectl`` a script started
dies with it.

A program that exits normally but leaves something running (``nohup app &``)
is not killed: that may be the point of the script. Its output is read for
a moment more, then Slipway closes its end of the pipe, so whatever was left
behind must send its output elsewhere (``nohup app >app.log 2>&1 &``) or it
will get SIGPIPE on its next write.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from bot.durations import format_duration

KILL_GRACE = 5.0  # seconds between SIGTERM and SIGKILL
DRAIN_GRACE = 2.0  # how long output may still arrive once the program has exited

OnStart = Callable[[int], Awaitable[None]]


@dataclass(frozen=True)
class ProcessResult:
    """How a program ended, with the tail of what it printed."""

    exit_code: int | None  # None: it never ran, or it was killed before it could exit
    timed_out: bool
    duration: float  # seconds, from spawning to exit (or kill)
    output_tail: str  # the last ``tail_bytes`` of output, cut to whole lines where possible
    output_bytes: int  # everything it printed, counted
    error: str | None  # why it could not be started
    pid: int | None
    started_at_monotonic: float  # time.monotonic() when it was spawned
    timeout: float | None = None  # the limit it ran under, to say "timed out after 10m"

    @property
    def succeeded(self) -> bool:
        return self.exit_code == 0 and not self.timed_out

    @property
    def summary(self) -> str:
        """One line: "exit 0 after 3.2s", "timed out after 10m (killed)", "cannot run …"."""
        if self.error is not None:
            return self.error
        if self.timed_out:
            return f"timed out after {format_duration(self.timeout or self.duration)} (killed)"
        if self.exit_code is not None and self.exit_code < 0:
            return f"killed by {_signal_name(-self.exit_code)} after {format_duration(self.duration)}"
        return f"exit {self.exit_code} after {format_duration(self.duration)}"

    @property
    def last_line(self) -> str:
        """The last non-blank line of output ("" when there was none)."""
        lines = [line for line in self.output_tail.splitlines() if line.strip()]
        return lines[-1].strip() if lines else ""


async def run_process(
    argv: list[str],
    *,
    env: dict[str, str],
    timeout: float,
    cwd: str | None = None,
    tail_bytes: int = 4000,
    on_start: OnStart | None = None,
    kill_grace: float = KILL_GRACE,
    withhold: frozenset[str] = frozenset(),
) -> ProcessResult:
    """Run ``argv`` (no shell) with Slipway's environment (less its Slack
    secrets and the variables in ``withhold``) plus ``env`` and wait for it.

    ``on_start(pid)`` is awaited as soon as the program is running, e.g. to
    persist its pid. On ``timeout`` the program's whole process group gets
    SIGTERM, then SIGKILL ``kill_grace`` seconds later if the program is
    still there; the result says ``timed_out``. A program that cannot be
    started (missing, not executable, no such working directory) is a
    result with ``error`` set, not an exception.

    Raises:
        ValueError: ``argv`` is empty.
        asyncio.CancelledError: the caller was cancelled; the process group
            is killed first.
        Exception: whatever ``on_start`` raised, after the process group
            was killed (a job whose pid could not be recorded must not run
            unseen).
    """
    if not argv:
        raise ValueError("argv is empty: there is no program to run")
    tail = _Tail(tail_bytes)
    transport, write_end = await _open_pipe(tail)
    try:
        try:
            process = await _spawn(argv, write_end, env=env, cwd=cwd, withhold=withhold)
        except (OSError, ValueError) as exc:  # ValueError: a NUL byte in argv or env
            return _not_started(argv, cwd, exc)
        started = time.monotonic()
        timed_out = await _wait(process, timeout, on_start, kill_grace)
        duration = time.monotonic() - started
        await _drain(tail)
    finally:
        transport.close()
    return ProcessResult(
        exit_code=None if timed_out else process.returncode,
        timed_out=timed_out,
        duration=duration,
        output_tail=tail.text(),
        output_bytes=tail.total,
        error=None,
        pid=process.pid,
        started_at_monotonic=started,
        timeout=timeout,
    )


async def _open_pipe(tail: "_Tail") -> tuple[asyncio.ReadTransport, int]:
    """A pipe whose read end feeds ``tail``; returns its write end for the child.

    Slipway owns this pipe rather than letting asyncio make one so that it
    can stop reading when it chooses (see ``_drain``).
    """
    read_end, write_end = os.pipe()
    try:
        transport, _ = await asyncio.get_running_loop().connect_read_pipe(
            lambda: tail, open(read_end, "rb", buffering=0))
    except BaseException:
        os.close(write_end)
        raise
    return transport, write_end


async def _spawn(argv: list[str], output: int, *, env: dict[str, str],
                 cwd: str | None, withhold: frozenset[str] = frozenset()) -> asyncio.subprocess.Process:
    """Start ``argv`` in a new session, writing to the ``output`` fd (closed here).

    Raises:
        OSError: the program or the working directory is missing or not usable.
        ValueError: an argument or environment value holds a NUL byte.
    """
    try:
        return await asyncio.create_subprocess_exec(
            *argv,
            stdin=subprocess.DEVNULL,  # a deploy script must never wait on Slipway's terminal
            stdout=output,
            stderr=subprocess.STDOUT,
            env={**inherited_environment(withhold), **env},
            cwd=cwd,
            start_new_session=True,  # its own process group, so the group can be killed
        )
    finally:
        os.close(output)  # the child has its own copy; ours would keep the pipe open for ever


def inherited_environment(withhold: frozenset[str] = frozenset()) -> dict[str, str]:
    """Slipway's environment without its own Slack secrets nor the variables
    in ``withhold``: a deploy script that runs ``env`` or ``set -x`` must not
    print a token into a log tail that is then posted in Slack."""
    return {k: v for k, v in os.environ.items() if not k.startswith("SLACK_") and k not in withhold}


async def _wait(process: asyncio.subprocess.Process, timeout: float,
                on_start: OnStart | None, kill_grace: float) -> bool:
    """Wait for the program to exit; True when it had to be killed for taking too long.

    Raises:
        BaseException: whatever interrupted the wait (cancellation, an
            ``on_start`` failure), after the process group was killed.
    """
    limit = asyncio.timeout(timeout)
    try:
        async with limit:
            if on_start is not None:
                await on_start(process.pid)
            await process.wait()
        timed_out = False
    except TimeoutError:
        await _kill_group(process, kill_grace)
        if not limit.expired():
            raise  # on_start's own TimeoutError, not ours
        timed_out = True
    except BaseException:
        await _kill_group(process, kill_grace)
        raise
    return timed_out


async def _drain(tail: "_Tail") -> None:
    # Output can lag the exit by a moment. But a daemon the script left
    # running may hold the pipe open for ever; it must not hold the deploy.
    try:
        await asyncio.wait_for(asyncio.shield(tail.closed), DRAIN_GRACE)
    except TimeoutError:
        pass


async def _kill_group(process: asyncio.subprocess.Process, grace: float) -> None:
    """SIGTERM the program's process group; SIGKILL it after ``grace`` seconds,
    or as soon as the program itself is gone (whatever is left of the group
    had its chance along with it)."""
    try:
        _signal_group(process.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), grace)
        except TimeoutError:
            pass
    finally:
        # Also reached when this very wait is cancelled: nothing may outlive it.
        _signal_group(process.pid, signal.SIGKILL)
        if process.returncode is None:
            await process.wait()


def _signal_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        pass  # the group is already empty (or only zombies are left, on some systems)


def _not_started(argv: list[str], cwd: str | None, exc: OSError | ValueError) -> ProcessResult:
    reason = getattr(exc, "strerror", None) or str(exc)
    if cwd is not None and getattr(exc, "filename", None) == cwd:
        reason = f"working directory {cwd}: {reason}"
    return ProcessResult(
        exit_code=None, timed_out=False, duration=0.0, output_tail="", output_bytes=0,
        error=f"cannot run {argv[0]}: {reason}", pid=None, started_at_monotonic=time.monotonic(),
    )


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class _Tail(asyncio.Protocol):
    """Reads the program's output as it arrives, keeping only the last bytes."""

    def __init__(self, limit: int) -> None:
        self.limit = max(limit, 0)
        self.total = 0
        self.buffer = bytearray()
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        self.total += len(data)
        self.buffer += data
        if len(self.buffer) > 2 * self.limit:  # trim in batches, not on every chunk
            del self.buffer[:len(self.buffer) - self.limit]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)

    def text(self) -> str:
        """The tail, decoded; when output was cut, the partial first line is dropped."""
        kept = bytes(self.buffer[len(self.buffer) - self.limit:])
        if len(kept) < self.total:
            newline = kept.find(b"\n")
            if 0 <= newline < len(kept) - 1:
                kept = kept[newline + 1:]
        return kept.decode("utf-8", errors="replace")
