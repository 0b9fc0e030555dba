"""Per-source limits of the datagram shell (dht/peerlimit.py): pure, clock passed in."""

from __future__ import annotations

from workmesh.dht.peerlimit import Offenders, PeerBuckets, ProvenAddresses, prefix_of, source_of


def test_a_source_is_its_ip_so_rotating_ports_escapes_nothing():
    assert source_of(("203.0.113.7", 1000)) == source_of(("203.0.113.7", 2000)) == "203.0.113.7"
    assert source_of(("2001:db8::1", 1)) == source_of(("2001:db8::1", 2))
    assert source_of(("::ffff:203.0.113.7", 5)) == "203.0.113.7"
    # Loopback: every node of a local mesh shares the IP, so the port tells them apart.
    assert source_of(("127.0.0.1", 1)) != source_of(("127.0.0.1", 2))


def test_prefixes_are_slash_24_and_slash_48_and_loopback_has_none():
    assert prefix_of(("203.0.113.7", 1)) == prefix_of(("203.0.113.200", 9)) == "203.0.113.0/24"
    assert prefix_of(("203.0.114.7", 1)) != prefix_of(("203.0.113.7", 1))
    assert prefix_of(("2001:db8:1:2::1", 1)) == prefix_of(("2001:db8:1:ffff::9", 1)) == "2001:db8:1::/48"
    assert prefix_of(("127.0.0.1", 1)) is None and prefix_of(("::1", 1)) is None


def test_ports_of_one_address_share_one_bucket():
    buckets = PeerBuckets(rate_per_s=1.0, burst=8, size_max=100)
    allowed = sum(buckets.allow(source_of(("198.51.100.1", port)), 0.0) for port in range(1000, 1100))
    assert allowed == 8


def test_a_source_that_keeps_failing_is_shut_out_then_let_back_and_shut_out_sooner():
    off = Offenders(rate_per_s=1.0, burst=5, shutout_s=30.0, size_max=100)
    shut = [off.charge("a", 0.0) for _ in range(6)]
    assert shut == [False] * 5 + [True]
    assert off.is_shut_out("a", 10.0) and not off.is_shut_out("b", 10.0)
    assert not off.is_shut_out("a", 30.0)  # let back after shutout_s
    # A repeat offender: its failure bucket refilled only partly, so it is shut out again sooner.
    again = [off.charge("a", 31.0) for _ in range(40)]
    assert again.index(True) < 40
    assert off.shutouts == 2


def test_failures_far_apart_never_shut_out():
    off = Offenders(rate_per_s=1.0, burst=5, shutout_s=30.0, size_max=100)
    assert not any(off.charge("a", float(t)) for t in range(100))


def test_offenders_memory_is_bounded():
    off = Offenders(rate_per_s=1.0, burst=1, shutout_s=30.0, size_max=50)
    for i in range(1000):
        off.charge(i, 0.0)
        off.charge(i, 0.0)
    assert len(off) <= 50


def test_an_address_stays_proven_while_some_pair_at_it_is_remembered():
    proven = ProvenAddresses(size_max=2)
    a, b = ("10.0.0.1", 1), ("10.0.0.2", 1)
    proven.add(a, b"x")
    proven.add(a, b"y")
    assert proven.has_address(a) and not proven.has_address(b)
    proven.add(a, b"x")  # seen again: the most recent, "y" is the oldest now
    proven.add(b, b"z")  # "y" forgotten, "x" still proves a
    assert proven.has_address(a) and proven.has_address(b) and (a, b"y") not in proven
    proven.add(b, b"w")  # "x" forgotten: nothing at a is remembered
    assert not proven.has_address(a) and proven.has_address(b)
