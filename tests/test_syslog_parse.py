"""The syslog parser (smee.syslog.parse): Smee's rules (study §7.3) on RFC 3164, RFC 5424, iPXE and garbage."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from smee.syslog.parse import (
    FACILITIES,
    MAX_DATAGRAM,
    SEVERITIES,
    Message,
    SyslogParseError,
    parse,
)


def p(data: bytes) -> Message:
    return parse(data, year=2024)


# --- PRI ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data, facility, severity",
    [
        (b"<0>x: m", 0, 0),
        (b"<6>x: m", 0, 6),
        (b"<30>x: m", 3, 6),
        (b"<191>x: m", 23, 7),
        (b"<007>x: m", 0, 7),  # leading zeros: still ≤ 3 digits
    ],
)
def test_priority(data: bytes, facility: int, severity: int) -> None:
    m = p(data)
    assert (m.facility, m.severity, m.priority) == (facility, severity, facility * 8 + severity)


def test_facility_and_severity_names() -> None:
    m = p(b"<165>x: m")  # local4.notice
    assert (m.facility_name, m.severity_name) == ("local4", "NOTICE")
    assert len(FACILITIES) == 24 and SEVERITIES[3] == "ERR" and SEVERITIES[4] == "WARNING"


@pytest.mark.parametrize(
    "data, why",
    [
        (b"", "empty"),
        (b"hello world", "no <PRI>"),
        (b"<>x", "digits"),
        (b"<1a>x", "digits"),
        (b"<-1>x", "digits"),
        (b"<1234>x", "not closed"),
        (b"<192>x", "out of range"),
        (b"<999>x", "out of range"),
        (b"<6", "not closed"),
        (b"\x00\x01\x02\xff", "no <PRI>"),
        (b" <6>x: leading space", "no <PRI>"),
    ],
)
def test_malformed_priority(data: bytes, why: str) -> None:
    with pytest.raises(SyslogParseError, match=why):
        parse(data)


def test_priority_alone_is_an_empty_3164_message() -> None:
    m = p(b"<6>")
    assert (m.rfc, m.app_name, m.text) == (3164, None, "")


# --- RFC 3164 -------------------------------------------------------------------


def test_3164_with_timestamp_tag_and_pid() -> None:
    m = p(b"<34>Oct 11 22:14:15 su[230]: 'su root' failed for lonvick on /dev/pts/8")
    assert (m.rfc, m.facility_name, m.severity_name) == (3164, "auth", "CRIT")
    assert m.timestamp == datetime(2024, 10, 11, 22, 14, 15)
    assert (m.hostname, m.app_name, m.procid, m.msgid) == (None, "su", "230", None)
    assert m.text == "'su root' failed for lonvick on /dev/pts/8"
    assert m.fields is None and not m.truncated


def test_3164_space_padded_day() -> None:
    m = p(b"<13>Feb  5 07:08:09 cron: ran")
    assert m.timestamp == datetime(2024, 2, 5, 7, 8, 9)
    assert (m.app_name, m.text) == ("cron", "ran")


def test_3164_without_timestamp() -> None:
    m = p(b"<13>tink-worker[1]: action started")
    assert m.timestamp is None
    assert (m.app_name, m.procid, m.text) == ("tink-worker", "1", "action started")


def test_3164_tag_without_pid() -> None:
    m = p(b"<13>my.app/sub_1-x: hi")
    assert (m.app_name, m.procid, m.text) == ("my.app/sub_1-x", None, "hi")


def test_3164_unclosed_pid_keeps_the_bracket() -> None:
    m = p(b"<13>app[12 oops")
    assert (m.app_name, m.procid, m.text) == ("app", None, "[12 oops")


def test_3164_without_tag_loses_first_word_like_smee() -> None:
    # Smee's parseLegacyTag: the tag ends at the first non-tag character.
    m = p(b"<13>hello world")
    assert (m.app_name, m.text) == ("hello", " world")


def test_3164_text_of_tag_characters_only_is_the_message() -> None:
    m = p(b"<13>justoneword")
    assert (m.app_name, m.procid, m.text) == (None, None, "justoneword")


def test_3164_empty_tag_before_colon() -> None:
    m = p(b"<13>: no tag")
    assert (m.app_name, m.text) == (None, "no tag")


def test_3164_not_a_timestamp_is_left_alone() -> None:
    # Bad month, bad day, single-digit day without padding: parsed as tag/text.
    assert p(b"<13>Foo 11 22:14:15 x").timestamp is None
    assert p(b"<13>Feb 30 22:14:15 x").timestamp is None
    m = p(b"<13>Oct 1 22:14:15 app: x")
    assert m.timestamp is None and m.app_name == "Oct"
    # A timestamp with nothing after it (no space at position 15) is not stripped.
    assert p(b"<13>Oct 11 22:14:15").timestamp is None


def test_3164_feb_29_outside_leap_year_rolls_over_like_go() -> None:
    assert parse(b"<13>Feb 29 01:02:03 a: b", year=2023).timestamp == datetime(2023, 3, 1, 1, 2, 3)
    assert parse(b"<13>Feb 29 01:02:03 a: b", year=2024).timestamp == datetime(2024, 2, 29, 1, 2, 3)


def test_3164_default_year_is_this_year() -> None:
    m = parse(b"<13>Oct 11 22:14:15 a: b")
    assert m.timestamp is not None and m.timestamp.year == datetime.now(UTC).year


def test_3164_trims_own_severity_prefix_only() -> None:
    assert p(b"<14>app: INFO: hello").text == "hello"  # 14 = user.INFO
    assert p(b"<11>app: ERR: bad").text == "bad"
    assert p(b"<14>app: ERR: kept").text == "ERR: kept"  # not this message's severity
    assert p(b"<14>app: info: kept").text == "info: kept"  # case matters, as in Smee


def test_3164_trims_datetime_prefix_and_carriage_return() -> None:
    assert p(b"<14>app: 2024-01-02 03:04:05 started").text == "started"
    assert p(b"<14>app: INFO: 2024-01-02 03:04:05 \rstarted").text == "started"
    assert p(b"<14>app: \rprogress").text == "progress"
    assert p(b"<14>app: \r\rtwo").text == "\rtwo"  # only one, as Smee
    assert p(b"<14>app: 2024-01-02 started").text == "2024-01-02 started"


# --- iPXE -----------------------------------------------------------------------


def test_ipxe_console_syslog() -> None:
    # iPXE's syslog console: "<PRI>ipxe: <line>", facility kern, severity INFO by default.
    m = p(b"<6>ipxe: Configuring (net0 52:54:00:12:34:56)...... ok")
    assert (m.rfc, m.facility_name, m.severity_name) == (3164, "kern", "INFO")
    assert (m.app_name, m.procid, m.hostname) == ("ipxe", None, None)
    assert m.text == "Configuring (net0 52:54:00:12:34:56)...... ok"


def test_ipxe_error_severity_and_daemon_facility() -> None:
    m = p(b"<27>ipxe: Could not boot: No such file (http://ipxe.org/2d0c613b)")
    assert (m.facility_name, m.severity_name, m.app_name) == ("daemon", "ERR", "ipxe")


def test_ipxe_with_hostname_set_parses_like_smee() -> None:
    # Newer iPXE prefixes "<hostname>[.<domain>] ": Smee has no 3164 HOSTNAME, so the
    # host name becomes the tag and the rest the text. Parity, not a fix.
    m = p(b"<6>node1.example.org ipxe: hello")
    assert (m.hostname, m.app_name, m.text) == (None, "node1.example.org", " ipxe: hello")


# --- RFC 5424 -------------------------------------------------------------------


def test_5424_full_header() -> None:
    m = p(b"<165>1 2003-10-11T22:14:15.003Z mymachine.example.com evntslog 1234 ID47 - An application event")
    assert (m.rfc, m.facility_name, m.severity_name) == (5424, "local4", "NOTICE")
    assert m.timestamp == datetime(2003, 10, 11, 22, 14, 15, 3000, tzinfo=UTC)
    assert (m.hostname, m.app_name, m.procid, m.msgid) == ("mymachine.example.com", "evntslog", "1234", "ID47")
    assert m.text == "An application event"


def test_5424_nils() -> None:
    m = p(b"<14>1 - - - - - - hello")
    assert (m.timestamp, m.hostname, m.app_name, m.procid, m.msgid) == (None, None, None, None, None)
    assert m.text == "hello"


def test_5424_offset_timestamp() -> None:
    m = p(b"<14>1 2003-08-24T05:14:15.000003-07:00 host app - - - x")
    assert m.timestamp == datetime(2003, 8, 24, 5, 14, 15, 3, tzinfo=timezone(-timedelta(hours=7)))


def test_5424_no_3164_trimming() -> None:
    m = p(b"<14>1 - h a - - - INFO: \rkept")
    assert m.text == "INFO: \rkept"


def test_5424_empty_message_after_nil_structured_data() -> None:
    assert p(b"<14>1 - h a - - -").text == ""
    assert p(b"<14>1 - h a - - - ").text == ""


@pytest.mark.parametrize(
    "data, why",
    [
        (b'<165>1 2003-10-11T22:14:15.003Z host app - ID47 [exampleSDID@32473 iut="3"] msg', "structured data"),
        (b"<14>1 - h a - - [x] y", "structured data"),
        (b"<14>1 - h a - - -x", "structured data"),
        (b"<14>1 - h a - -", "header"),
        (b"<14>1 ", "header"),
        (b"<14>1 2003-10-11 h a - - - x", "timestamp"),
        (b"<14>1 2003-13-11T22:14:15Z h a - - - x", "timestamp"),
        (b"<14>1 2003-10-11T22:14:15 h a - - - x", "timestamp"),  # no zone
        (b"<14>1 2003-10-11T22:14:15.1234567890123Z h a - - - x", "timestamp"),  # longer than Go's layout
        (b"<14>1 2003-10-11T22:14:15+25:00 h a - - - x", "offset"),
    ],
)
def test_5424_malformed(data: bytes, why: str) -> None:
    with pytest.raises(SyslogParseError, match=why):
        parse(data)


def test_version_other_than_1_is_3164() -> None:
    m = p(b"<14>2 - h a - - - x")
    assert m.rfc == 3164
    m = p(b"<14>1x")
    assert m.rfc == 3164 and m.text == "1x"


# --- JSON, bounds, encoding -------------------------------------------------------


def test_json_message_gives_fields() -> None:
    m = p(b'<14>tink-worker: {"level":"info","msg":"action complete","action":"stream-image"}')
    assert m.fields == {"level": "info", "msg": "action complete", "action": "stream-image"}
    assert m.text.startswith("{")
    assert p(b'<14>1 - h a - - - {"a": 1}').fields == {"a": 1}


def test_invalid_or_non_object_json_is_text() -> None:
    assert p(b"<14>app: {not json").fields is None
    assert p(b'<14>app: ["x"]').fields is None
    assert p(b'<14>app: x {"a": 1}').fields is None


def test_long_datagram_is_truncated() -> None:
    data = b"<14>app: " + b"x" * (MAX_DATAGRAM * 2)
    m = p(data)
    assert m.truncated and len(m.text) == MAX_DATAGRAM - len(b"<14>app: ")
    exact = b"<14>app: " + b"x" * (MAX_DATAGRAM - 9)
    assert not p(exact).truncated


def test_non_utf8_is_replaced() -> None:
    m = p(b"<14>app: caf\xe9 \xff ok")
    assert m.text == "caf\ufffd \ufffd ok"


def test_utf8_text() -> None:
    assert p("<14>app: déjà vu ✓".encode()).text == "déjà vu ✓"


@given(st.binary(max_size=300))
def test_any_bytes_parse_or_raise_parse_error(data: bytes) -> None:
    try:
        m = parse(data, year=2024)
    except SyslogParseError:
        return
    assert 0 <= m.facility <= 23 and 0 <= m.severity <= 7 and isinstance(m.text, str)


@given(st.integers(0, 191), st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=100))
def test_any_priority_and_text_round_trip_through_5424(pri: int, text: str) -> None:
    m = parse(f"<{pri}>1 - host app 1 id - {text}".encode())
    assert (m.priority, m.hostname, m.app_name, m.procid, m.msgid, m.text) == (pri, "host", "app", "1", "id", text)
