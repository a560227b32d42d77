"""The deploy engine of the sandbox's ``demo`` service.

Slipway runs this as the service's ``command`` engine, exactly as it would
run a team's ``kubectl``/``helm`` wrapper: argv only, never a shell, with the
deploy in ``SLIPWAY_*`` environment variables. It prints the steps a real
deploy would take, then records the version in ``<state-dir>/<environment>.json``.
The sandbox's ``GET /demo/health/<environment>`` reports that version, so
Slipway's verification checks what this script "deployed", as it would check
a real service.

    python demo_deploy.py --state-dir DIR   # with SLIPWAY_VERSION, SLIPWAY_ENVIRONMENT… set
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

STEPS = (
    "pulling image registry.example/demo:{version}",
    "running database migrations (none pending)",
    "rolling out 3 of 3 instances",
    "waiting for the instances to report ready",
)
EX_USAGE = 64
PACE = 0.4  # seconds per step, so that a person sees the deploy message go through 'deploying'


def record_version(state_dir: Path, environment: str, version: str, deploy_id: str = "") -> None:
    """Write what runs on ``environment`` now (atomically: the health endpoint
    may read it at any moment)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    target = state_dir / f"{environment}.json"
    partial = target.with_suffix(".json.tmp")
    partial.write_text(json.dumps({"version": version, "deploy_id": deploy_id}))
    os.replace(partial, target)


def deployed_version(state_dir: Path, environment: str) -> str | None:
    """The version last recorded for ``environment``, or None."""
    try:
        return json.loads((state_dir / f"{environment}.json").read_text())["version"]
    except (OSError, ValueError, KeyError):
        return None


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
    rollback_of = os.environ.get("SLIPWAY_ROLLBACK_OF")
    why = f" (rolling back #{rollback_of})" if rollback_of else ""
    print(f"deploying demo {previous} -> {version} to {environment}{why}", flush=True)
    for step in STEPS:
        time.sleep(args.pace)  # stands in for the real work, so the message shows each state
        print(f"  {step.format(version=version)}", flush=True)
    record_version(args.state_dir, environment, version, os.environ.get("SLIPWAY_DEPLOY_ID", ""))
    print(f"demo {version} is running on {environment}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
