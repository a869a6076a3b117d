"""The command line shared by the benchmarks that measure this source tree against another.

``sim_cost.py`` and ``http_backend_cost.py`` judge a change by running both trees in one run,
alternating rounds so the machine's drift hits both alike; the other tree is a git worktree
(``git worktree add /tmp/old <commit>``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from hybrid.provenance import machine_info

#: This source tree.
HERE = Path(__file__).resolve().parent.parent


def trees_from_arguments(description: str, *, rounds: int) -> tuple[argparse.Namespace, dict[str, Path]]:
    """Parse ``OTHER [--requests N] [--rounds R]``, print the machine, and name both trees
    (``"this tree"`` first, then the other by its path)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("other", type=Path, help="another source tree of the kit (a git worktree)")
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=rounds)
    args = parser.parse_args()
    print(machine_info())
    return args, {"this tree": HERE, str(args.other): args.other.resolve()}
