"""Debian programs the tests run for real (Alertmanager, Prometheus): found
where Debian puts them, or where an environment variable points, and
installed with ``apt-get`` once per test session when missing. A program
still missing then FAILS the test that needs it, never skips it: a path
that silently stops being tested is worse than a red build."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field

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
