"""A mutable MAC/IP index for backends fed by change events (the Kubernetes watch).

:class:`~smee.backends.index.HardwareIndex` is immutable and rebuilt on every
reload, which is right for files but wrong for a watch that delivers one
object at a time: rebuilding 100,000 records for each MODIFIED event would
cost ~a second per event. :class:`LiveIndex` keeps the same lookup semantics
(0 claimants -> ``None``, 1 -> the :class:`Match`, 2+ -> :class:`AmbiguousHardware`
naming every claimant) and the same storage trick (a key claimed twice holds
a :class:`~smee.backends.index._Claims` tuple), but records are keyed by an
object key (``namespace/name``) and :meth:`put` replaces everything an object
claimed, so a MAC that moves from object A to object B follows it.

Everything runs on the reactor thread; each method leaves the index
consistent before it returns, so a lookup never sees half an update.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from ipaddress import IPv4Address

from smee.backends.index import Lookups, _Claims, _describe
from smee.hardware import Hardware, Match

__all__ = ["LiveIndex"]


def _add(index: dict, key: object, match: Match) -> None:  # type: ignore[type-arg]
    prev = index.get(key)
    if prev is None:
        index[key] = match
    elif type(prev) is _Claims:
        index[key] = _Claims((*prev, match))
    else:
        index[key] = _Claims((prev, match))


def _remove(index: dict, key: object, hw: Hardware) -> None:  # type: ignore[type-arg]
    prev = index.get(key)
    if prev is None:
        return
    if type(prev) is _Claims:
        rest = tuple(m for m in prev if m.hardware is not hw)
        if not rest:
            del index[key]
        elif len(rest) == 1:
            index[key] = rest[0]
        else:
            index[key] = _Claims(rest)
    elif prev.hardware is hw:
        del index[key]


class LiveIndex(Lookups):
    """O(1) lookups by interface MAC and IPv4 address over records that change one at a time."""

    __slots__ = ("_objects",)

    def __init__(self, records: Iterable[tuple[str, Hardware]] = ()) -> None:
        self._objects: dict[str, Hardware] = {}
        self._by_mac: dict[str, Match | _Claims] = {}
        self._by_ip: dict[int, Match | _Claims] = {}
        for key, hw in records:
            self.put(key, hw)

    # --- changes -------------------------------------------------------

    def put(self, key: str, hw: Hardware) -> list[str]:
        """Add or replace the object ``key``: its old interfaces stop claiming their keys.

        Returns a line for each MAC or IP of ``hw`` that is now ambiguous, for the log.
        """
        self.remove(key)
        self._objects[key] = hw
        by_mac, by_ip = self._by_mac, self._by_ip
        ambiguous: list[str] = []
        for iface in hw.interfaces:
            match = Match(hw, iface)
            _add(by_mac, iface.mac, match)
            if type(by_mac[iface.mac]) is _Claims:
                ambiguous.append(_describe("MAC", iface.mac, by_mac[iface.mac]))  # type: ignore[arg-type]
            if iface.ip is not None:
                ip = int(iface.ip)
                _add(by_ip, ip, match)
                if type(by_ip[ip]) is _Claims:
                    ambiguous.append(_describe("IP", str(iface.ip), by_ip[ip]))  # type: ignore[arg-type]
        return ambiguous

    def remove(self, key: str) -> Hardware | None:
        """Forget the object ``key`` (no-op if unknown); returns what it was."""
        old = self._objects.pop(key, None)
        if old is not None:
            for iface in old.interfaces:
                _remove(self._by_mac, iface.mac, old)
                if iface.ip is not None:
                    _remove(self._by_ip, int(iface.ip), old)
        return old

    # --- lookups -------------------------------------------------------

    def duplicates(self) -> list[str]:
        """One line per ambiguous MAC or IP, naming every claimant (computed on demand)."""
        out = [_describe("MAC", k, v) for k, v in self._by_mac.items() if type(v) is _Claims]  # type: ignore[arg-type]
        out += [
            _describe("IP", str(IPv4Address(k)), v)  # type: ignore[arg-type]
            for k, v in self._by_ip.items()
            if type(v) is _Claims
        ]
        return out

    def get(self, key: str) -> Hardware | None:
        return self._objects.get(key)

    def keys(self) -> list[str]:
        return list(self._objects)

    def __contains__(self, key: object) -> bool:
        return key in self._objects

    def __len__(self) -> int:
        return len(self._objects)

    def __iter__(self) -> Iterator[Hardware]:
        return iter(list(self._objects.values()))

    def __repr__(self) -> str:
        return f"<LiveIndex records={len(self._objects)} macs={len(self._by_mac)} ips={len(self._by_ip)}>"
