#!/usr/bin/env python3
"""Test helper: record argv, SLIPWAY_* and pid as JSON, print a line, exit.

usage: record.py OUTPUT.json EXIT_CODE [ARG...]
"""
import json
import os
import sys

output, code, *args = sys.argv[1:]
with open(output, "w", encoding="utf-8") as f:
    json.dump({
        "argv": args,
        "env": {k: v for k, v in os.environ.items() if k.startswith("SLIPWAY_")},
        "has_path": "PATH" in os.environ,
        "slack": sorted(k for k in os.environ if k.startswith("SLACK_")),
        "withheld_present": "DEPLOY_GITHUB_TOKEN" in os.environ,
        "kubeconfig": os.environ.get("KUBECONFIG"),
        "pid": os.getpid(),
        "cwd": os.getcwd(),
    }, f)
print("recorded", len(args), "argument(s)")
print(f"done with exit {code}", file=sys.stderr)
sys.exit(int(code))
