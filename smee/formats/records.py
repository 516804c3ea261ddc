"""The three record shapes (Smee YAML, Tinkerbell Hardware, Tink JSON) turned into Hardware."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

from smee.formats.documents import Path, _Doc, _record_line
from smee.formats.values import (
    _bool,
    _frozen,
    _host,
    _hosts,
    _Invalid,
    _ip,
    _ips,
    _kind,
    _label,
    _lease,
    _list,
    _mac,
    _map,
    _netmask,
    _text,
    _url,
    _vlan,
)
from smee.hardware import (
    OSIE,
    Hardware,
    HardwareError,
    Instance,
    Interface,
    OperatingSystem,
    normalize_mac,
)

# ---------------------------------------------------------------- the formats


class _State:
    """Per-parse bookkeeping: the current document, warnings, MACs seen."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.doc: _Doc = _Doc(None, 1, {}, [])
        self.index = 0
        self.warnings: list[tuple[int, Path, str]] = []
        self.macs: dict[str, str] = {}

    def warn(self, path: Path, message: str) -> None:
        self.warnings.append((self.index, path, message))

    def source(self, record: Path) -> str:
        return f"{self.path}:{_record_line(self.doc, record)}"

    def hardware(self, record: Path, mac_paths: list[Path], **fields: Any) -> Hardware:
        """Build the record; a MAC already claimed is a warning (lookups will refuse it as ambiguous)."""
        source = self.source(record)
        hw = Hardware(source=source, **fields)
        for iface, mac_path in zip(hw.interfaces, mac_paths):
            other = self.macs.get(iface.mac)
            if other is None:
                self.macs[iface.mac] = source
            else:
                self.warn(
                    mac_path,
                    f"MAC {iface.mac} is also used by the record at {other}; "
                    "lookups for it will be refused as ambiguous",
                )
        return hw


def _parse_document(state: _State) -> list[Hardware]:
    """Detect the format of one document and parse its records."""
    data = state.doc.data
    if data is None:
        return []
    if isinstance(data, dict):
        if "apiVersion" in data or "kind" in data:
            return _kubernetes(state, data)
        if "network" in data:
            return [_tink(state, (), data)]
        if not data:
            return []
        if any(_looks_like_mac(k) for k in data):
            return [_smee(state, key, record) for key, record in data.items()]
    elif isinstance(data, list):
        if all(isinstance(item, dict) and "network" in item for item in data):
            return [_tink(state, (i,), item) for i, item in enumerate(data)]
        bad = next(
            i
            for i, item in enumerate(data)
            if not (isinstance(item, dict) and "network" in item)
        )
        raise _Invalid(
            (bad,),
            f'[{bad}]: expected a Tink hardware object (with a "network" key), got {_kind(data[bad])}',
        )
    raise _Invalid(
        (),
        f"unrecognised document ({_kind(data)}): expected Smee hardware YAML (a map keyed by MAC), "
        "a tinkerbell.org/v1alpha1 Hardware object (or a List of them), "
        'or Tink hardware JSON (an object with "network", or a list of them)',
    )


def _looks_like_mac(key: str) -> bool:
    try:
        normalize_mac(key)
    except HardwareError:
        return False
    return True


def _is_tinkerbell(api: Any) -> bool:
    return isinstance(api, str) and api.startswith("tinkerbell.org/")


