"""Hardware files: Smee's file-backend YAML, Tinkerbell ``Hardware`` manifests, Tink JSON.

Operators already have hardware data in one of three shapes, and we read each
of them unchanged. The format is detected per document (a YAML stream may mix
them):

1. **Smee file-backend YAML** -- a map keyed by MAC (``docs/Backend-File.md``)::

       52:54:00:12:34:56:
         ipAddress: 192.0.2.10        # required
         subnetMask: 255.255.255.0    # required (a prefix length like 24 works too)
         defaultGateway: 192.0.2.1
         nameServers: [192.0.2.53]
         ntpServers: [192.0.2.123]
         hostname: node-1
         domainName: example.com
         broadcastAddress: 192.0.2.255
         domainSearch: [example.com]
         vlanID: "100"
         leaseTime: 86400
         arch: x86_64
         disabled: false
         netboot: {allowPxe: true, ipxeScriptUrl: "http://...", ipxeScript: "...",
                   console: ttyS0, facility: onprem}

   Field names match case-insensitively (Smee parses with ghodss/yaml, i.e.
   ``encoding/json``). The record id is the MAC; ``netboot.facility`` is the
   facility. **Extensions** (not in Smee): ``uefi`` (bool, next to ``arch``),
   ``netboot.allowWorkflow`` (bool) and ``netboot.osie{baseURL, kernel,
   initrd}`` (per-machine Hook/OSIE location). Any other key produces a
   warning naming it and its line -- never an error, never silently dropped.

2. **Tinkerbell Kubernetes manifests** -- ``apiVersion: tinkerbell.org/v1alpha1``,
   ``kind: Hardware``: one per document, several documents (``---``), or a
   ``kind: List`` (or ``HardwareList``) with ``items:`` as ``kubectl get hw -o
   yaml`` prints it. The id is ``metadata.name``, as ``namespace/name`` when a
   namespace is set. Fields Smee ignores (``bmcRef``, ``disks``, ``userData``,
   ``status``...) are ignored silently: they are legitimate.

3. **Seed-era Tink hardware JSON** (also accepted as YAML) -- one object or an
   array of objects ``{id, network: {interfaces: [...]}, metadata: {...}}``.
   Same shape as the CRD ``spec`` but with snake_case netboot keys
   (``allow_pxe``, ``allow_workflow``, ``osie.base_url``). The interface
   hostname is ``dhcp.hostname``, else ``metadata.instance.hostname`` (what
   Boots sent as option 12).

Every value is validated (addresses, masks, MACs in any common notation,
VLANs, host names, booleans, lease times, http(s) URLs, no control characters
in text that later lands in iPXE scripts or DHCP options). One bad record
rejects the whole file, so a backend can keep its last good data.

Other rules: MACs are accepted in any common notation (``:``, ``-``, ``.``,
bare, any case); a MAC used by two records is a warning (backends refuse
ambiguous lookups); a duplicate key in a YAML mapping, or among the top-level
keys of a JSON object, is an error (it would silently drop a machine); an
empty file or document is zero records.

Speed: big inventories (100,000 records) must load quickly, so YAML documents
are built straight from libyaml's event stream (about twice as fast as
``yaml.load``, see :func:`_build_documents`), JSON by the C decoder, the
cyclic GC is paused while loading, and the line of a field is only worked
out -- by re-composing the text and walking the node tree -- when there is
an error or warning to report. Record lines (:attr:`Hardware.source`) come
cheaply from the top one or two levels of each document.
"""

from __future__ import annotations

import gc
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Iterator

from smee.formats.documents import HardwareFileError, _Locator, _read_json, _read_yaml
from smee.formats.records import _crd, _parse_document, _State
from smee.formats.values import _Invalid, _kind
from smee.hardware import Hardware

__all__ = ["HardwareFileError", "ParseResult", "hardware_from_object", "load_file", "parse_text"]


# --------------------------------------------------------------------------- API


@dataclass(frozen=True)
class ParseResult:
    """The records of one file, and warnings (``path:line: ...``) worth logging."""

    hardware: tuple[Hardware, ...]
    warnings: tuple[str, ...]


def load_file(path: str) -> ParseResult:
    """Read ``path`` (UTF-8) and parse it; any problem is a :class:`HardwareFileError`."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise HardwareFileError(path, None, e.strerror or str(e)) from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise HardwareFileError(path, line, f"not valid UTF-8: {e.reason}") from None
    return parse_text(text, path)


def parse_text(text: str, path: str = "<string>") -> ParseResult:
    """Parse hardware records; ``.json`` paths are JSON, anything else YAML."""
    with _gc_paused():
        docs = (
            _read_json(text, path)
            if path.lower().endswith(".json")
            else _read_yaml(text, path)
        )
        state = _State(path)
        hardware: list[Hardware] = []
        for index, doc in enumerate(docs):
            state.doc, state.index = doc, index
            try:
                hardware.extend(_parse_document(state))
            except _Invalid as e:
                line = _Locator(text, docs).line(index, e.path)
                raise HardwareFileError(path, line, e.message) from None
    warnings: tuple[str, ...] = ()
    if state.warnings:
        locator = _Locator(text, docs)
        warnings = tuple(
            f"{path}:{locator.line(i, p)}: {m}" for i, p, m in state.warnings
        )
    return ParseResult(tuple(hardware), warnings)


def hardware_from_object(obj: dict, source: str) -> Hardware:
    """One Tinkerbell ``Hardware`` object (as the Kubernetes API returns it) as a :class:`Hardware`.

    The same validation as for files; the error names ``source`` (e.g.
    ``kube:default/machine-1``) and the field, without a line number.
    """
    if not isinstance(obj, dict):
        # A List's items (or a watch event's object) can be anything the API server sent.
        raise HardwareFileError(source, None, f"expected a Hardware object (a mapping), got {_kind(obj)}")
    state = _State(source)
    try:
        hardware = _crd(state, (), obj)
    except _Invalid as e:
        raise HardwareFileError(source, None, e.message) from None
    return replace(hardware, source=source)  # an API object has no line


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic GC while loading: a big file creates millions of acyclic
    objects, and generation-2 passes over them double the load time. Restores
    the previous state; if loads overlap, the worst case is a slower load."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
