"""Which survivor takes over which spool: rendezvous ranking, pure (no ZooKeeper)."""

from __future__ import annotations

from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from mhafail.spool._placement import rank

names = st.from_regex(r"[a-z][a-z0-9-]{0,8}", fullmatch=True)


def test_takeovers_of_many_dead_nodes_spread_over_the_survivors() -> None:
    """Each survivor is first for a share of the dead nodes, none for most of them."""
    survivors = [f"mx{i}" for i in range(1, 6)]
    dead = [f"old{i}" for i in range(60)]
    firsts = Counter(rank(d, survivors)[0] for d in dead)
    assert set(firsts) == set(survivors)
    assert max(firsts.values()) <= 24  # 12 each on average; no survivor takes 40%


@given(dead=names, survivors=st.lists(names, min_size=1, max_size=8))
def test_every_survivor_ranks_alike_and_the_dead_node_never_ranks(
    dead: str, survivors: list[str]
) -> None:
    """The ranking depends on the set of survivors, not on the order each one lists them in."""
    ranked = rank(dead, survivors)
    assert ranked == rank(dead, list(reversed(survivors)))
    assert dead not in ranked
    assert sorted(ranked) == sorted(set(survivors) - {dead})


@given(dead=names, survivors=st.lists(names, min_size=2, max_size=8, unique=True), data=st.data())
def test_a_survivor_leaving_moves_only_its_own_share(
    dead: str, survivors: list[str], data: st.DataObject
) -> None:
    """Without the one that left, the others keep their order (rendezvous, not a ring)."""
    gone = data.draw(st.sampled_from(survivors))
    before = [n for n in rank(dead, survivors) if n != gone]
    assert list(rank(dead, [n for n in survivors if n != gone])) == before


def test_an_operators_choice_goes_first_only_when_it_is_a_candidate() -> None:
    """``--to`` names the importer; a name that is not a survivor (or the dead node) is ignored."""
    survivors = ["mx1", "mx2", "mx3"]
    assert rank("old", survivors, preferred="mx3")[0] == "mx3"
    assert rank("old", survivors, preferred="nobody") == rank("old", survivors)
    assert rank("mx1", survivors, preferred="mx1") == rank("mx1", survivors)