def _kubernetes(state: _State, data: dict[str, Any]) -> list[Hardware]:
    kind, api = data.get("kind"), data.get("apiVersion")
    if kind == "Hardware" and _is_tinkerbell(api):
        return [_crd(state, (), data)]
    if kind == "List" or (kind == "HardwareList" and _is_tinkerbell(api)):
        items = _list(("items",), data.get("items"))
        out = []
        for i, item in enumerate(items):
            path: Path = ("items", i)
            item = _map(path, item)
            item_kind, item_api = (
                item.get("kind", "Hardware"),
                item.get("apiVersion", "tinkerbell.org/"),
            )
            if item_kind != "Hardware" or not _is_tinkerbell(item_api):
                raise _Invalid(
                    path,
                    f"{_label(path)}: a {item_kind} ({item_api}) is not a tinkerbell.org Hardware",
                )
            out.append(_crd(state, path, item))
        return out
    raise _Invalid(
        ("kind",) if "kind" in data else (),
        f"a Kubernetes object of kind {kind!r} (apiVersion {api!r}) is not a "
        "tinkerbell.org/v1alpha1 Hardware (nor a List of them)",
    )


class _Spelling(NamedTuple):
    """Netboot key names: the CRD is camelCase where Tink JSON was snake_case."""

    allow_pxe: str
    allow_workflow: str
    base_url: str


_CRD = _Spelling("allowPXE", "allowWorkflow", "baseURL")
_TINK = _Spelling("allow_pxe", "allow_workflow", "base_url")


def _crd(state: _State, path: Path, obj: dict[str, Any]) -> Hardware:
    meta = _map(path + ("metadata",), obj.get("metadata"))
    name = _text(path + ("metadata", "name"), meta.get("name"))
    if not name:
        raise _Invalid(
            path + ("metadata", "name"),
            f"{_label(path + ('metadata', 'name'))} is required",
        )
    namespace = _text(path + ("metadata", "namespace"), meta.get("namespace"))
    spec_path = path + ("spec",)
    spec = _map(spec_path, obj.get("spec"))
    details = _metadata(spec_path + ("metadata",), spec.get("metadata"))
    ifaces_path = spec_path + ("interfaces",)
    entries = _list(ifaces_path, spec.get("interfaces"))
    interfaces = tuple(
        _interface(ifaces_path + (i,), e, _CRD, "") for i, e in enumerate(entries)
    )
    return state.hardware(
        path,
        [ifaces_path + (i, "dhcp", "mac") for i in range(len(entries))],
        id=f"{namespace}/{name}" if namespace else name,
        interfaces=interfaces,
        **details,
    )


def _tink(state: _State, path: Path, obj: dict[str, Any]) -> Hardware:
    hw_id = _text(path + ("id",), obj.get("id"))
    if not hw_id:
        raise _Invalid(path + ("id",), f"{_label(path + ('id',))} is required")
    details = _metadata(path + ("metadata",), obj.get("metadata"))
    instance: Instance | None = details["instance"]
    network = _map(path + ("network",), obj.get("network"))
    ifaces_path = path + ("network", "interfaces")
    entries = _list(ifaces_path, network.get("interfaces"))
    fallback = instance.hostname if instance else ""
    interfaces = tuple(
        _interface(ifaces_path + (i,), e, _TINK, fallback)
        for i, e in enumerate(entries)
    )
    return state.hardware(
        path,
        [ifaces_path + (i, "dhcp", "mac") for i in range(len(entries))],
        id=hw_id,
        interfaces=interfaces,
        **details,
    )


