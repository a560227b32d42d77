"""The deploy engine of the sandbox's ``demo`` service.

Slipway runs this as the service's ``command`` engine, exactly as it would
run a team's ``kubectl``/``helm`` wrapper: argv only, never a shell, with the
deploy in ``SLIPWAY_*`` environment variables. It prints the steps a real
deploy would take, then records the version in ``<state-dir>/<environment>.json``.
The sandbox's ``GET /demo/health/<environment>`` reports that version, so
Slipway's verification checks what this script "deployed", as it would check
a real service.

A canary (``SLIPWAY_STRATEGY=canary``) calls it once per step, with
``SLIPWAY_STEP`` and ``SLIPWAY_WEIGHT``: below 100 % the new version is
recorded as the environment's canary beside the stable one, at 100 % it
becomes the stable version, and weight 0 (an abort) removes the canary.
Each call sets a state and never adds to one, so a step applied twice (the
engine contract's "at least once") is harmless.

    python demo_deploy.py --state-dir DIR   # with SLIPWAY_VERSION, SLIPWAY_ENVIRONMENT… set
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

STEPS = (
    "pulling image registry.example/demo:{version}",
    "running database migrations (none pending)",
    "rolling out 3 of 3 instances",
    "waiting for the instances to report ready",
)
EX_USAGE = 64
PACE = 0.4  # seconds per step, so that a person sees the deploy message go through 'deploying'


def record_version(state_dir: Path, environment: str, version: str, deploy_id: str = "") -> None:
    """Write what runs on ``environment`` now, at full traffic and with no
    canary beside it."""
    _write(state_dir, environment, {"version": version, "deploy_id": deploy_id})


def record_canary(state_dir: Path, environment: str, version: str | None, weight: int = 0,
                  deploy_id: str = "") -> None:
    """Run ``version`` as ``environment``'s canary, on ``weight`` % of its
    traffic, beside the stable version (None: no canary any more)."""
    state = _read(state_dir, environment) or {"version": None, "deploy_id": ""}
    state.pop("canary", None)
    if version is not None:
        state["canary"] = {"version": version, "weight": weight, "deploy_id": deploy_id}
    _write(state_dir, environment, state)


def deployed_version(state_dir: Path, environment: str) -> str | None:
    """The stable version last recorded for ``environment``, or None."""
    state = _read(state_dir, environment)
    return state.get("version") if state else None


def canary_of(state_dir: Path, environment: str) -> dict[str, Any] | None:
    """The canary running on ``environment`` (``version``, ``weight``,
    ``deploy_id``), or None."""
    state = _read(state_dir, environment)
    canary = state.get("canary") if state else None
    return canary if isinstance(canary, dict) else None


def _read(state_dir: Path, environment: str) -> dict[str, Any] | None:
    try:
        state = json.loads((state_dir / f"{environment}.json").read_text())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def _write(state_dir: Path, environment: str, state: dict[str, Any]) -> None:
    """Atomically: the health endpoint may read the file at any moment."""
    state_dir.mkdir(parents=True, exist_ok=True)
    target = state_dir / f"{environment}.json"
    partial = target.with_suffix(".json.tmp")
    partial.write_text(json.dumps(state))
    os.replace(partial, target)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The sandbox demo service's deploy engine (run by Slipway).")
    parser.add_argument("--state-dir", required=True, type=Path, help="where the deployed versions are recorded")
    parser.add_argument("--pace", type=float, default=PACE,
                        help=f"seconds per step, so the deploy message visibly goes through 'deploying' "
                             f"(default {PACE})")
    args = parser.parse_args(argv)
    version, environment = os.environ.get("SLIPWAY_VERSION"), os.environ.get("SLIPWAY_ENVIRONMENT")
    if not version or not environment:
        print("demo_deploy: SLIPWAY_VERSION and SLIPWAY_ENVIRONMENT must be set (Slipway sets them)", file=sys.stderr)
        return EX_USAGE
    previous = os.environ.get("SLIPWAY_PREVIOUS_VERSION") or "nothing"
    deploy_id = os.environ.get("SLIPWAY_DEPLOY_ID", "")
    strategy = os.environ.get("SLIPWAY_STRATEGY", "direct")
    if strategy == "canary":
        return _canary_step(args, version, environment, previous, deploy_id)
    if strategy != "direct":
        print(f"demo_deploy: the demo service deploys directly or as a canary, not {strategy!r}", file=sys.stderr)
        return EX_USAGE
    rollback_of = os.environ.get("SLIPWAY_ROLLBACK_OF")
    why = f" (rolling back #{rollback_of})" if rollback_of else ""
    print(f"deploying demo {previous} -> {version} to {environment}{why}", flush=True)
    _work(args.pace, [step.format(version=version) for step in STEPS])
    record_version(args.state_dir, environment, version, deploy_id)
    print(f"demo {version} is running on {environment}", flush=True)
    return 0


def _canary_step(args: argparse.Namespace, version: str, environment: str, previous: str, deploy_id: str) -> int:
    """One call of a canary: SLIPWAY_WEIGHT % of the traffic on ``version``
    (100: it replaces ``previous``; 0: the abort, all traffic back to it)."""
    try:
        step, steps = int(os.environ.get("SLIPWAY_STEP", "")), int(os.environ.get("SLIPWAY_STEPS", ""))
        weight = int(os.environ.get("SLIPWAY_WEIGHT", ""))
    except ValueError:
        print("demo_deploy: a canary step needs SLIPWAY_STEP, SLIPWAY_STEPS and SLIPWAY_WEIGHT (Slipway sets them)",
              file=sys.stderr)
        return EX_USAGE
    if weight == 0:
        print(f"aborting the canary of demo {version} on {environment}: all traffic back to {previous}", flush=True)
        _work(args.pace, [f"routing 100% of traffic to {previous}", f"stopping the canary instances of {version}"])
        record_canary(args.state_dir, environment, None)
        print(f"demo {previous} serves all of {environment}; the canary is gone", flush=True)
        return 0
    print(f"canary of demo {previous} -> {version} on {environment}: step {step} of {steps}, {weight}% of traffic",
          flush=True)
    work = [f"pulling image registry.example/demo:{version}", "starting 1 canary instance beside the 9 stable ones"] \
        if step == 1 else []
    if weight < 100:
        _work(args.pace, [*work, f"routing {weight}% of traffic to {version}"])
        record_canary(args.state_dir, environment, version, weight, deploy_id)
        print(f"demo {version} takes {weight}% of {environment}'s traffic, {previous} the rest", flush=True)
    else:
        _work(args.pace, [*work, f"rolling out {version} to all instances", f"routing 100% of traffic to {version}"])
        record_version(args.state_dir, environment, version, deploy_id)
        print(f"demo {version} is running on {environment}", flush=True)
    return 0


def _work(pace: float, steps: list[str]) -> None:
    for step in steps:
        time.sleep(pace)  # stands in for the real work, so the message shows each state
        print(f"  {step}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
