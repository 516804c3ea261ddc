"""Reading YAML and JSON documents fast, and finding the line of a field when something is wrong."""

from __future__ import annotations

import json
import re
from typing import Any, Iterator, NamedTuple

import yaml
from yaml.composer import ComposerError
from yaml.constructor import ConstructorError
from yaml.events import (
    AliasEvent,
    DocumentStartEvent,
    MappingEndEvent,
    MappingStartEvent,
    ScalarEvent,
    SequenceEndEvent,
    SequenceStartEvent,
    StreamEndEvent,
)
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode


class HardwareFileError(Exception):
    """A hardware file cannot be used; ``str()`` is ``path:line: message``."""

    def __init__(self, path: str, line: int | None, message: str) -> None:
        self.path = path
        self.line = line
        self.message = message
        super().__init__(
            f"{path}:{line}: {message}" if line is not None else f"{path}: {message}"
        )

    def __str__(self) -> str:
        return str(self.args[0])

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.path, self.line, self.message))


# ------------------------------------------------------------- reading documents

Path = tuple[str | int, ...]


class _Doc(NamedTuple):
    """One parsed document and the lines of its top levels (record positions)."""

    data: Any
    line: int  # where the document's root starts
    key_lines: dict[str, int]  # root map: key -> line (Smee records are keyed by MAC)
    item_lines: list[int]  # root sequence, or the root map's ``items`` sequence


class _Int(int):
    """A YAML integer that remembers how it was written.

    YAML 1.1 reads ``52:54:00:12:34:56`` as a base-60 integer and
    ``001122334455`` as octal; keeping the text lets those still be MACs,
    VLAN ``0100`` be 100 and an unquoted ``version: 20.10`` stay ``20.10``.
    """

    text: str


class _Float(float):
    """A YAML float that remembers how it was written (see :class:`_Int`)."""

    text: str


_YAML_BASE: type = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_TAG = "tag:yaml.org,2002:"
_MAP_TAGS = (None, "!", _TAG + "map")
_SEQ_TAGS = (None, "!", _TAG + "seq")
_NO_KEY = object()  # a mapping frame waiting for its next key
_MERGE = object()  # the ``<<`` merge key


def _node_line(node: Node) -> int:
    return node.start_mark.line + 1


class _Frame:
    """An open mapping or sequence while building a document from events."""

    __slots__ = ("container", "line", "key", "merges")

    def __init__(self, container: dict[str, Any] | list[Any], line: int) -> None:
        self.container = container
        self.line = line
        self.key: Any = _NO_KEY
        self.merges: list[Any] | None = None


