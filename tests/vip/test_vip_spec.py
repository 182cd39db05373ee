"""VIP declarations: parsing and every refusal."""

import contextlib
import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mhafail._json import decode_object
from mhafail.errors import InvalidVipSpec, MalformedData
from mhafail.vip import Vip, VipKind, parse_topology, parse_vip, validate_vips

HOST = {"eth0": ["198.18.0.11/24", "2001:db8::11/64"], "lo": ["127.0.0.1/8"]}


def test_parse_vip_with_prefix_interface_and_options() -> None:
    """The command-line form carries address, prefix, interface and options."""
    vip = parse_vip("198.18.0.200/24@eth0,prefer=n1")
    assert vip == Vip(address="198.18.0.200", prefix=24, interface="eth0", preference="n1")
    binding = parse_vip("2001:db8::200@eth0,binding=out1")
    assert binding.kind is VipKind.BINDING and binding.prefix == 128
    assert binding.key == "2001:db8::200"


def test_topology_gives_the_interface() -> None:
    """Without @IFACE, the most specific topology block names the interface."""
    topo = parse_topology(["198.18.0.0/16 -> eth1", "198.18.0.0/24 -> eth0  # lan", ""])
    assert parse_vip("198.18.0.200", topology=topo).interface == "eth0"
    assert parse_vip("198.18.5.1", topology=topo).interface == "eth1"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("198.18.0.300@eth0", "invalid VIP address"),
        ("198.18.0.200/33@eth0", "prefix /33"),
        ("198.18.0.200/x@eth0", "not a number"),
        ("198.18.0.200@eth0,colour=red", "unknown option"),
        ("198.18.0.200@eth0,kind=binding", "needs a binding name"),
        ("198.18.0.200@eth0,binding=b,follow=c", "cannot follow"),
        ("198.18.0.200@eth0,prefer=n1,follow=b", "follow and preference"),
        ("198.18.0.200@eth0,prefer=bad name", "preferred node name"),
        ("198.18.0.200", "no interface given"),
        ("198.18.0.200@this-name-is-too-long", "invalid interface name"),
    ],
)
def test_bad_vip_specs_are_refused(text: str, fragment: str) -> None:
    """Each malformed or contradictory spec raises InvalidVipSpec naming the problem."""
    with pytest.raises(InvalidVipSpec, match=fragment):
        parse_vip(text)


@pytest.mark.parametrize(
    ("vips", "fragment"),
    [
        (["198.18.0.11@eth0"], "host's own address"),
        (["198.18.0.200@eth0", "198.18.0.200@eth0"], "declared twice"),
        (["198.18.1.5/24@eth0"], "outside the subnets of eth0"),
        (["198.18.0.200@eth9"], "does not exist here"),
        (["198.18.0.200@eth0,follow=out"], "unknown binding"),
        (["198.18.0.201@eth0,binding=out", "198.18.0.202@eth0,binding=out"], "used twice"),
    ],
)
def test_bad_vip_sets_are_refused(vips: list[str], fragment: str) -> None:
    """Duplicates, host addresses, foreign subnets and dangling follows are refused."""
    with pytest.raises(InvalidVipSpec, match=fragment):
        validate_vips([parse_vip(v) for v in vips], host_addresses=HOST)


def test_listener_following_a_binding_on_the_same_address_is_refused() -> None:
    """A listener cannot follow a binding that has its own address."""
    binding = Vip(address="198.18.0.201", interface="eth0", kind=VipKind.BINDING, binding="b")
    listener = Vip(address="198.18.0.201", interface="eth1", follow="b")
    with pytest.raises(InvalidVipSpec, match="same address"):
        validate_vips([binding, listener])


def test_topology_disagreement_is_refused() -> None:
    """A VIP on another interface than its topology block is refused."""
    topo = parse_topology({"198.18.0.0/24": "eth0"})
    with pytest.raises(InvalidVipSpec, match="topology puts it on eth0"):
        validate_vips([parse_vip("198.18.0.200@eth1")], topology=topo)
    with pytest.raises(InvalidVipSpec, match="outside every topology block"):
        validate_vips([parse_vip("198.19.0.1@eth0")], topology=topo)


