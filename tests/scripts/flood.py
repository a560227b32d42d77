#!/usr/bin/env python3
"""Test helper: print exactly MEGABYTES MB of numbered 64-byte lines, then
"END\\n" (4 bytes more), and exit 0.

usage: flood.py MEGABYTES
"""
import sys

lines = int(sys.argv[1]) * 1024 * 1024 // 64
out = sys.stdout.buffer
for first in range(0, lines, 1000):
    out.write(b"".join(b"line %08d %s\n" % (n, b"x" * 49) for n in range(first, min(first + 1000, lines))))
out.write(b"END\n")
