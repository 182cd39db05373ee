"""Unit tests for the fencing lease arithmetic and the dispatch helpers."""

import asyncio
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mhafail.coordination import ConvergeLoop, Lease, ProofChain, default_margin, in_loop
from mhafail.coordination._lease import HeartbeatRounds, round_interval


def test_lease_has_no_deadline_before_any_proof() -> None:
    """A fresh lease is invalid and has no deadline."""
    lease = Lease(timeout=3.0, margin=0.1)
    assert lease.deadline is None
    assert not lease.valid(0.0)
    assert lease.remaining(0.0) == 0.0


def test_deadline_is_send_time_plus_timeout_minus_margin() -> None:
    """An answered request sent at s proves the session until s + T - m."""
    lease = Lease(timeout=3.0, margin=0.25)
    lease.confirm(10.0)
    assert lease.deadline == 12.75
    assert lease.valid(12.7)
    assert not lease.valid(12.75)


@settings(deadline=None)  # pure arithmetic; a loaded CI machine must not fail it
@given(st.lists(st.floats(min_value=0, max_value=1e6), min_size=1, max_size=20))
def test_deadline_follows_the_latest_send_time(sends: list[float]) -> None:
    """Replies arriving out of order never move the deadline backwards."""
    lease = Lease(timeout=2.0, margin=0.1)
    for s in sends:
        lease.confirm(s)
    assert lease.deadline == max(sends) + 2.0 - 0.1


def test_reset_forgets_the_proof() -> None:
    """After a session ends the lease is invalid until a new proof arrives."""
    lease = Lease(timeout=2.0, margin=0.1)
    lease.confirm(5.0)
    lease.reset()
    assert not lease.valid(5.0)


def test_default_margin_is_bounded() -> None:
    """The default margin is 5 % of T, clamped to 50-500 ms."""
    assert default_margin(0.5) == 0.05
    assert default_margin(3.0) == 0.15000000000000002
    assert default_margin(60.0) == 0.5


def test_in_loop_runs_the_callback_on_the_event_loop() -> None:
    """A listener wrapped with in_loop runs on the asyncio loop's thread."""

    async def main() -> int | None:
        loop = asyncio.get_running_loop()
        got: asyncio.Future[int | None] = loop.create_future()
        wrapper = in_loop(loop, lambda: got.set_result(threading.get_ident()))
        threading.Thread(target=wrapper).start()
        return await asyncio.wait_for(got, 5)

    assert asyncio.run(main()) == threading.main_thread().ident


def test_converge_loop_coalesces_kicks_and_survives_errors() -> None:
    """Kicks during a pass lead to one more pass; a failing pass is retried."""
    calls: list[int] = []
    gate = threading.Event()

    def converge() -> None:
        calls.append(len(calls))
        if len(calls) == 1:
            gate.wait(5)
        if len(calls) == 2:
            raise RuntimeError("transient")

    loop = ConvergeLoop("test-loop", converge, retry=0.01)
    loop.start()
    for _ in range(5):
        loop.kick()
    gate.set()
    assert loop.wait_passes(3, 5)
    loop.stop()
    # pass 1 (blocked), pass 2 for the five coalesced kicks (fails), pass 3 the retry
    assert len(calls) == 3


def test_converge_loop_stops_promptly_after_a_pass() -> None:
    """A stop() that arrives while a pass runs ends the thread when the pass ends."""
    started, gate = threading.Event(), threading.Event()

    def converge() -> None:
        started.set()
        gate.wait(5)

    loop = ConvergeLoop("test-stop", converge, period=600)
    loop.start()
    assert started.wait(5)
    stopper = threading.Thread(target=loop.stop)
    stopper.start()
    while not loop._stopping:
        time.sleep(0.001)
    gate.set()
    stopper.join(3)
    assert not stopper.is_alive(), "stop() waited for the period instead of returning"


def test_proof_chain_needs_a_later_sync_sent_a_report_lag_after_the_reply() -> None:
    """A sync proves an earlier request only once a sync between them left report_lag later."""
    chain = ProofChain(report_lag=0.25)
    assert chain.answered(0.0, 0.01) is None  # nothing earlier to prove
    assert chain.answered(0.1, 0.11) is None  # the previous sync left only 0.1 s after
    assert chain.answered(0.3, 0.31) is None  # previous (0.1) - 0.25 < 0.01: still nothing
    assert chain.answered(0.5, 0.51) == 0.0  # previous (0.3) - 0.25 >= 0.01: proves 0.0
    assert chain.answered(0.7, 0.71) == 0.1  # previous (0.5) - 0.25 = 0.25 >= 0.11


