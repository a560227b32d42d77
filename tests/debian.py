"""Debian programs the tests run for real (Alertmanager, Prometheus, the
OCI registry): found where Debian puts them, or where an environment
variable points, and installed with ``apt-get`` once per test session when
missing. A program still missing then FAILS the test that needs it, never
skips it: a path that silently stops being tested is worse than a red build.

Also what running one as a server on 127.0.0.1 takes: ``free_port()``,
``proxy_free_env()``, ``LOCAL_OPENER``, ``ServerFiles`` (its directory, its
configuration and log files) and ``LocalServer`` (the synchronous lifecycle
RealPrometheus and RealRegistry share: launch, wait until ready, retry on a
taken port, SIGTERM then SIGKILL, stop and close)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, ClassVar, Self, TypeVar

import pytest


def apt_install(*packages: str, timeout: float = 600) -> str:
    """One attempt at ``apt-get install -y packages`` (with an ``apt-get
    update`` and a second try if the package lists are empty or stale).
    Returns a transcript, for a failure message."""
    if shutil.which("apt-get") is None:
        return "apt-get is not available here, so no install was attempted."
    if os.geteuid() != 0:
        return "Not running as root, so `apt-get install` was not attempted."
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "-o", "DPkg::Lock::Timeout=300", "install", "-y", "--no-install-recommends", *packages]
    transcript = []
    for command in (install, ["apt-get", "update"], install):
        try:
            done = subprocess.run(command, env=env, stdin=subprocess.DEVNULL, check=False,
                                  capture_output=True, text=True, timeout=timeout)
        except (OSError, subprocess.TimeoutExpired) as exc:
            transcript.append(f"$ {' '.join(command)}\n{exc}")
            break
        transcript.append(f"$ {' '.join(command)}  -> exit {done.returncode}\n"
                          f"{(done.stdout + done.stderr)[-1500:]}")
        if command is install and done.returncode == 0:
            break
    return "\n".join(transcript)


@dataclass
class DebianProgram:
    """One program from one Debian package."""

    package: str
    default_binary: str  # where Debian installs it
    variable: str  # the environment variable that points at another binary
    names: tuple[str, ...]  # what to look for on PATH
    missing_message: str  # what a test that needs it says when it cannot be had
    _install_attempt: str | None = field(default=None, init=False)  # what the one apt-get attempt said

    def binary(self) -> str | None:
        """The binary to run, or None if there is none."""
        configured = os.environ.get(self.variable)
        if configured:
            return configured if os.access(configured, os.X_OK) else None
        if os.access(self.default_binary, os.X_OK):
            return self.default_binary
        return next((found for name in self.names if (found := shutil.which(name))), None)

    def ensure_installed(self) -> str:
        """The binary's path. If it is missing, tries ``apt-get install``
        once per test session (not when the variable names a binary); if it
        is still missing, fails the current test."""
        path = self.binary()
        if path is not None:
            return path
        if self._install_attempt is None and not os.environ.get(self.variable):
            self._install_attempt = apt_install(self.package)
            path = self.binary()
            if path is not None:
                return path
        pytest.fail(f"{self.missing_message}\n\nInstall attempt:\n{self._install_attempt or '(none)'}",
                    pytrace=False)



# -- running one as a server on 127.0.0.1 --------------------------------------

PROXY_VARIABLES = frozenset({"http_proxy", "https_proxy", "all_proxy", "no_proxy"})

# Straight to 127.0.0.1, whatever proxy the environment names.
LOCAL_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_port() -> int:
    """A TCP port free on 127.0.0.1 just now (picked, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def proxy_free_env() -> dict[str, str]:
    """This process' environment without proxy variables (any case), so a
    server on 127.0.0.1 talks to 127.0.0.1 directly."""
    return {k: v for k, v in os.environ.items() if k.lower() not in PROXY_VARIABLES}


class ServerFiles:
    """The working directory of a server run as a subprocess: its
    configuration file, and the log file its output goes to."""

    NAME: ClassVar[str]  # in messages: "Prometheus", "docker-registry"
    CONFIG_FILE: ClassVar[str]  # in ``workdir``
    LOG_FILE: ClassVar[str]  # in ``workdir``
    NO_LOG: ClassVar[str]  # what ``log()`` gives when there is none

    workdir: Path | None
    url: str | None

    @property
    def config_path(self) -> Path:
        assert self.workdir is not None, "not started"
        return self.workdir / self.CONFIG_FILE

    @property
    def log_path(self) -> Path:
        assert self.workdir is not None, "not started"
        return self.workdir / self.LOG_FILE

    def log(self) -> str:
        """Everything the server has logged so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except (AssertionError, OSError):
            return self.NO_LOG

    def _where(self) -> str:
        """The server's address, for the heading of its log."""
        return f"{self.url}"

    def _framed(self, text: str) -> str:
        """``text`` (some of the log) between a heading and an end line."""
        return f"--- {self.NAME} log ({self._where()}) ---\n{text}--- end of {self.NAME} log ---"

    @contextmanager
    def _command_log(self, args: list[str]) -> Iterator[IO[bytes]]:
        """The log file (appending), the command line written to it, for a
        process's stdout and stderr."""
        with open(self.log_path, "ab") as log:
            log.write(f"$ {' '.join(args)}\n".encode())
            log.flush()
            yield log


class LocalServer(ServerFiles):
    """A server run as a subprocess on 127.0.0.1 (a port of its own), in a
    temporary directory unless ``workdir`` is given.

    ``start()`` launches it and waits until ``READY_PATH`` answers 200;
    ``stop()`` ends the process but keeps its port and directory, so a later
    ``start()`` brings the same URL and data back; ``close()`` stops it for
    good and removes the temporary directory. All synchronous, so a fixture
    of any scope can use them. A subclass says what to run (``_command``),
    and with which environment (``_env``)."""

    PROGRAM: ClassVar[DebianProgram]
    ERROR: ClassVar[type[Exception]]  # what start and the subclass's requests raise, with the log
    READY_PATH: ClassVar[str]  # answers 200 once the server is ready
    WORKDIR_PREFIX: ClassVar[str]

    def __init__(self, *, workdir: str | os.PathLike[str] | None, startup_timeout: float,
                 binary_path: str | None) -> None:
        self.startup_timeout = startup_timeout
        self._binary_path = binary_path
        self._workdir_given = workdir is not None
        self.workdir = Path(workdir) if workdir is not None else None
        self.port: int | None = None
        self._process: subprocess.Popen[bytes] | None = None

    def _command(self, path: str) -> list[str]:
        """The command line running binary ``path`` on ``self.port`` (which
        is set); writes what it needs into ``workdir``."""
        raise NotImplementedError

    def _env(self) -> dict[str, str]:
        """The server's environment. No proxy: it stays on 127.0.0.1."""
        return proxy_free_env()

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def print_log(self, tail: int = 20_000) -> None:
        text = self.log()
        if len(text) > tail:
            text = "…" + text[-tail:]
        sys.stderr.write(self._framed(text) + "\n")

    def _error(self, message: str) -> Exception:
        """``ERROR`` with ``message`` and the end of the log."""
        return self.ERROR(f"{message}\n{self._framed(self.log()[-20_000:])}")

    # -- lifecycle --

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None and not isinstance(exc, self.ERROR):
            self.print_log()
        self.close()

    def start(self) -> Self:
        """Launch the server (again, after ``stop()``: same port and data)
        and wait until it is ready."""
        if self.running:
            return self
        path = self._binary_path or self.PROGRAM.ensure_installed()
        if self.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix=self.WORKDIR_PREFIX))
        (self.workdir / "data").mkdir(parents=True, exist_ok=True)
        restarting = self.port is not None
        # A port is picked, released, then bound by the server: another
        # process can take it in between, so a bind failure gets a new one
        # (not on a restart: the URL must stay the same).
        for attempt in range(1 if restarting else 3):
            try:
                if self.port is None:
                    self.port = free_port()
                self._launch(self._command(path), self._env())
                self._wait_ready()
                return self
            except BaseException as exc:
                retry = (not restarting and isinstance(exc, self.ERROR) and attempt < 2
                         and "address already in use" in self.log())
                self._terminate()
                if not retry:
                    raise
                self.port = None
        raise AssertionError("unreachable")

    def _launch(self, args: list[str], env: dict[str, str]) -> None:
        """Run ``args`` in ``workdir`` (a session of its own), its output to the log."""
        with self._command_log(args) as log:
            self._process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                             env=env, cwd=self.workdir, start_new_session=True)

    def _wait_ready(self) -> None:
        """Poll (it is an external process) until ``READY_PATH`` answers 200."""
        assert self._process is not None
        deadline = time.monotonic() + self.startup_timeout
        last = "no answer yet"
        while True:
            if self._process.poll() is not None:
                raise self._error(f"{self.NAME} exited with {self._process.returncode} before it was ready")
            try:
                with LOCAL_OPENER.open(f"{self.url}{self.READY_PATH}", timeout=2) as response:
                    if response.status == 200:
                        return
                    last = f"{self.READY_PATH}: HTTP {response.status}"
            except urllib.error.HTTPError as exc:
                last = f"{self.READY_PATH}: HTTP {exc.code}"
            except (OSError, urllib.error.URLError) as exc:
                last = repr(exc)
            if time.monotonic() > deadline:
                raise self._error(f"{self.NAME} not ready after {self.startup_timeout}s ({last})")
            time.sleep(0.05)

    def _terminate(self) -> None:
        """SIGTERM, SIGKILL after 10s; always reaped."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            try:
                process.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
        process.wait()

    def stop(self) -> None:
        """End the process; its URL then refuses connections. ``start()``
        brings it back on the same port with the same data."""
        self._terminate()

    def close(self) -> None:
        """Stop for good and remove the temporary directory."""
        self._terminate()
        if not self._workdir_given and self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None


# -- for fixtures --------------------------------------------------------------

S = TypeVar("S", bound=LocalServer)


def serving(server: S) -> Iterator[S]:
    """``server`` started, then closed: ``yield from serving(...)`` in a
    module-scoped fixture."""
    try:
        server.start()
        yield server
    finally:
        server.close()


def running(server: S) -> Iterator[S]:
    """``server`` running (restarted if an earlier test stopped it), its log
    printed at teardown (which pytest shows when the test failed):
    ``yield from running(...)`` in a test's fixture."""
    server.start()
    yield server
    server.print_log(tail=5_000)
