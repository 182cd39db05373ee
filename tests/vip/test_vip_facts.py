"""The VIP manager's fact caches: watch events apply without reads, and never hide a change."""

from mhafail.coordination import Seen
from mhafail.vip._facts import Facts, apply_declared, apply_owner
from mhafail.vip._paths import Claim
from mhafail.vip._spec import parse_vip

VIP = parse_vip("198.18.1.1@eth0")


def test_vanished_claim_is_unclaimed_without_a_read() -> None:
    """A claim watch that saw no znode clears the cached owner and marks nothing dirty."""
    facts = Facts()
    facts.learn("a", Claim(node="n2", session=7, since=1.0))
    apply_owner(facts, "a", Seen("vips/a/owner", known=True), 1)
    assert facts.owners["a"] is None and not facts.dirty_owners


def test_claim_by_a_known_session_needs_no_read() -> None:
    """A claim created in a session already seen names its node from the cache."""
    facts = Facts()
    facts.learn("b", Claim(node="n3", session=9, since=1.0))
    apply_owner(facts, "a", Seen("vips/a/owner", known=True, exists=True, ephemeral_owner=9), 1)
    owner = facts.owners["a"]
    assert owner is not None and owner.node == "n3" and not facts.dirty_owners


def test_claim_by_an_unknown_session_or_a_failed_read_is_read_again() -> None:
    """What the watch cannot tell (unknown session, failed read) is marked dirty."""
    facts = Facts()
    apply_owner(facts, "a", Seen("vips/a/owner", known=True, exists=True, ephemeral_owner=5), 1)
    apply_owner(facts, "b", Seen("vips/b/owner", known=False), 1)
    assert facts.dirty_owners == {"a", "b"}


def test_event_applied_during_a_read_wins_over_the_read() -> None:
    """A read that started before an event must not overwrite what the event applied."""
    facts = Facts()
    since = facts.events  # a read starts
    apply_owner(facts, "a", Seen("vips/a/owner", known=True), 1)
    apply_declared(facts, "b", Seen("vips/b/declared", known=True, exists=True, children=()), "me")
    assert facts.fresher(facts.owner_event, "a", since)
    assert facts.fresher(facts.declared_event, "b", since)
    assert not facts.fresher(facts.owner_event, "b", since)
    later = facts.events  # a read starting now is newer than both events
    assert not facts.fresher(facts.owner_event, "a", later)


def test_event_that_tells_nothing_lets_the_read_win() -> None:
    """An event that needs a read (unknown session) never blocks that read's result."""
    facts = Facts()
    since = facts.events
    apply_owner(facts, "a", Seen("vips/a/owner", known=True, exists=True, ephemeral_owner=3), 1)
    assert not facts.fresher(facts.owner_event, "a", since) and facts.dirty_owners == {"a"}


def test_declaration_list_drops_leavers_and_reads_newcomers() -> None:
    """A shrunken list drops the leaver at once; a new declarer must be read."""
    facts = Facts()
    facts.declared["a"] = {"n2": VIP, "n3": VIP}
    apply_declared(facts, "a", Seen("p", known=True, exists=True, children=("me", "n2")), "me")
    assert set(facts.declared["a"]) == {"n2"} and not facts.dirty_declared
    apply_declared(facts, "a", Seen("p", known=True, exists=True, children=("n2", "n4")), "me")
    assert facts.dirty_declared == {"a"}


def test_older_read_of_a_foreign_claim_does_not_unseat_our_own() -> None:
    """A read showing another session's claim, applied after we created ours, is read again."""
    facts = Facts()
    facts.learn("b", Claim(node="n2", session=5, since=1.0))  # n2's session is known
    facts.know("a", Claim(node="me", session=1, since=2.0))
    apply_owner(facts, "a", Seen("vips/a/owner", known=True, exists=True, ephemeral_owner=5), 1)
    owner = facts.owners["a"]
    assert owner is not None and owner.node == "me" and facts.dirty_owners == {"a"}


def test_a_vanished_claim_is_remembered_for_its_successors_turn() -> None:
    """Seeing a held claim go records when, so a pass leaves it to the planned successor."""
    facts = Facts()
    facts.learn("a", Claim(node="n2", session=5, since=1.0))
    apply_owner(facts, "a", Seen("vips/a/owner", known=True), 1)
    apply_owner(facts, "b", Seen("vips/b/owner", known=True), 1)  # was unowned: nothing went
    assert set(facts.vanished) == {"a"}
