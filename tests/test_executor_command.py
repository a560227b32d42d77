"""The command engine, against real programs (tests/scripts/)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
import tracemalloc
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from bot.config import DeployExecutor
from bot.executors import process
from bot.executors.base import Job, NotResumable
from bot.executors.command import CommandExecutor
from bot.executors.process import run_process

SCRIPTS = Path(__file__).parent / "scripts"
RECORD = str(SCRIPTS / "record.py")
SLEEP_WITH_CHILD = str(SCRIPTS / "sleep_with_child.sh")
FLOOD = str(SCRIPTS / "flood.py")
KILL_SELF = str(SCRIPTS / "kill_self.py")

def job(version: str = "2.7.0", **overrides: Any) -> Job:
    fields = dict(deploy_id=42, service="api", environment="production", version=version,
                  previous_version="2.6.3", rollback_of=None,
                  started_at=datetime(2026, 11, 23, 12, 0, tzinfo=timezone.utc))
    return Job(**{**fields, **overrides})


def executor(*command: str, timeout: float = 10.0, working_dir: str | None = None) -> CommandExecutor:
    return CommandExecutor(DeployExecutor(command=list(command), timeout=timeout, working_dir=working_dir))


class Remembered:
    """A ``remember`` callback that keeps what it was given and says when."""

    def __init__(self) -> None:
        self.references: list[dict[str, Any]] = []
        self.called = asyncio.Event()

    async def __call__(self, reference: dict[str, Any]) -> None:
        self.references.append(reference)
        self.called.set()


def alive(pid: int) -> bool:
    """Whether ``pid`` is a live process. A zombie counts as dead: it runs
    nothing, and where PID 1 does not reap orphans, killed grandchildren stay
    zombies for ever."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


async def read_pids(path: Path) -> tuple[int, int]:
    """The script's and its grandchild's pids, once the script has written them."""
    for _ in range(500):
        if path.exists():
            script, grandchild = map(int, path.read_text().split())
            return script, grandchild
        await asyncio.sleep(0.01)
    raise AssertionError(f"{path} was never written")


async def wait_until_dead(*pids: int) -> list[int]:
    """The pids still alive after a short while (the kernel takes a moment)."""
    for _ in range(200):
        if not any(alive(pid) for pid in pids):
            return []
        await asyncio.sleep(0.01)
    return [pid for pid in pids if alive(pid)]


async def test_a_successful_command_gets_the_deploy_in_its_environment(tmp_path: Path) -> None:
    out = tmp_path / "record.json"
    remember = Remembered()

    outcome = await executor(RECORD, str(out), "0", "--flag").run(job(), remember)

    seen = json.loads(out.read_text())
    assert outcome.succeeded and outcome.exit_code == 0
    assert re.fullmatch(r"exit 0 after \d+(\.\d)?s", outcome.summary)  # e.g. "exit 0 after 0.1s"
    assert seen["argv"] == ["--flag"] and seen["has_path"]
    launch = remember.references[0]["launch"]
    assert seen["env"] == {"SLIPWAY_DEPLOY_ID": "42", "SLIPWAY_SERVICE": "api",
                           "SLIPWAY_ENVIRONMENT": "production", "SLIPWAY_VERSION": "2.7.0",
                           "SLIPWAY_PREVIOUS_VERSION": "2.6.3", "SLIPWAY_STRATEGY": "direct",
                           "SLIPWAY_LAUNCH_ID": launch}
    # the intent before the program, then its pid
    assert remember.references == [{"launch": launch},
                                   {"pid": seen["pid"], "process_start": remember.references[1]["process_start"]}]
    assert isinstance(remember.references[1]["process_start"], int)
    assert outcome.reference["pid"] == seen["pid"]
    assert isinstance(outcome.reference["spawned_at_monotonic"], float)
    # stdout and stderr both land in the tail, in order
    assert outcome.log_tail == "recorded 1 argument(s)\ndone with exit 0\n"
    assert outcome.reference["output_bytes"] == len(outcome.log_tail)


