#!/usr/bin/env python3
"""A stand-in deploy engine for the tests: a real program Slipway runs as a
subprocess. It appends what it was given (argv and SLIPWAY_* variables) as
one JSON line to the file named by --record, optionally waits for a file to
appear (--wait-for, so a test decides when the "deploy" finishes), prints
--lines lines of output, and exits with --exit."""

import argparse
import json
import os
import sys
import time

parser = argparse.ArgumentParser()
parser.add_argument("--record")
parser.add_argument("--exit", type=int, default=0)
parser.add_argument("--lines", type=int, default=3)
parser.add_argument("--wait-for")
parser.add_argument("--started")
args, rest = parser.parse_known_args()

if args.started:
    with open(args.started, "a") as started:
        started.write(f"{os.getpid()}\n")
if args.record:
    entry = {"argv": sys.argv[1:], "pid": os.getpid(),
             "env": {k: v for k, v in os.environ.items() if k.startswith("SLIPWAY_")}}
    with open(args.record, "a") as record:
        record.write(json.dumps(entry) + "\n")
if args.wait_for:
    deadline = time.monotonic() + 60
    while not os.path.exists(args.wait_for) and time.monotonic() < deadline:
        time.sleep(0.02)
for number in range(args.lines):
    print(f"engine line {number + 1}: deploying {os.environ.get('SLIPWAY_SERVICE')} "
          f"{os.environ.get('SLIPWAY_VERSION')}", flush=True)
sys.exit(args.exit)