def _interface(
    path: Path, entry: Any, names: _Spelling, fallback_hostname: str
) -> Interface:
    """One ``interfaces[]`` entry of the CRD or Tink JSON (same shape, different netboot spelling)."""
    entry = _map(path, entry)
    dp = path + ("dhcp",)
    dhcp = _map(dp, entry.get("dhcp"))
    ip = _map(dp + ("ip",), dhcp.get("ip"))
    np = path + ("netboot",)
    netboot = _map(np, entry.get("netboot"))
    ipxe = _map(np + ("ipxe",), netboot.get("ipxe"))
    osie = _map(np + ("osie",), netboot.get("osie"))
    return Interface(
        mac=_mac(dp + ("mac",), dhcp.get("mac")),
        ip=_ip(dp + ("ip", "address"), ip.get("address")),
        netmask=_netmask(dp + ("ip", "netmask"), ip.get("netmask")),
        gateway=_ip(dp + ("ip", "gateway"), ip.get("gateway")),
        hostname=_host(dp + ("hostname",), dhcp.get("hostname")) or fallback_hostname,
        dns_servers=_ips(dp + ("name_servers",), dhcp.get("name_servers")),
        ntp_servers=_ips(dp + ("time_servers",), dhcp.get("time_servers")),
        lease_time=_lease(dp + ("lease_time",), dhcp.get("lease_time")),
        arch=_text(dp + ("arch",), dhcp.get("arch")),
        uefi=_bool(dp + ("uefi",), dhcp.get("uefi")),
        vlan_id=_vlan(dp + ("vlan_id",), dhcp.get("vlan_id")),
        iface_name=_text(dp + ("iface_name",), dhcp.get("iface_name")),
        allow_pxe=_bool(np + (names.allow_pxe,), netboot.get(names.allow_pxe)),
        allow_workflow=_bool(
            np + (names.allow_workflow,), netboot.get(names.allow_workflow)
        ),
        disable_dhcp=_bool(path + ("disableDhcp",), entry.get("disableDhcp")),
        ipxe_url=_url(np + ("ipxe", "url"), ipxe.get("url")),
        ipxe_script=_text(np + ("ipxe", "contents"), ipxe.get("contents"), free=True),
        osie=OSIE(
            base_url=_url(np + ("osie", names.base_url), osie.get(names.base_url)),
            kernel=_text(np + ("osie", "kernel"), osie.get("kernel")),
            initrd=_text(np + ("osie", "initrd"), osie.get("initrd")),
        ),
    )


def _metadata(path: Path, value: Any) -> dict[str, Any]:
    """``metadata`` (Tink) / ``spec.metadata`` (CRD): facility, plan, state, instance."""
    meta = _map(path, value)
    facility = _map(path + ("facility",), meta.get("facility"))
    manufacturer = _map(path + ("manufacturer",), meta.get("manufacturer"))
    return {
        "facility": _text(
            path + ("facility", "facility_code"), facility.get("facility_code")
        ),
        "plan": _text(path + ("facility", "plan_slug"), facility.get("plan_slug")),
        "manufacturer": _text(
            path + ("manufacturer", "slug"), manufacturer.get("slug")
        ),
        "state": _text(path + ("state",), meta.get("state")),
        "instance": _instance(path + ("instance",), meta.get("instance")),
    }


def _instance(path: Path, value: Any) -> Instance | None:
    if value is None:
        return None
    inst = _map(path, value)
    op = path + ("operating_system",)
    os_ = _map(op, inst.get("operating_system"))
    return Instance(
        id=_text(path + ("id",), inst.get("id")),
        state=_text(path + ("state",), inst.get("state")),
        hostname=_host(path + ("hostname",), inst.get("hostname")),
        allow_pxe=_bool(path + ("allow_pxe",), inst.get("allow_pxe")),
        rescue=_bool(path + ("rescue",), inst.get("rescue")),
        always_pxe=_bool(path + ("always_pxe",), inst.get("always_pxe")),
        ipxe_script_url=_url(path + ("ipxe_script_url",), inst.get("ipxe_script_url")),
        userdata=_text(path + ("userdata",), inst.get("userdata"), free=True),
        operating_system=OperatingSystem(
            slug=_text(op + ("slug",), os_.get("slug")),
            distro=_text(op + ("distro",), os_.get("distro")),
            version=_text(op + ("version",), os_.get("version")),
            image_tag=_text(op + ("image_tag",), os_.get("image_tag")),
            installer=_text(op + ("installer",), os_.get("installer")),
            installer_data=_frozen(op + ("installer_data",), os_.get("installer_data")),
        ),
    )


def _free_text(path: Path, value: Any) -> str:
    return _text(path, value, free=True)


_Parser = Callable[[Path, Any], Any]

