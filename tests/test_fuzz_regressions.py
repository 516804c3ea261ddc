"""Inputs the fuzz targets (fuzz/targets.py) found crashing, each minimised, each now answered properly.

Every test calls the public API as smee does and asserts the documented
error (or answer); the last test replays every input through its fuzz
target too, so the target's other properties hold on it as well.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from smee.formats import HardwareFileError, hardware_from_object, parse_text
from smee.syslog.parse import parse as parse_syslog

ROOT = Path(__file__).resolve().parent.parent

# --- formats: hardware_from_object on something that is not an object ----------------------
# Found by the `formats` target on its first seed (examples/hardware-tink.json is a JSON list):
# AttributeError: 'list' object has no attribute 'get'. The kube backend feeds it every item of
# a List response, which the API server (or a proxy in front of it) may send as anything.


@pytest.mark.parametrize("obj, kind", [([], "a list"), ("x", "'x'"), (None, "None"), (7, "'7'"), (True, "a boolean")])
def test_hardware_from_object_refuses_what_is_not_a_mapping(obj: object, kind: str) -> None:
    with pytest.raises(HardwareFileError) as info:
        hardware_from_object(obj, "kube:default/m1")  # type: ignore[arg-type]
    assert str(info.value) == f"kube:default/m1: expected a Hardware object (a mapping), got {kind}"


# --- formats: explicit YAML tags on values they do not fit ------------------------------------
# ValueError / KeyError escaped parse_text (so the file backend reported "cannot be parsed
# (ValueError: ...)" without a line, and hardware_from_object's callers would crash).


@pytest.mark.parametrize("text, message", [
    ("a: !!int abc\n", "x.yaml:1: invalid YAML: cannot read 'abc' as int: invalid literal for int() with base 10: 'abc'"),
    ("a: !!float abc\n", "x.yaml:1: invalid YAML: cannot read 'abc' as float: could not convert string to float: 'abc'"),
    ("a: 1\nb: !!bool maybe\n", "x.yaml:2: invalid YAML: cannot read 'maybe' as bool: not a bool"),
    # Found by atheris (fuzz/run, `formats`, after 3,883 runs): b"  int.infcvlanID: !!float " -
    # PyYAML's construct_yaml_float/int index the first character of an empty value (IndexError).
    ("  int.infcvlanID: !!float ", "x.yaml:1: invalid YAML: cannot read '' as float: empty"),
    ("a: !!int\n", "x.yaml:1: invalid YAML: cannot read '' as int: empty"),
    ("a: !!int _\n", "x.yaml:1: invalid YAML: cannot read '_' as int: empty"),
])
def test_yaml_explicit_tag_that_does_not_fit(text: str, message: str) -> None:
    with pytest.raises(HardwareFileError) as info:
        parse_text(text, "x.yaml")
    assert str(info.value) == message


# --- formats: integers past Python's 4300-digit str→int limit ---------------------------------


def test_yaml_integer_too_long_to_convert() -> None:
    text = "52:54:00:aa:bb:cc:\n  ipAddress: 192.0.2.1\n  leaseTime: " + "1" * 4301 + "\n"
    with pytest.raises(HardwareFileError) as info:
        parse_text(text, "x.yaml")
    assert info.value.line == 3
    assert "cannot read '1111" in info.value.message and "Exceeds the limit (4300 digits)" in info.value.message


def test_json_integer_too_long_to_convert() -> None:
    with pytest.raises(HardwareFileError) as info:
        parse_text('{\n"id": "a",\n"network": ' + "1" * 4301 + "}", "x.json")
    assert info.value.line == 3 and info.value.message.startswith("invalid JSON: Exceeds the limit (4300 digits)")


# --- formats and syslog: JSON nested deeper than the C decoder recurses -----------------------


def test_json_nested_too_deeply() -> None:
    with pytest.raises(HardwareFileError) as info:
        parse_text("[" * 5000, "x.json")
    assert str(info.value) == "x.json:1: invalid JSON: nested too deeply"


def test_syslog_json_text_nested_too_deeply_is_plain_text() -> None:
    """RecursionError escaped parse (the protocol counted it as an internal error, not a message)."""
    data = b'<14>app: {"a":' + b"[" * 3000
    message = parse_syslog(data, year=2024)
    assert message.fields is None and message.text == data[9:].decode()


# --- http: a Range number past the 4300-digit limit (smee/http/app.py) ---------------------------
# Found by review of what the `http` target checks (its inputs are capped at 512 bytes, too short
# to reach the limit): byte_range raised ValueError, so GET /ipxe/<binary> with such a header was
# a 500 and a traceback. Now a number of more than 18 digits is past any body.


@pytest.mark.parametrize(("header", "want"), [
    ("bytes=" + "1" * 4301 + "-", "416"),      # first byte past the body
    ("bytes=-" + "1" * 4301, (0, 99)),         # a suffix longer than the body: all of it
    ("bytes=0-" + "1" * 4301, (0, 99)),        # last byte past the body: to the end
])
def test_range_header_with_a_huge_number(header: str, want: object) -> None:
    from smee.http.app import UNSATISFIABLE, byte_range

    got = byte_range(header, 100)
    assert (got is UNSATISFIABLE) if want == "416" else (got == want or got is None)


# --- every input, through its fuzz target --------------------------------------------------


REPLAYS = [
    ("formats", b"[]"),
    ("formats", b'{"items": [1, "x", null, {"metadata": {"name": "a"}}]}'),
    ("formats", b"a: !!int abc\n"),
    ("formats", b"a: !!bool maybe\n"),
    ("formats", b"  int.infcvlanID: !!float "),
    ("formats", b"a: " + b"1" * 4301 + b"\n"),
    ("formats", b"[" * 5000),
    ("syslog", b'<14>app: {"a":' + b"[" * 3000),
    # tftp_session: a send that failed (OSError) for the last block, then a stray ACK of that
    # block: "complete" is right (to the session a failed send is a lost datagram); the target
    # had the property wrong and now counts attempted blocks as sent.
    ("tftp_session", bytes.fromhex(
        "04000000021000010502feff06000701000102020362ffff6262629efffffc1000010f004007020826262600")),
]


def _targets() -> object:
    spec = importlib.util.spec_from_file_location("smee_fuzz_targets", ROOT / "fuzz" / "targets.py")
    assert spec is not None and spec.loader is not None
    module = sys.modules.get(spec.name)
    if module is None:
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name, data", REPLAYS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(REPLAYS)])
def test_replay_through_the_fuzz_target(name: str, data: bytes) -> None:
    _targets().TARGETS[name].make()(data)  # type: ignore[attr-defined]
