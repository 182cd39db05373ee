"""``python -m mhafail.testing.nemesis``: a soak run (what ``nox -s soak`` runs).

Exit status: 0 nothing found, 1 findings (the report says which fault and
seed), 2 the lab could not be built (not root, no ZooKeeper...).
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import time
from pathlib import Path

from mhafail.errors import MhafailError
from mhafail.testing.nemesis._lab import NemesisLab
from mhafail.testing.nemesis._schedule import ALL_KINDS, SAFE_KINDS, parse_kinds


def main(argv: list[str] | None = None) -> int:
    """Run a soak and print its report."""
    parser = argparse.ArgumentParser(prog="python -m mhafail.testing.nemesis", description=__doc__)
    parser.add_argument("--minutes", type=float, default=5.0, help="how long to inject faults")
    parser.add_argument("--seed", type=int, help="the schedule's seed (default: random, printed)")
    parser.add_argument(
        "--faults",
        default=",".join(SAFE_KINDS),
        help=f"comma-separated kinds or 'all' (known: {', '.join(ALL_KINDS)})",
    )
    parser.add_argument("--session-timeout", type=float, default=1.0)
    parser.add_argument(
        "--beat", type=float, metavar="SECONDS", help="agents run with beats of this budget"
    )
    parser.add_argument("--zk-servers", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the report as JSON here")
    parser.add_argument("--keep", type=Path, help="keep agent and ZooKeeper logs in this directory")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 31)
    try:
        kinds = parse_kinds(args.faults)
        print(f"nemesis: seed {seed}, faults {','.join(kinds)}, {args.minutes:g} min", flush=True)
        lab = NemesisLab(
            session_timeout=args.session_timeout,
            zk_servers=args.zk_servers,
            agent_args=() if args.beat is None else ("--beat", str(args.beat)),
            workdir=args.keep,
            keep=args.keep is not None,
        )
        with lab:
            nemesis = lab.nemesis(log=lambda line: print(line, flush=True))
            started = time.monotonic()
            try:
                report = nemesis.run(
                    lab.schedule(seed, kinds), seconds=args.minutes * 60, seed=seed, kinds=kinds
                )
            finally:
                nemesis.heal_all()
            print(f"ran {time.monotonic() - started:.0f} s", flush=True)
    except MhafailError as exc:
        print(f"nemesis: cannot run: {exc}", file=sys.stderr)
        return 2
    print(report.summary())
    if args.json is not None:
        args.json.write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