#: Smee record fields, by lower-cased name: (Interface attribute, parser).
#: A ``None`` parser keeps (path, value) of a nested map for a second pass.
_SMEE_FIELDS: dict[str, tuple[str, _Parser | None]] = {
    "ipaddress": ("ip", _ip),
    "subnetmask": ("netmask", _netmask),
    "defaultgateway": ("gateway", _ip),
    "broadcastaddress": ("broadcast", _ip),
    "nameservers": ("dns_servers", _ips),
    "ntpservers": ("ntp_servers", _ips),
    "hostname": ("hostname", _host),
    "domainname": ("domain_name", _host),
    "domainsearch": ("domain_search", _hosts),
    "leasetime": ("lease_time", _lease),
    "arch": ("arch", _text),
    "uefi": ("uefi", _bool),  # extension
    "vlanid": ("vlan_id", _vlan),
    "disabled": ("disable_dhcp", _bool),
    "netboot": ("netboot", None),
}
_SMEE_NETBOOT: dict[str, tuple[str, _Parser | None]] = {
    "allowpxe": ("allow_pxe", _bool),
    "allowworkflow": ("allow_workflow", _bool),  # extension
    "ipxescripturl": ("ipxe_url", _url),
    "ipxescript": ("ipxe_script", _free_text),
    "console": ("console", _text),
    "facility": ("facility", _text),  # a Hardware attribute, popped below
    "osie": ("osie", None),  # extension
}
_SMEE_OSIE: dict[str, tuple[str, _Parser | None]] = {
    "baseurl": ("base_url", _url),
    "kernel": ("kernel", _text),
    "initrd": ("initrd", _text),
}


def _smee_fields(
    state: _State,
    path: Path,
    value: Any,
    table: dict[str, tuple[str, _Parser | None]],
    where: str,
) -> dict[str, Any]:
    """Parse the fields of a Smee-format map into attribute values.

    Names match case-insensitively, as with ghodss/yaml (``encoding/json``);
    unknown names are warned about, a name given twice in two spellings is an error.
    """
    out: dict[str, Any] = {}
    spelled: dict[str, str] = {}
    for key, item in _map(path, value).items():
        name = key.lower()
        entry = table.get(name)
        if entry is None:
            state.warn(path + (key,), f"unknown key {key!r} in {where} (ignored)")
            continue
        if name in spelled:
            raise _Invalid(
                path + (key,),
                f"{_label(path + (key,))}: repeats {spelled[name]!r} "
                "(field names are case-insensitive)",
            )
        spelled[name] = key
        attr, parse = entry
        out[attr] = (
            (path + (key,), item) if parse is None else parse(path + (key,), item)
        )
    return out


def _smee(state: _State, key: str, record: Any) -> Hardware:
    path: Path = (key,)
    mac = _mac(path, key)
    if not isinstance(record, dict):
        raise _Invalid(
            path,
            f"{_label(path)}: expected the machine's fields (ipAddress, subnetMask...), "
            f"got {'nothing' if record is None else _kind(record)}",
        )
    fields = _smee_fields(state, path, record, _SMEE_FIELDS, f"record {key}")
    netboot = _smee_fields(
        state,
        *fields.pop("netboot", (path + ("netboot",), None)),
        _SMEE_NETBOOT,
        f"{key} netboot",
    )
    osie = _smee_fields(
        state,
        *netboot.pop("osie", (path + ("netboot", "osie"), None)),
        _SMEE_OSIE,
        f"{key} netboot.osie",
    )
    facility = netboot.pop("facility", "")
    for attr, name in (("ip", "ipAddress"), ("netmask", "subnetMask")):
        if fields.get(attr) is None:
            raise _Invalid(path, f"{_label(path)}: {name} is required")
    interface = Interface(mac=mac, osie=OSIE(**osie), **fields, **netboot)
    return state.hardware(
        path, [path], id=mac, interfaces=(interface,), facility=facility
    )
