"""HardwareIndex: O(1) MAC/IP lookups with Kubernetes-field-index semantics (0/1/2+)."""

from __future__ import annotations

from ipaddress import IPv4Address

import pytest

from smee.backends import AmbiguousHardware, LookupFailed
from smee.backends.index import HardwareIndex
from smee.hardware import Hardware, Interface, Match


def hw(id: str, *ifaces: tuple[str, str | None], source: str = "") -> Hardware:
    return Hardware(
        id=id,
        interfaces=tuple(
            Interface(mac=mac, ip=IPv4Address(ip) if ip else None) for mac, ip in ifaces
        ),
        source=source or f"hw.yaml:{id}",
    )


M1, M2, M3 = "52:54:00:00:00:01", "52:54:00:00:00:02", "52:54:00:00:00:03"


def test_empty_index() -> None:
    index = HardwareIndex()
    assert len(index) == 0
    assert index.by_mac(M1) is None
    assert index.by_ip(IPv4Address("192.0.2.1")) is None
    assert index.duplicates() == []


def test_lookup_by_each_mac_and_ip_of_a_multi_interface_record() -> None:
    a = hw("a", (M1, "192.0.2.10"), (M2, "192.0.2.11"))
    b = hw("b", (M3, "192.0.2.12"))
    index = HardwareIndex([a, b])
    assert len(index) == 2
    assert index.by_mac(M1) == Match(a, a.interfaces[0])
    assert index.by_mac(M2) == Match(a, a.interfaces[1])
    assert index.by_mac(M3) == Match(b, b.interfaces[0])
    assert index.by_ip(IPv4Address("192.0.2.11")).interface.mac == M2
    assert index.by_ip(IPv4Address("192.0.2.12")).hardware is b
    assert index.by_ip(IPv4Address("192.0.2.99")) is None
    assert index.by_mac("52:54:00:00:00:99") is None
    assert list(index) == [a, b] and index.hardware == (a, b)


def test_lookups_return_the_stored_match_without_allocating() -> None:
    a = hw("a", (M1, "192.0.2.10"))
    index = HardwareIndex([a])
    # The same object for both keys and for repeated lookups: nothing built per lookup.
    assert index.by_mac(M1) is index.by_mac(M1) is index.by_ip(IPv4Address("192.0.2.10"))


def test_interface_without_ip_is_only_mac_indexed() -> None:
    a = hw("a", (M1, None))
    index = HardwareIndex([a])
    assert index.by_mac(M1).hardware is a
    assert index.by_ip(IPv4Address("0.0.0.0")) is None


def test_duplicate_mac_across_records_is_ambiguous_and_names_both_sources() -> None:
    a = hw("a", (M1, "192.0.2.10"), source="one.yaml:1")
    b = hw("b", (M1, "192.0.2.20"), source="two.yaml:7")
    c = hw("c", (M3, "192.0.2.30"))
    index = HardwareIndex([a, b, c])
    with pytest.raises(AmbiguousHardware) as err:
        index.by_mac(M1)
    assert isinstance(err.value, LookupFailed)
    assert "one.yaml:1" in str(err.value) and "two.yaml:7" in str(err.value)
    assert M1 in str(err.value)
    # The other keys of the same records still answer.
    assert index.by_ip(IPv4Address("192.0.2.10")).hardware is a
    assert index.by_ip(IPv4Address("192.0.2.20")).hardware is b
    assert index.by_mac(M3).hardware is c
    [report] = index.duplicates()
    assert M1 in report and "one.yaml:1" in report and "two.yaml:7" in report


def test_duplicate_ip_is_ambiguous_and_macs_still_answer() -> None:
    a = hw("a", (M1, "192.0.2.10"), source="one.yaml:1")
    b = hw("b", (M2, "192.0.2.10"), source="one.yaml:5")
    index = HardwareIndex([a, b])
    with pytest.raises(AmbiguousHardware, match=r"192\.0\.2\.10.*one\.yaml:1.*one\.yaml:5"):
        index.by_ip(IPv4Address("192.0.2.10"))
    assert index.by_mac(M1).hardware is a
    assert index.by_mac(M2).hardware is b
    assert len(index.duplicates()) == 1 and "IP 192.0.2.10" in index.duplicates()[0]


def test_same_mac_twice_in_one_record_is_ambiguous() -> None:
    a = hw("a", (M1, "192.0.2.10"), (M1, "192.0.2.11"))
    index = HardwareIndex([a])
    with pytest.raises(AmbiguousHardware):
        index.by_mac(M1)
    assert index.by_ip(IPv4Address("192.0.2.11")).interface.ip == IPv4Address("192.0.2.11")


def test_three_claimants_are_all_named_and_reported_once() -> None:
    records = [hw(x, (M1, None), source=f"{x}.yaml:1") for x in "abc"]
    index = HardwareIndex(records)
    with pytest.raises(AmbiguousHardware, match="3 interfaces") as err:
        index.by_mac(M1)
    assert all(f"{x}.yaml:1" in str(err.value) for x in "abc")
    assert len(index.duplicates()) == 1


def test_duplicates_returns_a_copy() -> None:
    index = HardwareIndex([hw("a", (M1, None)), hw("b", (M1, None))])
    index.duplicates().clear()
    assert len(index.duplicates()) == 1


def test_record_without_source_is_named_by_id() -> None:
    a = Hardware(id="alpha", interfaces=(Interface(mac=M1),))
    b = Hardware(id="beta", interfaces=(Interface(mac=M1),))
    with pytest.raises(AmbiguousHardware, match="alpha.*beta"):
        HardwareIndex([a, b]).by_mac(M1)


def test_accepts_a_generator_and_scales() -> None:
    n = 20_000
    gen = (
        hw(str(i), (f"02:00:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x}:01", str(IPv4Address(0x0A000000 + i))))
        for i in range(n)
    )
    index = HardwareIndex(gen)
    assert len(index) == n
    assert index.by_ip(IPv4Address("10.0.78.31")).hardware.id == str(78 * 256 + 31)
    assert index.duplicates() == []
