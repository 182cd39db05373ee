"""The rebalance policy: when a VIP may move back to a better-ranked node."""

from __future__ import annotations

import enum

import attrs

from mhafail.errors import InvalidVipSpec


class RebalanceMode(enum.Enum):
    """How planned moves to a returning node are timed."""

    IMMEDIATE = "immediate"
    STABLE = "stable"
    NEVER = "never"


@attrs.frozen
class RebalancePolicy:
    """When owned VIPs move to a node that ranks better (usually one that came back).

    * ``immediate``: at once.
    * ``stable``: once the membership has not changed for ``stable_seconds``
      (the default, 30 s: a flapping node does not drag addresses along).
    * ``never``: only failures, drains and explicit moves move VIPs.

    Failures never wait for the policy: an unowned VIP is claimed at once.
    """

    mode: RebalanceMode = RebalanceMode.STABLE
    stable_seconds: float = 30.0

    @classmethod
    def immediate(cls) -> RebalancePolicy:
        """Rebalance as soon as placement changes."""
        return cls(RebalanceMode.IMMEDIATE, 0.0)

    @classmethod
    def after(cls, seconds: float) -> RebalancePolicy:
        """Rebalance once membership was stable for ``seconds``."""
        if seconds < 0:
            raise InvalidVipSpec(f"rebalance delay {seconds} must be >= 0")
        return cls(RebalanceMode.STABLE, float(seconds))

    @classmethod
    def never(cls) -> RebalancePolicy:
        """Never move a VIP away from a live owner on its own."""
        return cls(RebalanceMode.NEVER, 0.0)

    @classmethod
    def parse(cls, text: str) -> RebalancePolicy:
        """Parse ``immediate``, ``never`` or ``after:SECONDS`` (or just ``SECONDS``).

        Raises:
            InvalidVipSpec: anything else.
        """
        value = text.strip().lower()
        if value == "immediate":
            return cls.immediate()
        if value == "never":
            return cls.never()
        number = value.removeprefix("after:")
        try:
            return cls.after(float(number))
        except ValueError as exc:
            raise InvalidVipSpec(
                f"invalid rebalance policy {text!r}: use immediate, never or after:SECONDS"
            ) from exc

    def allows(self, stable_for: float) -> bool:
        """Whether a planned move may happen when membership was stable for ``stable_for`` s."""
        if self.mode is RebalanceMode.IMMEDIATE:
            return True
        if self.mode is RebalanceMode.NEVER:
            return False
        return stable_for >= self.stable_seconds

    def wait_left(self, stable_for: float) -> float | None:
        """Seconds until :meth:`allows` turns true, or None if it never will."""
        if self.mode is RebalanceMode.STABLE and stable_for < self.stable_seconds:
            return self.stable_seconds - stable_for
        return None
