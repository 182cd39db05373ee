"""VIP failover side by side with keepalived, and the 300-VIP takeover time (root).

    python benchmarks/bench_vip_failover.py [--trials 5] [--quick] [--harness DIR]
        [--skip-peers] [--rows ka1,mh3,...] [--skip-scale] [--vips 300] [--scale-trials 1]
        [--scale-beat SECONDS]

Part 1 drives the peers' harness (``../shared/peers/failover_bench.py`` by
default: network namespaces, a client probing the VIP every 10 ms) over, in
one run: keepalived (advert_int 1) vs ``mhafail agent`` with a 3 s session
(equal detection budgets: 3 x 1 s), keepalived-fast (advert_int 0.1) vs a
0.5 s session and vs a 0.35 s session on a 20 ms tick (its master-down
interval), each for a crash and a graceful stop, and mhafail under a
paused owner and a partitioned owner. The agents run with ``--events``:
after the table, the step trace of the first trial of each fault. Part 2
starts three agents with 300 VIPs, crashes the node holding a third of
them and times until every one answers from a survivor, with a per-step
trace of the takeover. Needs
root, keepalived and nftables (part 2 alone: root). Part 2 begins with the
agent's own cost of plumbing, announcing and removing a third of the VIPs,
one by one and in batches.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mhafail.testing import NetnsLab, ZooKeeperServer, run_in_netns

REPO = Path(__file__).resolve().parent.parent
ZK_CMD = "{py} -m mhafail zk serve --host {bridge_addr} --port 2181 --tick-time %d"
AGENT = (
    "{py} -m mhafail agent --zk {dcs} --cluster bench --node {node} "
    "--vip {vip}/{prefix}@{iface}%s --rebalance never --zk-open --zk-tick %s "
    "--events"
)
RUNS = Path(tempfile.gettempdir()) / "pb-bench"  # the harness's RUN_ROOT: each run's logs


def harness(
    path: Path, peer: str, faults: str, trials: int, extra: list[str]
) -> list[dict[str, Any]]:
    argv = [sys.executable, str(path / "failover_bench.py"), "--peer", peer, "--fault", faults,
            "--trials", str(trials), *extra]  # fmt: skip
    out = subprocess.run(argv, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        print(out.stderr[-2000:], file=sys.stderr)
        raise SystemExit(f"harness failed for {peer} {faults}")
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


def mhafail_args(session: float | None, tick_ms: int = 150, beat: float | None = None) -> list[str]:
    """Harness flags: ``mhafail agent``, ``session`` s, on a ZooKeeper ticking ``tick_ms``.

    With ``beat``, the agents detect a silent owner by its beats within
    that budget (``--beat``) instead of by its session expiry. Session
    None: the agent's default (with beats, what the budget needs).
    """
    timeout = "" if session is None else f" --session-timeout {session}"
    node_cmd = AGENT % (timeout, tick_ms / 1000) + ("" if beat is None else f" --beat {beat}")
    return [
        "--node-cmd", node_cmd, "--dcs", "cmd",
        "--dcs-cmd", ZK_CMD % tick_ms, "--dcs-url", "198.18.0.1:2181", "--dcs-wait", "3",
        "--home", "", "--settle", "3",
    ]  # fmt: skip


def trace(result: dict[str, Any], index: int = 0) -> str | None:
    """The agents' step events of one trial, in ms after the fault (None: no events).

    Read from the node logs of the harness run (``--events`` lines); the
    client's view comes from the harness's own per-trial figures.
    """
    trials = result.get("per_trial") or []
    run_dir = RUNS.parent / str(result.get("run_dir", ""))
    if len(trials) <= index or not (run_dir / "prober.log").exists():
        return None
    first = trials[index]
    start = _fault_time(run_dir / "prober.log", first)
    if start is None:
        return None
    end = start + float(first.get("fault_to_new_ms") or 0) / 1000 + 1.0
    lines = []
    for log in sorted(run_dir.glob("*-daemon.gen*.log")):
        steps = []
        for line in log.read_text(errors="replace").splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict) and event.get("event") == "step":
                at = float(event["at"])
                if start - 0.05 <= at <= end:
                    steps.append(
                        (at, f"{event['step']} {(at - start) * 1000:.1f} ({event['count']})")
                    )
        if steps:
            node = log.name.split("-daemon")[0]
            lines.append(f"    {node}: " + ", ".join(text for _, text in sorted(steps)))
    if not lines:
        return None
    client = (f"    client: last answer from {first.get('old_owner')} "
              f"{first.get('last_old_after_fault_ms')}, first from the new owner "
              f"{first.get('fault_to_new_ms')}, window {first.get('window_ms')}")  # fmt: skip
    return "\n".join([*lines, client])


def row(label: str, result: dict[str, object]) -> str:
    w = result["window_ms"]
    f = result.get("fault_to_first_new_ms", {})
    dual = result["dual_owner"]
    assert isinstance(w, dict) and isinstance(f, dict) and isinstance(dual, dict)
    overlap_trials = dual.get(
        "trials_with_overlap_during_failover", dual.get("trials_with_overlap", "?")
    )
    overlap_ms = dual.get("max_overlap_during_failover_ms", dual.get("max_overlap_ms", "?"))
    return (
        f"| {label} | {result['fault']} | {result['recovered']}/{result['trials']} | "
        f"{w.get('min')} / {w.get('median')} / {w.get('max')} | {f.get('median', '-')} | "
        f"{overlap_trials}, {overlap_ms} |"
    )


# Every row of the side-by-side table: (id, label, peer, faults, harness flags).
# Equal detection budgets: keepalived's master-down interval (3 x advert_int
# plus skew) against mhafail's session timeout; "mh035" is the sub-second
# budget of keepalived-fast (3 x 0.1 s + skew ~ 0.35 s) on a 20 ms tick.
RUNS_TABLE = [
    ("ka1", "keepalived advert_int 1", "keepalived", "crash,graceful", []),
    ("mh3", "mhafail session 3 s", "custom", "crash,graceful", mhafail_args(3)),
    ("kafast", "keepalived-fast advert_int 0.1", "keepalived-fast", "crash,graceful", []),
    ("mh05", "mhafail session 0.5 s", "custom", "crash,graceful", mhafail_args(0.5)),
    ("mh035", "mhafail session 0.35 s (tick 20 ms)", "custom", "crash,graceful,pause,partition",
     [*mhafail_args(0.35, 20), "--pause-seconds", "2", "--partition-seconds", "2"]),
    ("mh3faults", "mhafail session 3 s", "custom", "pause,partition",
     [*mhafail_args(3), "--pause-seconds", "7", "--partition-seconds", "7"]),
    ("mhbeat3", "mhafail beats 3 s (session 3 s)", "custom", "crash,graceful,pause,partition",
     [*mhafail_args(3, beat=3.0), "--pause-seconds", "7", "--partition-seconds", "7"]),
    # With beats the session is only the fallback detector: a session
    # longer than the budget keeps the session lease from ending before the
    # beat lease (docs/vip.md, Beats), so the pause and partition gap is the
    # beat margin alone.
    ("mhbeat3s4", "mhafail beats 3 s (session 4 s, tick 200 ms)", "custom",
     "crash,graceful,pause,partition",
     [*mhafail_args(4, 200, beat=3.0), "--pause-seconds", "7", "--partition-seconds", "7"]),
    # The agent's own choice: no --session-timeout, so with --beat 3 it asks
    # for session_for(3, 0.25) = 4.2 s (a 250 ms tick allows up to 5 s).
    ("mhbeat3auto", "mhafail beats 3 s (session chosen: 4.2 s, tick 250 ms)", "custom",
     "crash,graceful,pause,partition",
     [*mhafail_args(None, 250, beat=3.0), "--pause-seconds", "7", "--partition-seconds", "7"]),
    ("mhbeat035", "mhafail beats 0.35 s (session 1 s, tick 50 ms)", "custom",
     "crash,graceful,pause,partition",
     [*mhafail_args(1, 50, beat=0.35), "--pause-seconds", "2", "--partition-seconds", "2"]),
]  # fmt: skip


# Issue 18's table in one run: keepalived at both budgets beside beats at both.
HEADLINE = "ka1,kafast,mhbeat3auto,mhbeat035"


def _each(call: Callable[[Any], object], items: list[Any]) -> None:
    """``call`` each item in turn (for timing calls that return nothing)."""
    for item in items:
        call(item)


def _fault_time(prober: Path, trial: dict[str, Any]) -> float | None:
    """When the harness applied ``trial``'s fault (its per-trial figures omit it).

    Found from the client's answers: the handover from the old owner to the
    new one whose gap is the trial's window, minus the fault-to-new time.
    """
    old, new = trial.get("old_owner"), trial.get("new_owner")
    window, to_new = trial.get("window_ms"), trial.get("fault_to_new_ms")
    if old is None or new is None or window is None or to_new is None:
        return None
    answers = []
    for line in prober.read_text(errors="replace").splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[0] == "S":
            answers.append((float(parts[2]), parts[3]))
    answers.sort()
    for (t_old, n_old), (t_new, n_new) in itertools.pairwise(answers):
        if n_old == old and n_new == new and abs((t_new - t_old) * 1000 - window) < 0.2:
            return t_new - float(to_new) / 1000
    return None


def side_by_side(
    path: Path, trials: int, rows: set[str] | None, only: set[str] | None = None
) -> None:
    print("| peer | fault | trials ok | window ms min / median / max | fault -> new answers ms "
          "(median) | dual owner (trials, max ms) |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    traces = []
    for key, label, peer, row_faults, extra in RUNS_TABLE:
        if rows is not None and key not in rows:
            continue
        faults = row_faults
        if only is not None:
            faults = ",".join(f for f in row_faults.split(",") if f in only)
            if not faults:
                continue
        for result in harness(path, peer, faults, trials, extra):
            print(row(label, result), flush=True)
            if (steps := trace(result)) is not None:
                traces.append(
                    f"  {label}, {result['fault']}, trial 1 (ms after the fault):\n{steps}"
                )
    if traces:
        print("\nstep traces:")
        print("\n".join(traces), flush=True)


def scale(vips: int, session: float, beat: float | None = None) -> None:
    """Three agents, ``vips`` VIPs; crash the owner of a third; time until all answer.

    With ``beat`` the agents detect the crash by beats of that budget.

    Prints the takeover time and a trace of one takeover: per survivor, each
    step's time after the crash (from the agents' ``--events`` step events,
    ``time.monotonic()`` readings, which every namespace shares), then the
    client's first and last answer from a survivor.
    """
    addresses = [f"198.18.{1 + i // 250}.{1 + i % 250}" for i in range(vips)]
    with NetnsLab(hosts=3, client=True, bridge_address="198.18.0.1/24") as lab:
        for name in ("h1", "h2", "h3", "c1"):
            # VIPs live in 198.18.1.0/24 and up: reach them on-link from the client.
            lab[name].run(["ip", "route", "add", "198.18.0.0/16", "dev", "eth0"])
        zk_dir = Path(tempfile.mkdtemp(prefix="mha-bench-zk-"))
        with ZooKeeperServer(host="198.18.0.1", netns=lab.lan, workdir=zk_dir, tick_time=150) as zk:
            banner = (
                "import socket,sys\ns=socket.socket()\n"
                "s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n"
                "s.bind(('0.0.0.0',2525)); s.listen(1024)\n"
                "while True:\n c,_=s.accept(); c.sendall(sys.argv[1].encode()); c.close()\n"
            )
            workdir = Path(tempfile.mkdtemp(prefix="mha-bench-"))
            config = workdir / "agent.toml"
            specs = ", ".join(f'"{a}@eth0"' for a in addresses)
            config.write_text(f"vips = [{specs}]\n")
            agents = {}
            for name in ("h1", "h2", "h3"):
                lab[name].spawn([sys.executable, "-c", banner, name])
                # Events go to a file: a pipe nobody reads would block the agent.
                events = (workdir / f"{name}.events").open("wb")
                agents[name] = lab[name].spawn([
                    sys.executable, "-m", "mhafail", "agent", "--config", str(config),
                    "--zk", zk.address, "--cluster", "scale", "--node", name,
                    "--session-timeout", str(session), "--rebalance", "immediate", "--zk-open",
                    "--zk-tick", "0.15", "--events",
                    *(() if beat is None else ("--beat", str(beat))),
                ], stdout=events)  # fmt: skip
                events.close()
            client = lab["c1"].netns
            # Wait for the balance (a third each): the first agent up takes
            # everything, and rebalancing hands two thirds over.
            share = -(-vips // 3)
            end = time.monotonic() + 120
            while True:
                owners = run_in_netns(client, _sweep, addresses, 60.0, set())
                held = [node for node, _ in owners.values()]
                if max(map(held.count, ("h1", "h2", "h3"))) <= share or time.monotonic() > end:
                    break
                time.sleep(0.5)
            time.sleep(1.0)  # the announcements of the last moves are over
            victim = max({"h1", "h2", "h3"}, key=held.count)
            mine = [a for a, (n, _) in owners.items() if n == victim]
            crash = time.monotonic()
            os.killpg(agents[victim].pid, signal.SIGKILL)
            lab[victim].link_down()
            start = time.monotonic()
            after = run_in_netns(client, _sweep, mine, 60.0, {victim})
            took = time.monotonic() - start
            survivors = sorted({n for n, _ in after.values()})
            print(f"{vips}-VIP takeover: {len(mine)} VIPs of {victim} answered from survivors "
                  f"({survivors}) {took * 1000:.0f} ms after the crash "
                  f"(session timeout {session:g} s"
                  f"{'' if beat is None else f', beats {beat:g} s'})")  # fmt: skip
            time.sleep(0.5)  # let the survivors' event threads write their last steps
            print(f"trace (ms after the SIGKILL of {victim}'s agent):")
            for name in survivors:
                steps = _steps(workdir / f"{name}.events", crash)
                line = ", ".join(f"{step} {at:.0f} ({count})" for step, at, count in steps)
                print(f"  {name}: {line or 'no step events (an agent without on_step)'}")
            times = sorted((t - crash) * 1000 for _, t in after.values())
            if times:
                print(f"  client: first answer from a survivor {times[0]:.0f}, "
                      f"median {times[len(times) // 2]:.0f}, last {times[-1]:.0f}")  # fmt: skip
            for name in ("h1", "h2", "h3"):
                lab[name].stop_processes()  # agents first, while ZooKeeper still runs


def plumbing(count: int, rounds: int = 5) -> None:
    """The agent's own cost of taking ``count`` VIPs: plumb, announce, remove (one namespace).

    Best of ``rounds``, in ms: one batch each, and one address at a time
    (what a takeover cost before the batches).
    """
    from mhafail.vip import NetlinkPlumber, parse_vip

    vips = [parse_vip(f"198.18.{1 + i // 250}.{1 + i % 250}@eth0") for i in range(count)]

    def measure() -> dict[str, float]:
        plumber = NetlinkPlumber()
        best: dict[str, float] = {}

        def timed(label: str, fn: Callable[[], object]) -> None:
            start = time.perf_counter()
            fn()
            took = (time.perf_counter() - start) * 1000
            best[label] = min(best.get(label, took), took)

        try:
            for _ in range(rounds):
                timed("add one by one", lambda: [plumber.ensure_present(v, 3.0) for v in vips])
                timed("announce one by one", lambda: _each(plumber.announce, vips))
                timed("remove one by one", lambda: [plumber.ensure_absent(v) for v in vips])
                if hasattr(plumber, "ensure_present_many"):
                    timed("add batch", lambda: plumber.ensure_present_many(vips, 3.0))
                    timed("announce burst", lambda: plumber.announce_many(vips))
                    timed("remove batch", lambda: plumber.ensure_absent_many(vips))
        finally:
            plumber.close()
        return best

    with NetnsLab(hosts=1, ipv6=False) as lab:
        best = run_in_netns(lab["h1"].netns, measure)
    print(f"plumbing {count} VIPs in one namespace (best of {rounds}, ms): "
          + ", ".join(f"{label} {ms:.1f}" for label, ms in best.items()))  # fmt: skip


def _steps(path: Path, crash: float) -> list[tuple[str, float, int]]:
    """The step events after ``crash`` in an agent's event file: (step, ms, count)."""
    found = []
    for line in path.read_text().splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("event") == "step" and event["at"] >= crash:
            found.append((event["step"], (event["at"] - crash) * 1000, int(event["count"])))
    return sorted(found, key=lambda s: s[1])