async def test_slipways_secrets_do_not_reach_the_command(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-secret")
    monkeypatch.setenv("SLACK_SIGNING_SECRET", "shh")
    monkeypatch.setenv("DEPLOY_GITHUB_TOKEN", "ghp_secret")
    monkeypatch.setenv("KUBECONFIG", "/etc/kube/config")
    out = tmp_path / "record.json"
    await executor(RECORD, str(out), "0").run(job(withhold=frozenset({"DEPLOY_GITHUB_TOKEN"})), Remembered())
    seen = json.loads(out.read_text())
    assert seen["slack"] == [] and seen["has_path"]
    assert seen["withheld_present"] is False and seen["kubeconfig"] == "/etc/kube/config"


async def test_a_rollback_also_says_what_it_rolls_back(tmp_path: Path) -> None:
    out = tmp_path / "record.json"

    await executor(RECORD, str(out), "0").run(job("2.6.3", previous_version="2.7.0", rollback_of=41), Remembered())

    env = json.loads(out.read_text())["env"]
    assert env["SLIPWAY_ROLLBACK_OF"] == "41" and env["SLIPWAY_VERSION"] == "2.6.3"


async def test_a_canary_step_says_which_step_and_weight(tmp_path: Path) -> None:
    out = tmp_path / "record.json"

    await executor(RECORD, str(out), "0").run(job(strategy="canary", step=2, steps=4, weight=25), Remembered())

    env = json.loads(out.read_text())["env"]
    assert {name: env.get(name) for name in ("SLIPWAY_STRATEGY", "SLIPWAY_STEP", "SLIPWAY_STEPS", "SLIPWAY_WEIGHT",
                                             "SLIPWAY_PHASE", "SLIPWAY_VERSION", "SLIPWAY_PREVIOUS_VERSION")} == {
        "SLIPWAY_STRATEGY": "canary", "SLIPWAY_STEP": "2", "SLIPWAY_STEPS": "4", "SLIPWAY_WEIGHT": "25",
        "SLIPWAY_PHASE": None, "SLIPWAY_VERSION": "2.7.0", "SLIPWAY_PREVIOUS_VERSION": "2.6.3"}


async def test_the_command_runs_in_its_working_dir(tmp_path: Path) -> None:
    out = tmp_path / "record.json"

    await executor(RECORD, str(out), "0", working_dir=str(tmp_path)).run(job(), Remembered())

    assert json.loads(out.read_text())["cwd"] == str(tmp_path)


async def test_a_non_zero_exit_is_a_failure_with_its_code(tmp_path: Path) -> None:
    outcome = await executor(RECORD, str(tmp_path / "r.json"), "3").run(job(), Remembered())

    assert not outcome.succeeded and outcome.exit_code == 3
    assert outcome.summary.startswith("exit 3 after ")
    assert "done with exit 3" in outcome.log_tail


async def test_a_command_killed_by_a_signal_says_so() -> None:
    outcome = await executor(KILL_SELF).run(job(), Remembered())

    assert not outcome.succeeded and outcome.summary.startswith("killed by SIGKILL after ")


async def test_a_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    pids = tmp_path / "pids"

    outcome = await executor(SLEEP_WITH_CHILD, str(pids), timeout=0.5).run(job(), Remembered())

    script, grandchild = await read_pids(pids)
    assert not outcome.succeeded and outcome.exit_code is None
    assert outcome.summary == "timed out after 0.5s (killed)"
    assert await wait_until_dead(script, grandchild) == []


async def test_cancelling_the_deploy_kills_the_command_and_its_children(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    remember = Remembered()
    running = asyncio.create_task(executor(SLEEP_WITH_CHILD, str(pids)).run(job(), remember))
    await remember.called.wait()
    script, grandchild = await read_pids(pids)
    assert alive(script) and alive(grandchild)

    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running

    assert await wait_until_dead(script, grandchild) == []


async def test_huge_output_keeps_a_bounded_tail_of_whole_lines() -> None:
    tracemalloc.start()
    try:
        result = await run_process([FLOOD, "50"], env={}, timeout=60, tail_bytes=1000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert result.exit_code == 0
    assert result.output_bytes == 50 * 1024 * 1024 + len("END\n")
    assert len(result.output_tail.encode()) <= 1000
    lines = result.output_tail.splitlines()
    assert lines[-1] == "END" and lines[-2] == f"line {50 * 1024 * 1024 // 64 - 1:08d} " + "x" * 49
    assert all(line.startswith("line ") for line in lines[:-1])  # no partial first line
    assert peak < 8 * 1024 * 1024, f"peak Python allocation {peak} bytes while reading 50 MB"


async def test_a_program_left_running_by_the_command_does_not_hold_the_deploy(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(process, "DRAIN_GRACE", 0.2)
    # the background sleep keeps the output pipe open after the script exits
    result = await asyncio.wait_for(
        run_process(["bash", "-c", "sleep 1000 & echo $!"], env={}, timeout=30), timeout=10)
    leftover = int(result.output_tail)
    try:
        assert result.exit_code == 0 and not result.timed_out
        assert alive(leftover)  # a daemon the script meant to start is not killed
    finally:
        os.kill(leftover, signal.SIGKILL)


@pytest.mark.parametrize("payload", [
    "1.0.0-rc.1+$(touch {tmp}/pwned-dollar);touch {tmp}/pwned-semicolon",
    "1.0.0`touch {tmp}/pwned-backtick`",
    "1.0.0' \"&& touch {tmp}/pwned-and\" '| touch {tmp}/pwned-pipe > {tmp}/pwned-redirect",
    "1.0.0\ntouch {tmp}/pwned-newline\n$HOME ~ * ${{IFS}}",
])
async def test_shell_metacharacters_reach_the_command_verbatim(tmp_path: Path, payload: str) -> None:
    evil = payload.format(tmp=tmp_path)
    out = tmp_path / "record.json"

    outcome = await executor(RECORD, str(out), "0", evil).run(job(version=evil), Remembered())

    seen = json.loads(out.read_text())
    assert outcome.succeeded
    assert seen["argv"] == [evil] and seen["env"]["SLIPWAY_VERSION"] == evil
    assert sorted(p.name for p in tmp_path.iterdir()) == ["record.json"]


@pytest.mark.parametrize(("command", "expected"), [
    (["./no-such-deploy.sh"], "cannot run ./no-such-deploy.sh: No such file or directory"),
    ([__file__], f"cannot run {__file__}: Permission denied"),  # not executable
])
async def test_a_command_that_cannot_start_fails_with_a_clear_message(command: list[str], expected: str) -> None:
    remember = Remembered()

    outcome = await executor(*command).run(job(), remember)

    assert not outcome.succeeded and outcome.exit_code is None
    assert outcome.summary == expected
    assert [reference for reference in remember.references if "pid" in reference] == []  # only the intent


async def test_a_missing_working_dir_is_named(tmp_path: Path) -> None:
    missing = str(tmp_path / "gone")

    outcome = await executor(RECORD, "x", "0", working_dir=missing).run(job(), Remembered())

    assert not outcome.succeeded
    assert outcome.summary == f"cannot run {RECORD}: working directory {missing}: No such file or directory"


async def test_a_failing_remember_stops_the_command(tmp_path: Path) -> None:
    pids = tmp_path / "pids"

    async def broken(reference: dict[str, Any]) -> None:
        if "pid" not in reference:
            return  # the intent is recorded; recording the pid fails
        await read_pids(pids)  # let the script start its grandchild first
        raise RuntimeError("database is locked")

    with pytest.raises(RuntimeError, match="database is locked"):
        await executor(SLEEP_WITH_CHILD, str(pids)).run(job(), broken)

    assert await wait_until_dead(*await read_pids(pids)) == []


async def test_a_failing_intent_starts_nothing(tmp_path: Path) -> None:
    out = tmp_path / "record.json"

    async def broken(reference: dict[str, Any]) -> None:
        raise RuntimeError("database is locked")

    with pytest.raises(RuntimeError, match="database is locked"):
        await executor(RECORD, str(out), "0").run(job(), broken)

    assert not out.exists()


async def test_the_intent_is_recorded_before_the_program_exists(tmp_path: Path) -> None:
    out = tmp_path / "record.json"
    existed_at_intent: list[bool] = []

    async def remember(reference: dict[str, Any]) -> None:
        if "launch" in reference:
            existed_at_intent.append(out.exists())

    await executor(RECORD, str(out), "0").run(job(), remember)

    assert existed_at_intent == [False] and out.exists()


# A Slipway that dies after spawning the program and before recording its pid:
# a real process, killed (os._exit) in that very window, leaving the program running.
DIES_IN_THE_WINDOW = """
import asyncio, json, os, sys
from datetime import datetime, timezone
from bot.config import DeployExecutor
from bot.executors.base import Job
from bot.executors.command import CommandExecutor

reference_file, *command = sys.argv[1:]

async def remember(reference):
    if "pid" in reference:
        os._exit(9)
    with open(reference_file, "w") as f:
        json.dump(reference, f)

job = Job(deploy_id=42, service="api", environment="production", version="2.7.0", previous_version=None,
          rollback_of=None, started_at=datetime.now(timezone.utc))
asyncio.run(CommandExecutor(DeployExecutor(command=command)).run(job, remember))
"""


async def test_a_program_started_just_before_slipway_died_is_found_by_its_mark_and_stopped(tmp_path: Path) -> None:
    pids, reference_file = tmp_path / "pids", tmp_path / "reference.json"
    root = Path(__file__).resolve().parent.parent
    slipway = await asyncio.create_subprocess_exec(
        sys.executable, "-c", DIES_IN_THE_WINDOW, str(reference_file), SLEEP_WITH_CHILD, str(pids),
        cwd=root, env={**os.environ, "PYTHONPATH": str(root)})
    assert await slipway.wait() == 9
    script, grandchild = await read_pids(pids)
    reference = json.loads(reference_file.read_text())
    try:
        assert set(reference) == {"launch"}  # the intent, and no pid
        assert alive(script) and alive(grandchild)  # the program outlived the Slipway that started it

        with pytest.raises(NotResumable, match=rf"\(pid {script}\) was starting .* and was stopped"):
            await executor(SLEEP_WITH_CHILD).resume(job(), reference, Remembered())

        assert await wait_until_dead(script, grandchild) == []
    finally:
        for pid in (script, grandchild):
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


async def test_an_intent_with_no_program_left_says_whether_it_ran_is_unknown() -> None:
    with pytest.raises(NotResumable, match="no process of it is left; whether it ran is unknown"):
        await executor(RECORD).resume(job(), {"launch": "0" * 32}, Remembered())


async def test_a_command_deploy_cannot_be_resumed() -> None:
    with pytest.raises(NotResumable, match="outcome is unknown"):
        await executor(RECORD).resume(job(), {"pid": 1234}, Remembered())


def test_only_a_command_config_makes_a_command_executor() -> None:
    webhook = DeployExecutor(github_actions={"repository": "acme/api", "workflow": "deploy.yml"})
    with pytest.raises(ValueError, match="github_actions"):
        CommandExecutor(webhook)
