#!/usr/bin/env bash
# Test helper: start a grandchild `sleep`, write "<own pid> <grandchild pid>"
# to $1 (atomically, via a rename), then wait for ever.
sleep 1000 &
echo "$$ $!" > "$1.tmp"
mv "$1.tmp" "$1"
wait