def test_proof_chain_reset_forgets_earlier_connections() -> None:
    """After a reconnect no sync of the old connection is ever a proof."""
    chain = ProofChain(report_lag=0.1)
    chain.answered(0.0, 0.01)
    chain.answered(0.5, 0.51)
    chain.reset()
    assert chain.answered(1.0, 1.01) is None
    assert chain.answered(1.2, 1.21) is None
    assert chain.answered(1.4, 1.41) == 1.0


@given(
    st.lists(
        st.tuples(st.floats(min_value=0.001, max_value=0.5), st.floats(0.0, 0.2)),
        min_size=1,
        max_size=40,
    ),
    st.floats(min_value=0.01, max_value=1.0),
)
def test_proof_chain_never_proves_a_request_without_a_later_gap(
    steps: list[tuple[float, float]], lag: float
) -> None:
    """Every proof is the send time of a sync answered before a later sync left lag after."""
    chain = ProofChain(report_lag=lag)
    now = 0.0
    sent: list[tuple[float, float]] = []
    for rtt, pause in steps:
        s, r = now, now + rtt
        proof = chain.answered(s, r)
        if proof is not None:
            prev = sent[-1][0]
            assert any(ps == proof and pr <= prev - lag for ps, pr in sent)
        sent.append((s, r))
        now = r + pause


def test_heartbeat_round_proves_its_first_sync_after_three_replies() -> None:
    """a, then b report_lag after a's reply, then c at once: c's reply proves a's send time."""
    rounds, chain = HeartbeatRounds(), ProofChain(report_lag=0.06)
    rtt, interval, now = 0.002, 0.5, 10.0
    proofs: list[float | None] = []
    sends: list[float] = []
    for _ in range(3):
        assert rounds.due(now, give_up=2.0)
        rounds.sent(now)
        sends.append(now)
        assert not rounds.due(now + 0.001, give_up=2.0)  # one in flight at a time
        now += rtt
        proofs.append(chain.answered(sends[-1], now))
        rounds.answered(True, now, now, chain.report_lag, interval)
        now = max(now, rounds.next_send)
    assert sends[1] - (sends[0] + rtt) >= 0.06 - 1e-9  # b waited report_lag after a's reply
    assert sends[2] == sends[1] + rtt  # c went out at once
    assert proofs == [None, None, sends[0]]
    assert rounds.next_send == sends[0] + interval  # the next round, one interval on


def test_heartbeat_round_restarts_on_a_failed_reply_and_on_a_new_connection() -> None:
    """A reply that cannot join the chain ends the round; a new connection starts one now."""
    rounds = HeartbeatRounds()
    rounds.sent(1.0)
    rounds.answered(False, 1.01, 1.01, 0.06, 0.5)
    assert rounds.next_send == 1.5 and rounds.due(1.5, give_up=2.0)
    rounds.sent(1.5)
    assert not rounds.due(3.0, give_up=2.0)
    assert rounds.due(3.6, give_up=2.0)  # a reply that never came is given up after T
    rounds.restart(4.0)
    assert rounds.due(4.0, give_up=2.0)


def test_round_interval_leaves_kazoo_no_room_to_ping_between_rounds() -> None:
    """Rounds start before kazoo's earliest ping (T/3 - 0.4 s), between T/8 and T/4."""
    assert round_interval(3.0) == pytest.approx(0.55)
    assert round_interval(3.0) < 3.0 / 3 - 0.4
    assert round_interval(10.0) == pytest.approx(2.5)  # T/4: kazoo waits over 2.9 s
    assert round_interval(2.0) == pytest.approx(0.25)  # T/8: kazoo's jitter wins anyway
    assert round_interval(0.1, 0.025, 0.035) == pytest.approx(0.02)  # no lease to spare


def test_short_sessions_pace_rounds_by_the_lease() -> None:
    """Below T = 1.2 s (kazoo pings anyway) a round's proof still leaves a third of the lease."""
    interval = round_interval(0.35, 0.05, 0.02)  # the sub-second configuration, tick 20 ms
    assert interval == pytest.approx(0.18)
    assert 0.35 - 0.05 - (interval + 0.02) == pytest.approx((0.35 - 0.05) / 3)
    assert round_interval(1.2, 0.06, 0.06) == pytest.approx(0.7)
    assert round_interval(1.3, 0.065, 0.06) == pytest.approx(1.3 / 8)  # kazoo's own pace above


def test_short_sessions_chain_evenly_spaced_syncs() -> None:
    """With rounds shorter than half the report lag, every sync goes out one interval apart."""
    rounds = HeartbeatRounds()
    now = 5.0
    for _ in range(4):
        assert rounds.due(now, give_up=1.0)
        rounds.sent(now)
        rounds.answered(True, now + 0.002, now + 0.002, report_lag=0.16, interval=0.075)
        assert rounds.next_send == pytest.approx(now + 0.075)
        now = rounds.next_send
