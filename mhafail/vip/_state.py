"""The VIP manager's shared mutable state, in one value.

:class:`~mhafail.vip._manager.VipManager` (life cycle and ZooKeeper event
wiring), :class:`~mhafail.vip._converge.ConvergePass` (the placement pass)
and :class:`~mhafail.vip._actions.Actions` (claim, plumb, hand over, stand
aside) all work on the same few caches and components. They live here, in
one :class:`ManagerState` that each of the three is handed, so that none
reaches into another's privates and a reader sees every shared field, and
who guards it, in one place.

Threads and the lock: watch events (kazoo's event thread), the standby's and
the reserver's threads, the beat thread, the fence's feed thread and the
converge thread all touch this state. ``lock`` guards the caches (``facts``,
``targets``, ``drained``, ``members``, ``departed``) and ``aside``, and
orders the full-pass bookkeeping (``full_read_due``, ``full_passes``,
``last_full_result``) with ``VipManager.reconcile_now``. The components
(``kernel``, ``loop``, ``events``, ``standby``, ``beats``, ``reserver``) are
set once at start; the remaining flags and times are single values, read
and written without the lock exactly where the manager did so when they
were its own fields.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import attrs

from mhafail.coordination import ConvergeLoop, Dispatcher
from mhafail.vip._aside import Aside
from mhafail.vip._beat import BeatWatch
from mhafail.vip._facts import Facts
from mhafail.vip._kernel import Kernel
from mhafail.vip._placement import Decision
from mhafail.vip._reserve import Reserver
from mhafail.vip._spec import Vip
from mhafail.vip._standby import Standby

VipCallback = Callable[[Vip], None]
StepCallback = Callable[[str, float, int], None]


@attrs.frozen
class PassResult:
    """What one converge pass did (for tests, logs and ``vip show``)."""

    decisions: tuple[Decision, ...] = ()
    claimed: tuple[str, ...] = ()
    released: tuple[str, ...] = ()
    plumbed: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    conflicts: tuple[str, ...] = ()


@attrs.define(kw_only=True, eq=False)
class ManagerState:
    """Everything the manager, its converge pass and its actions share.

    Attributes:
        aside: the stand-aside state (see :mod:`mhafail.vip._aside`).
        me: this node's name (set at start).
        by_key: address -> this node's VIP (validated at start).
        lock: guards the caches (see the module docstring).
        facts: the caches of claims and declarations (:mod:`mhafail.vip._facts`).
        targets: address -> an operator's move target.
        drained: the nodes an operator drained.
        view_changed: monotonic time the membership view last changed.
        full_read_due: the next pass re-reads everything and checks the kernel.
        rewatch: the next pass registers the watches again (a new session).
        kernel, loop, events, standby, beats, reserver: the components made
            at start (None before; ``beats`` and ``reserver`` only with beats).
        acquire, release, pre_release, steps: the application's callbacks.
        members: the membership view's names as last noted.
        departed: members of the view that ZooKeeper no longer lists.
        claim_gone_at: monotonic time of the latest claim deletion notice.
        last, last_full_result, full_passes: what the passes did.
        stopping: :meth:`VipManager.stop` began.
        fence_failed: why the fence failed, until it works again.
    """

    aside: Aside
    me: str = ""
    by_key: dict[str, Vip] = attrs.field(factory=dict)
    lock: threading.Lock = attrs.field(factory=threading.Lock)
    facts: Facts = attrs.field(factory=Facts)
    targets: dict[str, str] = attrs.field(factory=dict)
    drained: frozenset[str] = frozenset()
    view_changed: float = attrs.field(factory=time.monotonic)
    full_read_due: bool = True
    rewatch: bool = False
    kernel: Kernel | None = None
    loop: ConvergeLoop | None = None
    events: Dispatcher | None = None
    acquire: list[VipCallback] = attrs.field(factory=list)
    release: list[VipCallback] = attrs.field(factory=list)
    pre_release: list[VipCallback] = attrs.field(factory=list)
    steps: list[StepCallback] = attrs.field(factory=list)
    members: frozenset[str] = frozenset()
    departed: frozenset[str] = frozenset()
    claim_gone_at: float = float("-inf")
    last: PassResult = attrs.field(factory=PassResult)
    last_full_result: PassResult = attrs.field(factory=PassResult)
    full_passes: int = 0
    stopping: bool = False
    fence_failed: str | None = None
    standby: Standby | None = None
    beats: BeatWatch | None = None
    reserver: Reserver | None = None

    def owned(self) -> frozenset[Vip]:
        """The VIPs this node holds now (claimed and plumbed)."""
        if self.kernel is None:
            return frozenset()
        return frozenset(self.by_key[k] for k in self.kernel.plumbed() if k in self.by_key)

    def emit(self, callbacks: list[VipCallback], vip: Vip) -> None:
        """Post ``callback(vip)`` for each of ``callbacks`` to the event thread."""
        if self.events is not None:
            for cb in list(callbacks):
                self.events.post(cb, vip)

    def step(self, step: str, at: float, count: int) -> None:
        """Post a takeover step to the ``on_step`` callbacks (the event thread)."""
        if self.events is not None:
            for cb in list(self.steps):
                self.events.post(cb, step, at, count)

    def kick_after(self, seconds: float) -> None:
        """Run a converge pass in ``seconds`` (nothing before start)."""
        if self.loop is not None:
            self.loop.kick_after(seconds)
