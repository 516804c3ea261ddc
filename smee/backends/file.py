"""The file backend: hardware from YAML/JSON files, reloaded when they change.

An operator (or a ConfigMap) edits files while smee is serving, so the rules are:

* A bad edit must never take machines away. Each file keeps its last good
  parse; a file that stops parsing (or disappears, in single-file mode) keeps
  serving that data and its error is logged and shown in :meth:`state`.
* In directory mode, removing a file *is* how an operator deletes machines,
  so its records are dropped.
* Change detection is cheap enough to run often: one ``stat`` per file,
  comparing ``(st_ino, st_mtime_ns, st_size)`` of the symlink *target*, which
  also catches ConfigMap ``..data`` symlink swaps and atomic renames.
* inotify on the *directory* (a file watch dies with the inode an atomic
  replace throws away) triggers a debounced check; a slow poll covers
  filesystems without inotify (NFS, some overlay setups) and missed events.

All reads happen on the reactor thread, synchronously: lookups never see a
half-built index because the new index is swapped in with one assignment.
"""

from __future__ import annotations

import os
import stat as stat_mod
import time
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorFDSet, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.filepath import FilePath

from smee.backends import AmbiguousHardware, LookupFailed
from smee.backends.index import HardwareIndex
from smee.formats import HardwareFileError, ParseResult, load_file
from smee.hardware import HardwareError, Match, normalize_mac

__all__ = ["FileBackend"]

#: Extensions read in directory mode (compared case-insensitively).
EXTENSIONS = (".yaml", ".yml", ".json")

#: A file modified this recently may be rewritten again within the same
#: timestamp tick (Linux file times come from a coarse clock), with the same
#: size: its signature cannot prove "unchanged", so it is re-read at the next
#: check (git's "racily clean" problem).
_RACY_NS = 100_000_000

_Signature = tuple[int, int, int]

# inotify constants, copied so that importing this module does not need
# twisted.internet.inotify (Linux-only ctypes) just to be imported.
_IN_MODIFY, _IN_ATTRIB, _IN_CLOSE_WRITE = 0x2, 0x4, 0x8
_IN_MOVED_FROM, _IN_MOVED_TO, _IN_CREATE, _IN_DELETE = 0x40, 0x80, 0x100, 0x200
_IN_DELETE_SELF, _IN_MOVE_SELF, _IN_IGNORED = 0x400, 0x800, 0x8000
_MASK = (
    _IN_MODIFY | _IN_ATTRIB | _IN_CLOSE_WRITE | _IN_MOVED_FROM | _IN_MOVED_TO
    | _IN_CREATE | _IN_DELETE | _IN_MOVE_SELF | _IN_DELETE_SELF
)
_GONE = _IN_DELETE_SELF | _IN_MOVE_SELF | _IN_IGNORED


def wanted(name: str) -> bool:
    """Whether a directory entry is a hardware file rather than an editor or ConfigMap artifact.

    Hidden names cover vim swap files (``.x.yaml.swp``), emacs locks
    (``.#x.yaml``) and the ConfigMap ``..data``/``..2024_…`` entries;
    ``~`` covers backup copies.
    """
    return not name.startswith(".") and not name.endswith("~") and name.lower().endswith(EXTENSIONS)


@dataclass(slots=True)
class _FileState:
    """What we know about one file."""

    #: stat of the content last read; ``None`` means "read it again next check".
    signature: _Signature | None = None
    #: the last successful parse, served until a newer one succeeds.
    result: ParseResult | None = None
    #: why the current content is not being served, if it is not.
    error: HardwareFileError | None = None