def _read_yaml(text: str, path: str) -> list[_Doc]:
    loader = None
    try:
        loader = _YAML_BASE(text)  # the pure-Python reader checks characters here
        return _build_documents(loader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        problem = ": ".join(str(p) for p in (e.context, e.problem) if p)
        raise HardwareFileError(
            path, mark.line + 1 if mark else None, f"invalid YAML: {problem}"
        ) from None
    except yaml.YAMLError as e:  # reader errors: bad bytes, no mark
        position = getattr(e, "position", None)
        line = text.count("\n", 0, position) + 1 if position is not None else None
        raise HardwareFileError(
            path, line, f"invalid YAML: {getattr(e, 'reason', None) or e}"
        ) from None
    finally:
        if loader is not None:
            loader.dispose()


def _build_documents(loader: Any) -> list[_Doc]:
    """Build documents straight from libyaml's events, noting top-level lines.

    This is PyYAML's safe loading minus the node tree, about twice as fast as
    ``yaml.load``. Differences, all on purpose: mapping keys stay text as
    written (they are names or MACs, never numbers); a duplicate key is an
    error (go-yaml agrees; PyYAML would silently keep the last machine);
    numbers keep their text (:class:`_Int`); timestamps stay strings; and
    exotic tags (``!!set``, ``!!omap``, application tags) are refused.
    """
    resolvers = loader.yaml_implicit_resolvers
    bool_values = loader.bool_values
    docs: list[_Doc] = []
    stack: list[_Frame] = []
    anchors: dict[str, Any] = {}
    key_lines: dict[str, int] = {}
    item_lines: list[int] = []
    get_event = loader.get_event
    while True:
        event = get_event()
        kind = type(event)
        if kind is ScalarEvent or kind is AliasEvent:
            frame = stack[-1] if stack else None
            if (
                frame is not None
                and frame.key is _NO_KEY
                and type(frame.container) is dict
            ):
                _take_key(frame, event, key_lines if len(stack) == 1 else None)
                continue
            line = event.start_mark.line + 1
            if kind is AliasEvent:
                if event.anchor not in anchors:
                    raise ComposerError(
                        None,
                        None,
                        f"found undefined alias {event.anchor!r}",
                        event.start_mark,
                    )
                value = anchors[event.anchor]
            else:
                value = _scalar(loader, event, resolvers, bool_values)
                if event.anchor:
                    anchors[event.anchor] = value
        elif kind is MappingStartEvent or kind is SequenceStartEvent:
            if event.tag not in (_MAP_TAGS if kind is MappingStartEvent else _SEQ_TAGS):
                raise ConstructorError(
                    None, None, f"unsupported tag {event.tag!r}", event.start_mark
                )
            container: Any = {} if kind is MappingStartEvent else []
            if event.anchor:
                anchors[event.anchor] = container
            stack.append(_Frame(container, event.start_mark.line + 1))
            continue
        elif kind is MappingEndEvent or kind is SequenceEndEvent:
            done = stack.pop()
            if done.merges:
                _merge(done, event)
            value, line = done.container, done.line
        elif kind is DocumentStartEvent:
            anchors, key_lines, item_lines = {}, {}, []
            continue
        elif kind is StreamEndEvent:
            return docs
        else:
            continue
        if not stack:
            docs.append(_Doc(value, line, key_lines, item_lines))
            continue
        frame = stack[-1]
        if type(frame.container) is list:
            frame.container.append(value)
            depth = len(stack)
            if depth == 1 or (depth == 2 and stack[0].key == "items"):
                item_lines.append(line)
        elif frame.key is _NO_KEY:
            raise ConstructorError(
                None, None, "mapping keys must be plain text", event.start_mark
            )
        else:
            if frame.key is _MERGE:
                frame.merges = (frame.merges or []) + [value]
            else:
                frame.container[frame.key] = value  # type: ignore[call-overload]
            frame.key = _NO_KEY


def _take_key(frame: _Frame, event: Any, key_lines: dict[str, int] | None) -> None:
    """A scalar in key position: kept as written; ``<<`` is a merge."""
    if type(event) is AliasEvent:
        raise ConstructorError(
            None, None, "mapping keys must be plain text, not aliases", event.start_mark
        )
    key = event.value
    if key == "<<" and event.tag is None and event.implicit[0]:
        frame.key = _MERGE
        return
    if key in frame.container:  # type: ignore[operator]
        raise ConstructorError(
            "while constructing a mapping",
            None,
            f"found duplicate key {key!r}",
            event.start_mark,
        )
    frame.key = key
    if key_lines is not None:
        key_lines[key] = event.start_mark.line + 1


def _merge(frame: _Frame, event: Any) -> None:
    """Apply ``<<: *a`` / ``<<: [*a, *b]`` like PyYAML: own keys win, then earlier sources."""
    sources: list[Any] = []
    for value in frame.merges or ():
        sources.extend(reversed(value) if isinstance(value, list) else [value])
    merged: dict[str, Any] = {}
    for source in sources:
        if not isinstance(source, dict):
            raise ConstructorError(
                None,
                None,
                "expected a mapping or list of mappings for merging",
                event.start_mark,
            )
        merged.update(source)
    merged.update(frame.container)  # type: ignore[arg-type]
    frame.container.clear()
    frame.container.update(merged)  # type: ignore[union-attr]


def _scalar(
    loader: Any, event: Any, resolvers: dict[Any, Any], bool_values: dict[str, bool]
) -> Any:
    """A scalar value, resolved with YAML 1.1's implicit rules as PyYAML does."""
    value, tag = event.value, event.tag
    if tag is None and event.implicit[0]:  # plain
        for tag, regexp in resolvers.get(value[:1], ()):
            if regexp.match(value):
                break
        else:
            return value
    elif tag is None or tag == "!":  # quoted
        return value
    if tag == _TAG + "str" or tag == _TAG + "timestamp":
        return value
    if tag == _TAG + "null":
        return None
    node = ScalarNode(tag, value, event.start_mark, event.end_mark, event.style)
    try:
        if tag == _TAG + "bool":
            return bool_values[value.lower()]
        if tag == _TAG + "int":
            result: Any = _Int(loader.construct_yaml_int(node))
        elif tag == _TAG + "float":
            result = _Float(loader.construct_yaml_float(node))
        elif tag == _TAG + "binary":
            return loader.construct_yaml_binary(node)
        else:
            raise ConstructorError(None, None, f"unsupported tag {tag!r}", event.start_mark)
    except (ValueError, KeyError, IndexError) as e:
        # An explicit tag on a value it does not fit (``!!int abc``, ``!!bool maybe``, an empty
        # ``!!float``: PyYAML indexes its first character), or an integer past Python's
        # 4300-digit conversion limit: the file's error, with its line.
        what = value if len(value) <= 40 else value[:37] + "..."
        if isinstance(e, ValueError):
            reason = str(e).split(";")[0]
        else:
            reason = "empty" if not value.strip("_") else f"not a {tag.removeprefix(_TAG)}"
        raise ConstructorError(
            None, None, f"cannot read {what!r} as {tag.removeprefix(_TAG)}: {reason}", event.start_mark
        ) from None
    result.text = value
    return result


_JSON_WS = re.compile(r"[ \t\n\r]*")


class _LineCounter:
    """Line numbers of non-decreasing offsets, counted incrementally (linear overall)."""

    def __init__(self, text: str) -> None:
        self.text, self.pos, self.line = text, 0, 1

    def __call__(self, pos: int) -> int:
        self.line += self.text.count("\n", self.pos, pos)
        self.pos = pos
        return self.line


def _read_json(text: str, path: str) -> list[_Doc]:
    """One JSON document; the C decoder parses records, we walk the top levels for lines."""
    start = _JSON_WS.match(text).end()  # type: ignore[union-attr]
    if start == len(text):
        return []
    decoder, lines = json.JSONDecoder(), _LineCounter(text)
    try:
        root_line = lines(start)
        data, end, members, nested = _json_level(
            text, start, decoder, lines, nest="items"
        )
        end = _JSON_WS.match(text, end).end()  # type: ignore[union-attr]
        if end != len(text):
            raise json.JSONDecodeError("Extra data", text, end)
    except json.JSONDecodeError as e:
        raise HardwareFileError(
            path, e.lineno, f"invalid JSON: {e.msg} (column {e.colno})"
        ) from None
    except RecursionError:
        # The C decoder recurses per level; the line is that of the member being decoded.
        raise HardwareFileError(path, lines.line, "invalid JSON: nested too deeply") from None
    except ValueError as e:  # an integer past Python's 4300-digit conversion limit
        raise HardwareFileError(path, lines.line, f"invalid JSON: {str(e).split(';')[0]}") from None
    if isinstance(members, dict):
        return [_Doc(data, root_line, members, nested)]
    return [_Doc(data, root_line, {}, members)]


def _json_level(
    text: str,
    i: int,
    decoder: json.JSONDecoder,
    lines: _LineCounter,
    nest: str | None = None,
) -> tuple[Any, int, dict[str, int] | list[int], list[int]]:
    """Decode the value at ``text[i]``, noting the line of each member of a container.

    Members are decoded by the C decoder; only the member named ``nest``
    (a List's ``items``) is walked one level further.
    Returns (value, end, member lines, lines of the nested member's entries).
    """
    opener = text[i : i + 1]
    if opener not in ("[", "{"):
        value, end = decoder.raw_decode(text, i)
        return value, end, [], []
    is_object, closer = opener == "{", "]" if opener == "[" else "}"
    result: Any = {} if is_object else []
    member_lines: Any = {} if is_object else []
    nested: list[int] = []
    i = _JSON_WS.match(text, i + 1).end()  # type: ignore[union-attr]
    if text.startswith(closer, i):
        return result, i + 1, member_lines, nested
    while True:
        line, key_at = lines(i), i
        if is_object:
            if not text.startswith('"', i):
                raise json.JSONDecodeError(
                    "Expecting property name enclosed in double quotes", text, i
                )
            key, i = decoder.raw_decode(text, i)
            i = _JSON_WS.match(text, i).end()  # type: ignore[union-attr]
            if not text.startswith(":", i):
                raise json.JSONDecodeError("Expecting ':' delimiter", text, i)
            i = _JSON_WS.match(text, i + 1).end()  # type: ignore[union-attr]
            if (
                key in result
            ):  # the C decoder would keep the last one: a machine silently lost
                raise json.JSONDecodeError(f"Duplicate key {key!r}", text, key_at)
            member_lines[key] = line
            if key == nest and text.startswith("[", i):
                result[key], i, nested, _ = _json_level(text, i, decoder, lines)  # type: ignore[assignment]
            else:
                result[key], i = decoder.raw_decode(text, i)
        else:
            member_lines.append(line)
            value, i = decoder.raw_decode(text, i)
            result.append(value)
        i = _JSON_WS.match(text, i).end()  # type: ignore[union-attr]
        if text.startswith(",", i):
            i = _JSON_WS.match(text, i + 1).end()  # type: ignore[union-attr]
        elif text.startswith(closer, i):
            return result, i + 1, member_lines, nested
        else:
            raise json.JSONDecodeError("Expecting ',' delimiter", text, i)


class _Locator:
    """Line of a key path, found (only when needed) by re-composing the text as YAML.

    JSON is nearly always valid YAML too; when it is not, or the path cannot
    be followed, the line of the enclosing record is used instead.
    """

    def __init__(self, text: str, docs: list[_Doc]) -> None:
        self._docs = docs
        self._nodes: list[Node] = []
        self._composer: Iterator[Node] | None = yaml.compose_all(
            text, Loader=_YAML_BASE
        )

    def _root(self, index: int) -> Node | None:
        try:
            while self._composer is not None and len(self._nodes) <= index:
                self._nodes.append(next(self._composer))
        except (StopIteration, yaml.YAMLError):
            self._composer = None
        return self._nodes[index] if index < len(self._nodes) else None

    def line(self, index: int, path: Path) -> int:
        node = self._root(index)
        if node is None:
            return _record_line(self._docs[index], path)
        line = _node_line(node)
        for step in path:
            if isinstance(node, MappingNode) and isinstance(step, str):
                for k, v in node.value:
                    if isinstance(k, ScalarNode) and k.value == step:
                        node, line = v, _node_line(k)
                        break
                else:
                    break
            elif (
                isinstance(node, SequenceNode)
                and isinstance(step, int)
                and step < len(node.value)
            ):
                node = node.value[step]
                line = _node_line(node)
            else:
                break
        return line


def _record_line(doc: _Doc, path: Path) -> int:
    """Line of the record that ``path`` lies in, from the cheap top-level lines."""
    if path and isinstance(path[0], int) and path[0] < len(doc.item_lines):
        return doc.item_lines[path[0]]
    if (
        path[:1] == ("items",)
        and len(path) > 1
        and isinstance(path[1], int)
        and path[1] < len(doc.item_lines)
    ):
        return doc.item_lines[path[1]]
    if path and isinstance(path[0], str):
        return doc.key_lines.get(path[0], doc.line)
    return doc.line