def _sweep(addresses: list[str], timeout: float, exclude: set[str]) -> dict[str, tuple[str, float]]:
    """Connect to every address until each answers from a node not in ``exclude``.

    Returns address -> (node, monotonic time of its first such answer). A
    round lasts at most 20 ms: a connection whose SYN went to the dead
    owner's MAC is given up and retried after the next announcement.
    """
    answered: dict[str, tuple[str, float]] = {}
    end = time.monotonic() + timeout
    while len(answered) < len(addresses) and time.monotonic() < end:
        sel = selectors.DefaultSelector()
        for address in addresses:
            if address in answered:
                continue
            sock = socket.socket()
            sock.setblocking(False)
            sock.connect_ex((address, 2525))
            sel.register(sock, selectors.EVENT_READ, address)
        deadline = time.monotonic() + 0.02
        while sel.get_map() and time.monotonic() < deadline:
            for key, _ in sel.select(max(0.0, deadline - time.monotonic())):
                ready = key.fileobj
                assert isinstance(ready, socket.socket)
                sock = ready
                try:
                    node = sock.recv(16).decode()
                except OSError:
                    node = ""
                if node and node not in exclude:
                    answered[key.data] = (node, time.monotonic())
                sel.unregister(sock)
                sock.close()
        for key in list(sel.get_map().values()):
            sel.unregister(key.fileobj)
            key.fileobj.close()  # type: ignore[union-attr]
        sel.close()
    return answered


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="one trial each, 30 VIPs")
    default_harness = REPO.parent / "shared" / "peers"
    if not default_harness.exists():  # a worktree under /work/wt
        default_harness = REPO.parent.parent / "shared" / "peers"
    parser.add_argument("--harness", type=Path, default=default_harness)
    parser.add_argument("--skip-peers", action="store_true")
    parser.add_argument(
        "--rows",
        help="comma-separated rows of part 1 (default all): "
        + ", ".join(key for key, *_ in RUNS_TABLE)
        + f"; 'headline' stands for {HEADLINE} (issue 18's table)",
    )
    parser.add_argument(
        "--faults", help="comma-separated faults of part 1 to run (default: each row's own)"
    )
    parser.add_argument("--skip-scale", action="store_true", help="no part 2")
    parser.add_argument("--vips", type=int, help="VIPs in part 2 (default 300, 30 with --quick)")
    parser.add_argument("--scale-trials", type=int, default=1, help="takeovers in part 2")
    parser.add_argument(
        "--scale-beat", type=float, metavar="SECONDS", help="part 2 with beats of this budget"
    )
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench_vip_failover needs root (network namespaces)")
    trials = 1 if args.quick else args.trials
    if not args.skip_peers:
        if not (args.harness / "failover_bench.py").exists():
            raise SystemExit(f"no harness at {args.harness} (use --harness or --skip-peers)")
        rows = set(args.rows.replace("headline", HEADLINE).split(",")) if args.rows else None
        only = set(args.faults.split(",")) if args.faults else None
        side_by_side(args.harness, trials, rows, only)
    if args.skip_scale:
        return
    vips = args.vips or (30 if args.quick else 300)
    plumbing(vips // 3)
    for _ in range(args.scale_trials):
        scale(vips, 3.0, args.scale_beat)


if __name__ == "__main__":
    main()