class FileBackend(Service):
    """Serve :class:`~smee.hardware.Hardware` from a file or a directory of files.

    ``path`` names one file, or a directory whose ``*.yaml``, ``*.yml`` and
    ``*.json`` entries (non-recursive, sorted) are all read. Call
    :meth:`load` before serving (``startService`` does if nobody has) so a
    start-up with no usable data fails with the file and line at fault.
    ``poll_interval <= 0`` disables the poll.
    """

    kind = "file"
    log = Logger(namespace="smee.backends.file")

    def __init__(
        self,
        path: str,
        reactor: IReactorTime,
        poll_interval: float = 30.0,
        debounce: float = 0.2,
        use_inotify: bool = True,
    ) -> None:
        self.path = path
        self._reactor = reactor
        self._poll_interval = poll_interval
        self._debounce = debounce
        # A directory that never stops changing must not postpone the check forever.
        self._debounce_cap = max(2.0, 10 * debounce)
        self._use_inotify = use_inotify
        self._is_dir: bool | None = None  # decided by the first successful load, then fixed
        self._files: dict[str, _FileState] = {}
        self._dir_error: HardwareFileError | None = None
        self._index = HardwareIndex()
        self._loaded = False
        self._last_load: float | None = None
        self._poll: LoopingCall | None = None
        self._notifier: Any = None  # twisted.internet.inotify.INotify
        self._pending: IDelayedCall | None = None
        self._burst_start = 0.0

    # --- lookups -------------------------------------------------------

    def by_mac(self, mac: str) -> defer.Deferred[Match | None]:
        """Look up by MAC in any notation; garbage fails with LookupFailed."""
        index = self._index
        try:
            # Callers normally pass the normalised form: one dict probe, no regex.
            found = index.by_mac(mac) if isinstance(mac, str) else None
            if found is None:
                try:
                    key = normalize_mac(mac)
                except HardwareError as e:
                    return defer.fail(LookupFailed(str(e)))
                if key != mac:
                    found = index.by_mac(key)
        except AmbiguousHardware as e:
            return defer.fail(e)
        return defer.succeed(found)

    def by_ip(self, ip: IPv4Address | str) -> defer.Deferred[Match | None]:
        """Look up by the IPv4 address reserved for an interface."""
        if not isinstance(ip, IPv4Address):
            try:
                ip = IPv4Address(str(ip).strip())
            except ValueError:
                return defer.fail(LookupFailed(f"{ip!r} is not an IPv4 address"))
        try:
            return defer.succeed(self._index.by_ip(ip))
        except AmbiguousHardware as e:
            return defer.fail(e)

    def state(self) -> dict[str, Any]:
        """A JSON-able summary for /healthcheck."""
        return {
            "backend": "file",
            "path": self.path,
            "ready": self._loaded,
            "records": len(self._index),
            "last_load": self._last_load,
            "errors": self.errors(),
            "duplicates": len(self._index.duplicates()),
        }

    def errors(self) -> list[str]:
        """``path:line: message`` for the directory and every file not currently served."""
        out = [str(self._dir_error)] if self._dir_error else []
        out += [str(f.error) for _, f in sorted(self._files.items()) if f.error is not None]
        return out

    # --- loading -------------------------------------------------------

    def load(self) -> None:
        """Read every file now.

        Raises :class:`HardwareFileError` if this is the first load and no
        file yields data (missing path, every file broken). Later loads never
        raise: the last good data stays.
        """
        self._refresh(force=True)

    def reload(self) -> None:
        """Re-read every file now, whatever the signatures say (SIGHUP)."""
        self._guarded(force=True)

    def _check(self) -> None:
        """Re-read what changed since the last look (poll and inotify)."""
        self._guarded(force=False)

    def _guarded(self, force: bool) -> None:
        # Runs from timers: an exception here would stop the LoopingCall.
        if self.running and self._notifier is None and self._want_inotify():
            # The watched directory may be back; watch before reading so
            # that no change falls between the read and the watch.
            self._start_inotify(quiet=True)
        try:
            self._refresh(force)
        except HardwareFileError:
            pass  # first load still failing; already logged per file
        except Exception:
            self.log.failure("checking hardware in {path} failed", path=self.path)

    def _refresh(self, force: bool) -> None:
        if not self._loaded:
            # Until data has been served, follow what the path is now (the
            # operator may create the directory after a failed start).
            is_dir = os.path.isdir(self.path)
            if is_dir != self._is_dir:
                self._files.clear()
                self._dir_error = None
            self._is_dir = is_dir
        changed = self._scan(force)
        if not self._loaded:
            if not any(f.result is not None for f in self._files.values()):
                first = self._dir_error or next(
                    (f.error for _, f in sorted(self._files.items()) if f.error is not None), None
                )
                if first is not None:
                    raise first
                self.log.warn("no hardware files in {path}", path=self.path)
            self._loaded = True
            self._rebuild()
        elif changed:
            self._rebuild()

    def _scan(self, force: bool) -> bool:
        """Bring the per-file states up to date; True if served data changed."""
        paths = self._list()
        if paths is None:
            return False  # directory unreadable: keep everything
        changed = False
        listed = set(paths)
        for gone in [p for p in self._files if p not in listed]:
            state = self._files.pop(gone)
            records = len(state.result.hardware) if state.result else 0
            changed = changed or records > 0
            self.log.info("{file} removed: dropped {records} records", file=gone, records=records)
        for path in paths:
            state = self._files.get(path)
            if state is None:
                state = self._files[path] = _FileState()
            changed = self._read(path, state, force) or changed
        return changed

    def _list(self) -> list[str] | None:
        if not self._is_dir:
            return [self.path]
        try:
            with os.scandir(self.path) as it:
                paths = sorted(
                    e.path for e in it if wanted(e.name) and (e.is_file() or e.is_symlink())
                )
        except OSError as e:
            self._set_dir_error(HardwareFileError(self.path, None, e.strerror or str(e)))
            return None
        self._set_dir_error(None)
        return paths

    def _read(self, path: str, state: _FileState, force: bool) -> bool:
        """Re-read one file if it changed; True if its served records changed."""
        try:
            st = os.stat(path)  # follows symlinks: ConfigMap swaps change the target
        except OSError as e:
            state.signature = None
            self._set_error(path, state, HardwareFileError(path, None, e.strerror or str(e)))
            return False
        signature = (st.st_ino, st.st_mtime_ns, st.st_size)
        if not force and signature == state.signature:
            return False
        trusted = None if time.time_ns() - st.st_mtime_ns < _RACY_NS else signature
        if not stat_mod.S_ISREG(st.st_mode):
            state.signature = trusted
            self._set_error(path, state, HardwareFileError(path, None, "not a regular file"))
            return False
        try:
            result = load_file(path)
        except HardwareFileError as e:
            state.signature = trusted  # same bytes fail the same way: no need to retry
            self._set_error(path, state, e)
            return False
        state.signature = trusted
        self._set_error(path, state, None)
        if result == state.result:
            return False  # touched or re-read, same content
        for warning in result.warnings:
            self.log.warn("{warning}", file=path, warning=warning)  # already "path:line: ..."
        state.result = result
        return True

    def _set_error(self, path: str, state: _FileState, error: HardwareFileError | None) -> None:
        """Record a file's error, logging only transitions so a poll does not repeat them."""
        old = state.error
        state.error = error
        if error is not None and (old is None or str(old) != str(error)):
            kept = len(state.result.hardware) if state.result else 0
            self.log.error(
                "{error} (keeping {kept} records from the last good version)",
                error=str(error),
                file=path,
                kept=kept,
            )
        elif error is None and old is not None:
            self.log.info("{file} is readable again", file=path)

    def _set_dir_error(self, error: HardwareFileError | None) -> None:
        old, self._dir_error = self._dir_error, error
        if error is not None and (old is None or str(old) != str(error)):
            self.log.error("{error} (keeping all records)", error=str(error), file=self.path)
        elif error is None and old is not None:
            self.log.info("{file} is readable again", file=self.path)

    def _rebuild(self) -> None:
        previous = len(self._index)
        self._index = HardwareIndex(
            hw
            for _, f in sorted(self._files.items())
            if f.result is not None
            for hw in f.result.hardware
        )
        self._last_load = self._reactor.seconds()
        self.log.info(
            "reloaded hardware from {path}: {records} records (was {previous})",
            path=self.path,
            records=len(self._index),
            previous=previous,
        )
        for report in self._index.duplicates():
            self.log.warn("duplicate hardware, lookups for it fail: {report}", report=report)

    # --- change detection ----------------------------------------------

    def _want_inotify(self) -> bool:
        return self._use_inotify and IReactorFDSet.providedBy(self._reactor)

    def startService(self) -> None:
        if not self._loaded:
            self.load()  # raises before we count as running
        Service.startService(self)
        if self._want_inotify():
            self._start_inotify()
        if self._poll_interval > 0:
            self._poll = LoopingCall(self._check)
            self._poll.clock = self._reactor
            self._poll.start(self._poll_interval, now=False).addErrback(
                lambda f: self.log.failure("hardware poll stopped", f)
            )

    def stopService(self) -> Any:
        if self._poll is not None and self._poll.running:
            self._poll.stop()
        self._poll = None
        if self._notifier is not None:
            self._notifier.loseConnection()
            self._notifier = None
        if self._pending is not None and self._pending.active():
            self._pending.cancel()
        self._pending = None
        return Service.stopService(self)

    def _watch_dir(self) -> str:
        return self.path if self._is_dir else os.path.dirname(os.path.abspath(self.path))

    def _start_inotify(self, quiet: bool = False) -> None:
        """Watch the directory (file watches die with the inode an atomic replace discards)."""
        try:
            from twisted.internet import inotify

            notifier = inotify.INotify(reactor=self._reactor)
        except Exception as e:  # INotifyError off Linux, ImportError, fd limits
            self._use_inotify = False  # do not retry on every poll
            if not quiet:
                self.log.warn(
                    "inotify unavailable ({error}); polling {path} every {interval}s",
                    error=str(e),
                    path=self.path,
                    interval=self._poll_interval,
                )
            return
        try:
            notifier.watch(FilePath(self._watch_dir()), mask=_MASK, callbacks=[self._on_event])
        except Exception as e:  # directory missing for now: the poll retries
            notifier.loseConnection()
            if not quiet:
                self.log.warn(
                    "cannot watch {dir} ({error}); polling every {interval}s",
                    dir=self._watch_dir(),
                    error=str(e),
                    interval=self._poll_interval,
                )
            return
        notifier.startReading()
        self._notifier = notifier

    def _on_event(self, _watch: object, _path: FilePath, mask: int) -> None:
        """Any change in the directory: check soon, once per burst."""
        if mask & _GONE and self._notifier is not None:
            # The watched directory itself went away. Twisted closes the
            # notifier after DELETE_SELF; after MOVE_SELF it would follow the
            # old inode, so close it too. The next check re-creates it.
            notifier, self._notifier = self._notifier, None
            if not mask & _IN_DELETE_SELF:
                notifier.loseConnection()
        now = self._reactor.seconds()
        if self._pending is not None and self._pending.active():
            if now - self._burst_start < self._debounce_cap:
                self._pending.reset(self._debounce)  # coalesce the burst
            return
        self._burst_start = now
        self._pending = self._reactor.callLater(self._debounce, self._debounced)

    def _debounced(self) -> None:
        self._pending = None
        self._check()
