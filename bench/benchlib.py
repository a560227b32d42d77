"""What the benchmarks share: measuring this checkout, percentiles, and the
description of the machine and software a figure was measured on.

Import it before anything from Slipway: ``python bench/x.py`` puts bench/,
not the repository root, on sys.path, so without it the installed
(editable) copy of the package, wherever it points, would be measured.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
# First, even if it was there already (e.g. later on PYTHONPATH).
if str(REPO_ROOT) in sys.path:
    sys.path.remove(str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT))


def percentile(sorted_values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not sorted_values:
        return float("nan")
    position = (len(sorted_values) - 1) * q
    low = int(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


def checkout() -> str:
    """The commit measured, and the tracked files changed since (the working
    tree is what runs)."""
    try:
        def git(*args: str) -> str:
            return subprocess.run(["git", "-C", str(REPO_ROOT), *args], capture_output=True, text=True,
                                  check=True, timeout=10).stdout.strip()
        head = git("rev-parse", "--short", "HEAD")
        changed = git("diff", "--name-only", "HEAD").split()
    except (OSError, subprocess.SubprocessError):
        return "not a git checkout"
    return head + (f" + uncommitted changes to {', '.join(changed)}" if changed else " (clean)")


def versions() -> dict[str, Any]:
    """Where Slipway was imported from, and the versions and machine that
    every figure depends on."""
    import aiohttp
    import slack_bolt.version
    import slack_sdk.version

    import bot.runtime.composition

    return {
        "slipway_source": str(Path(bot.runtime.composition.__file__).resolve().parents[1]),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "slack_bolt": slack_bolt.version.__version__,
        "slack_sdk": slack_sdk.version.__version__,
        "aiohttp": aiohttp.__version__,
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
    }


def summary_ms(seconds: list[float]) -> dict[str, Any]:
    """n, p50, p90, p99, max and mean of ``seconds``, in milliseconds (None when empty)."""
    ordered = sorted(seconds)
    ms = lambda s: round(s * 1000, 3) if s == s else None  # noqa: E731  (NaN: no samples)
    return {
        "n": len(ordered),
        "p50_ms": ms(percentile(ordered, 0.50)),
        "p90_ms": ms(percentile(ordered, 0.90)),
        "p99_ms": ms(percentile(ordered, 0.99)),
        "max_ms": ms(ordered[-1]) if ordered else None,
        "mean_ms": ms(sum(ordered) / len(ordered)) if ordered else None,
    }