def test_bad_topology_is_refused() -> None:
    """Malformed lines and overlapping blocks raise InvalidVipSpec."""
    with pytest.raises(InvalidVipSpec, match="expected 'CIDR -> interface'"):
        parse_topology(["198.18.0.0/24 eth0"])
    with pytest.raises(InvalidVipSpec, match="listed twice"):
        parse_topology(["198.18.0.0/24 -> eth0", "198.18.0.0/24 -> eth1"])


def test_good_set_passes_and_round_trips() -> None:
    """A valid set is accepted and each declaration survives to_dict/from_dict."""
    vips = [
        parse_vip("198.18.0.200/24@eth0,prefer=n1"),
        parse_vip("198.18.0.201@eth0,binding=out"),
        parse_vip("198.18.0.202@eth0,follow=out"),
        parse_vip("2001:db8::200/64@eth0"),
    ]
    assert validate_vips(vips, host_addresses=HOST) == tuple(vips)
    for vip in vips:
        assert Vip.from_dict(vip.to_dict()) == vip
    assert vips[0].network == ipaddress.ip_network("198.18.0.0/24")


# --- fuzz: only InvalidVipSpec may escape (issue 11, items 4 and 9) ----------------


_SPEC_ALPHABET = st.sampled_from([*"0123456789abcdef.:/@,=-_ ²٣xyzkindbgpreflow", "\x00"])
_SPEC_TEXT = st.one_of(
    st.text(max_size=60),
    st.text(_SPEC_ALPHABET, max_size=60),
    st.builds(
        lambda a, p, rest: f"{a}/{p}{rest}",
        st.sampled_from(["198.18.0.1", "2001:db8::1", "::", "0.0.0.0"]),
        st.text(max_size=6),
        st.text(_SPEC_ALPHABET, max_size=30),
    ),
)
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=20,
)
_FIELDS = st.fixed_dictionaries(
    {},
    optional={
        k: _JSON
        | st.text(_SPEC_ALPHABET, max_size=20)
        | st.just(None).map(lambda _: 10**5000)  # repr-safe: a 5000-digit int
        for k in ("address", "prefix", "interface", "kind", "binding", "preference", "follow")
    },
)


def test_unicode_digit_prefix_is_a_clear_error() -> None:
    """A prefix of Unicode digits (``/²``) is refused as InvalidVipSpec, not a bare ValueError."""
    for text in ("198.18.0.1/²", "198.18.0.1/٣٢@eth0", "198.18.0.1/0000024@eth0"):
        with pytest.raises(InvalidVipSpec, match="prefix"):
            parse_vip(text)


@settings(max_examples=300, deadline=5000)
@given(_SPEC_TEXT)
def test_fuzz_parse_vip_raises_only_invalid_vip_spec(text: str) -> None:
    """Any command-line text parses to a Vip or raises InvalidVipSpec."""
    topology = parse_topology(["198.18.0.0/15 -> eth0", "2001:db8::/32 -> eth1"])
    try:
        vip = parse_vip(text, topology=topology)
    except InvalidVipSpec:
        return
    assert Vip.from_dict(vip.to_dict()) == vip


@settings(max_examples=200, deadline=5000)
@given(
    st.lists(st.text(max_size=40), max_size=5)
    | st.dictionaries(st.text(max_size=20), st.text(max_size=20), max_size=4)
)
def test_fuzz_parse_topology_raises_only_invalid_vip_spec(
    lines: list[str] | dict[str, str],
) -> None:
    """Any topology text or mapping parses or raises InvalidVipSpec."""
    with contextlib.suppress(InvalidVipSpec):
        parse_topology(lines)


@settings(max_examples=300, deadline=5000)
@given(_FIELDS)
def test_fuzz_declaration_documents_raise_only_invalid_vip_spec(raw: dict[str, object]) -> None:
    """Any JSON object as a declaration decodes to a Vip or raises InvalidVipSpec."""
    with contextlib.suppress(InvalidVipSpec):
        Vip.from_dict(raw)


@settings(max_examples=200, deadline=5000)
@given(
    st.binary(max_size=200)
    | st.builds(lambda n, c: c * n, st.integers(0, 20000), st.sampled_from([b"[", b"{", b'{"a":']))
)
def test_fuzz_declaration_bytes_raise_only_documented_errors(data: bytes) -> None:
    """Any znode bytes decode to a Vip or raise MalformedData or InvalidVipSpec."""
    with contextlib.suppress(MalformedData, InvalidVipSpec):
        Vip.from_dict(decode_object(data, what="declaration", max_bytes=4096))
