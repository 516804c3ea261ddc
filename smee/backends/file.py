"""The file backend: hardware from YAML/JSON files, reloaded when they change.

An operator (or a ConfigMap) edits files while smee is serving, so the rules are:

* A bad edit must never take machines away. Each file keeps its last good
  parse; a file that stops parsing (or disappears, in single-file mode) keeps
  serving that data and its error is logged and shown in :meth:`state`.
* In directory mode, removing a file *is* how an operator deletes machines,
  so its records are dropped.
* Change detection is cheap enough to run often: one ``stat`` per file,
  comparing inode, mtime, size, mode and owner of the symlink *target*,
  which also catches ConfigMap ``..data`` symlink swaps and atomic renames.
  Mode and owner are there for permission changes: ``chmod 000`` (and the
  ``chmod`` back) leave content and mtime alone, yet decide whether smee,
  running without root, can read the file at all. (Not ``st_ctime``: setting
  an old mtime with ``utime`` makes ctime new, and the "racily clean" rule
  below would then distrust every signature.)
* A file that was serving records and is now empty (0 bytes) counts as
  broken: that is what an interrupted write leaves. ``{}`` empties it on
  purpose.
* A file that cannot be served is reported once, with file (and line) and
  why, and :meth:`FileBackend.state` says ``degraded`` until it is fixed;
  even an unexpected exception from a parser is confined to its file, so
  one bad file in a directory never stops the others from reloading.
* inotify on the *directory* (a file watch dies with the inode an atomic
  replace throws away) triggers a debounced check; a slow poll covers
  filesystems without inotify (NFS, some overlay setups) and missed events.

The first load happens synchronously; later ones parse and index in a worker
thread (see :meth:`FileBackend._compute`). Lookups never see a
half-built index because the new index is swapped in with one assignment.
"""

from __future__ import annotations

import gc
import os
import stat as stat_mod
import time
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.interfaces import (
    IDelayedCall,
    IReactorFDSet,
    IReactorThreads,
    IReactorTime,
)
from twisted.internet.task import LoopingCall
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
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

#: A hardware file bigger than this is refused without being read: an ISO or
#: a disk image copied into the directory by mistake must not be loaded into
#: memory (100,000 records take about 40 MiB).
MAX_FILE_SIZE = 256 * 1024 * 1024

#: (st_ino, st_mtime_ns, st_size, st_mode, st_uid, st_gid)
_Signature = tuple[int, int, int, int, int, int]

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


@dataclass(slots=True)
class _Pass:
    """One check's work, done on copies so that it can run in a worker thread.

    Nothing here is visible to lookups until :meth:`FileBackend._commit`
    installs it on the reactor thread; log lines are collected rather than
    emitted so that observers only ever run on the reactor thread.
    """

    files: dict[str, _FileState]
    dir_error: HardwareFileError | None
    is_dir: bool
    #: the new index, if served data changed.
    index: HardwareIndex | None = None
    logs: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    failure: Failure | None = None

    def log(self, level: str, fmt: str, **kw: Any) -> None:
        self.logs.append((level, fmt, kw))


def _set_error(p: _Pass, path: str, state: _FileState, error: HardwareFileError | None) -> None:
    """Record a file's error, logging only transitions so a poll does not repeat them."""
    old = state.error
    state.error = error
    if error is not None and (old is None or str(old) != str(error)):
        kept = len(state.result.hardware) if state.result else 0
        p.log(
            "error",
            "{error} (keeping {kept} records from the last good version)",
            error=str(error),
            file=path,
            kept=kept,
        )
    elif error is None and old is not None:
        p.log("info", "{file} is readable again", file=path)


class FileBackend(Service):
    """Serve :class:`~smee.hardware.Hardware` from a file or a directory of files.

    ``path`` names one file, or a directory whose ``*.yaml``, ``*.yml`` and
    ``*.json`` entries (non-recursive, sorted) are all read. Call
    :meth:`load` before serving (``startService`` does if nobody has) so a
    start-up with no usable data fails with the file and line at fault.
    ``poll_interval <= 0`` disables the poll.

    ``parse_in_thread`` (default: whether ``reactor`` provides
    :class:`~twisted.internet.interfaces.IReactorThreads`) runs every load
    after the first in the reactor's thread pool: lookups keep answering from
    the old index until the new one is swapped in on the reactor thread.
    ``False`` parses synchronously on the reactor thread (tests with a Clock,
    and the before/after benchmark).
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
        parse_in_thread: bool | None = None,
        max_file_size: int = MAX_FILE_SIZE,
    ) -> None:
        threads = IReactorThreads.providedBy(reactor)
        if parse_in_thread is None:
            parse_in_thread = threads
        elif parse_in_thread and not threads:
            raise ValueError("parse_in_thread needs a reactor with a thread pool (IReactorThreads)")
        self._parse_in_thread = parse_in_thread
        self._max_file_size = max_file_size
        #: the running background pass, if any; its end starts a queued one.
        self._busy: defer.Deferred[None] | None = None
        self._again = False
        self._again_force = False
        self._again_waiters: list[defer.Deferred[None]] = []
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
        try:
            return defer.succeed(self.by_mac_now(mac))
        except LookupFailed as e:
            return defer.fail(e)

    def by_mac_now(self, mac: str) -> Match | None:
        """:meth:`by_mac` without the Deferred: the index is in memory, so the answer is ready.

        Raises :class:`LookupFailed` (garbage MAC) or AmbiguousHardware (a
        LookupFailed) where by_mac fails its Deferred; the DHCP hot path
        calls this and builds no Deferred.
        """
        index = self._index
        # Callers normally pass the normalised form: one dict probe, no regex.
        found = index.by_mac(mac) if isinstance(mac, str) else None
        if found is None:
            try:
                key = normalize_mac(mac)
            except HardwareError as e:
                raise LookupFailed(str(e)) from None
            if key != mac:
                found = index.by_mac(key)
        return found

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
        """A JSON-able summary for /healthcheck.

        ``ready``: data has been loaded and lookups answer. ``degraded``: some
        file (or the directory) is not being served as it is now -- broken,
        unreadable or gone -- and its last good version is answering instead;
        ``errors`` says which and why.
        """
        errors = self.errors()
        return {
            "backend": "file",
            "path": self.path,
            "ready": self._loaded,
            "degraded": bool(errors),
            "records": len(self._index),
            "last_load": self._last_load,
            "errors": errors,
            "duplicates": len(self._index.duplicates()),
        }

    def errors(self) -> list[str]:
        """``path:line: message`` for the directory and every file not currently served."""
        out = [str(self._dir_error)] if self._dir_error else []
        out += [str(f.error) for _, f in sorted(self._files.items()) if f.error is not None]
        return out

    # --- loading -------------------------------------------------------
    #
    # A pass (_compute) works on copies of the per-file states, collects its
    # log lines instead of emitting them, and builds the new index; it touches
    # nothing that lookups or state() read. _commit then installs the result on
    # the reactor thread with a few assignments. The first load runs both
    # synchronously; later ones run _compute in a worker thread when the
    # reactor has one (parse_in_thread), so a big file does not stall
    # DHCP/TFTP/HTTP for the seconds it takes to parse.

    def load(self) -> None:
        """Read every file now, synchronously.

        Raises :class:`HardwareFileError` if this is the first load and no
        file yields data (missing path, every file broken). Later loads never
        raise: the last good data stays.
        """
        self._refresh(force=True)

    def reload(self) -> defer.Deferred[None]:
        """Re-read every file now, whatever the signatures say (SIGHUP).

        The returned Deferred fires (never with a failure) once the new data
        is served; with ``parse_in_thread`` that is after the background parse.
        """
        return self._guarded(force=True)

    def _check(self) -> defer.Deferred[None]:
        """Re-read what changed since the last look (poll and inotify)."""
        return self._guarded(force=False)

    def _guarded(self, force: bool) -> defer.Deferred[None]:
        # Runs from timers: an exception here would stop the LoopingCall.
        if self._busy is not None:
            # Never two passes at once: one more check after the running one
            # covers every change that arrived meanwhile.
            self._again = True
            self._again_force = self._again_force or force
            d: defer.Deferred[None] = defer.Deferred()
            self._again_waiters.append(d)
            return d
        if self.running and self._notifier is None and self._want_inotify():
            # The watched directory may be back; watch before reading so
            # that no change falls between the read and the watch.
            self._start_inotify(quiet=True)
        if not (self._parse_in_thread and self._loaded):
            # Until something is served (and with a Clock), read synchronously.
            try:
                self._refresh(force)
            except HardwareFileError:
                pass  # first load still failing; already logged per file
            except Exception:
                self.log.failure("checking hardware in {path} failed", path=self.path)
            return defer.succeed(None)
        return self._start_threaded(force)

    def _start_threaded(self, force: bool) -> defer.Deferred[None]:
        from twisted.internet.threads import deferToThreadPool

        snapshot = (dict(self._files), self._dir_error, bool(self._is_dir))
        busy: defer.Deferred[None] = deferToThreadPool(
            self._reactor, self._reactor.getThreadPool(), self._compute_safely, force, *snapshot
        )
        self._busy = busy
        busy.addBoth(self._threaded_done)
        done: defer.Deferred[None] = defer.Deferred()
        busy.addBoth(lambda _: done.callback(None))
        return done

    def _compute_safely(self, force: bool, *snapshot: Any) -> _Pass:
        # In the worker: turn any exception into data so that the log lines
        # collected before it are still emitted, in order, on the reactor.
        p = _Pass(*snapshot)
        try:
            self._compute(p, force)
        except Exception:
            p.failure = Failure()
        return p

    def _threaded_done(self, p: _Pass | Failure) -> None:
        # Back on the reactor thread; whatever happened, the next pass may start.
        self._busy = None
        try:
            if isinstance(p, Failure):  # not even a _Pass came back
                self.log.failure("checking hardware in {path} failed", p, path=self.path)
            else:
                self._flush(p)
                if p.failure is not None:
                    self.log.failure("checking hardware in {path} failed", p.failure, path=self.path)
                else:
                    self._commit(p)
        except Exception:
            self.log.failure("checking hardware in {path} failed", path=self.path)
        waiters, self._again_waiters = self._again_waiters, []
        if self._again:
            force, self._again, self._again_force = self._again_force, False, False
            d = self._guarded(force) if self.running else defer.succeed(None)
            for w in waiters:
                d.addBoth(lambda _, w=w: w.callback(None))
        else:
            for w in waiters:
                w.callback(None)

    def _refresh(self, force: bool) -> None:
        """One synchronous pass (first load, and every check without a thread)."""
        if not self._loaded:
            # Until data has been served, follow what the path is now (the
            # operator may create the directory after a failed start).
            is_dir = os.path.isdir(self.path)
            if is_dir != self._is_dir:
                self._files.clear()
                self._dir_error = None
            self._is_dir = is_dir
        p = _Pass(dict(self._files), self._dir_error, bool(self._is_dir))
        try:
            self._compute(p, force, first=not self._loaded)
        finally:
            self._flush(p)
        if not self._loaded:
            if not any(f.result is not None for f in p.files.values()):
                first = p.dir_error or next(
                    (f.error for _, f in sorted(p.files.items()) if f.error is not None), None
                )
                if first is not None:
                    p.index = None  # nothing to serve yet
                    self._commit(p)  # keep signatures and errors (state() shows them)
                    raise first
                self.log.warn("no hardware files in {path}", path=self.path)
            self._loaded = True
        self._commit(p)

    def _compute(self, p: _Pass, force: bool, first: bool = False) -> None:
        """Scan, parse and index into ``p``; thread-safe (reads no mutable state of self).

        The cyclic GC stays paused for the whole pass (parse *and* index):
        the millions of acyclic objects a big file creates would otherwise
        trigger collections throughout. The collections after the pass can
        still hold the GIL for 0.1-0.3 s with 100,000 records; ``gc.freeze``
        would avoid that but is process-wide (cyclic garbage of anything
        alive at that moment would never be collected), so it is not used.
        """
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            changed = self._scan(p, force)
            if changed or first:
                p.index = self._build(p.files)
        finally:
            if was_enabled:
                gc.enable()

    def _commit(self, p: _Pass) -> None:
        """Install a pass: a handful of assignments on the reactor thread."""
        self._files = p.files
        self._set_dir_error(p.dir_error)
        if p.index is not None:
            previous = len(self._index)
            self._index = p.index
            self._last_load = self._reactor.seconds()
            self.log.info(
                "reloaded hardware from {path}: {records} records (was {previous})",
                path=self.path,
                records=len(self._index),
                previous=previous,
            )
            for report in self._index.duplicates():
                self.log.warn("duplicate hardware, lookups for it fail: {report}", report=report)

    def _flush(self, p: _Pass) -> None:
        """Emit the log lines a pass collected, on the reactor thread."""
        logs, p.logs = p.logs, []
        for level, fmt, kw in logs:
            if level == "failure":  # a traceback, at error: one file's problem, not smee's
                self.log.failure(fmt, level=LogLevel.error, **kw)
            else:
                getattr(self.log, level)(fmt, **kw)

    @staticmethod
    def _build(files: dict[str, _FileState]) -> HardwareIndex:
        return HardwareIndex(
            hw
            for _, f in sorted(files.items())
            if f.result is not None
            for hw in f.result.hardware
        )

    def _scan(self, p: _Pass, force: bool) -> bool:
        """Bring the per-file states in ``p`` up to date; True if served data changed."""
        paths = self._list(p)
        if paths is None:
            return False  # directory unreadable: keep everything
        changed = False
        listed = set(paths)
        for gone in [path for path in p.files if path not in listed]:
            state = p.files.pop(gone)
            records = len(state.result.hardware) if state.result else 0
            changed = changed or records > 0
            p.log("info", "{file} removed: dropped {records} records", file=gone, records=records)
        for path in paths:
            old = p.files.get(path)
            # A copy: the served state must not change before the commit.
            state = p.files[path] = replace(old) if old is not None else _FileState()
            changed = self._read(p, path, state, force) or changed
        return changed

    def _list(self, p: _Pass) -> list[str] | None:
        if not p.is_dir:
            return [self.path]
        try:
            with os.scandir(self.path) as it:
                paths = sorted(
                    e.path for e in it if wanted(e.name) and (e.is_file() or e.is_symlink())
                )
        except OSError as e:
            p.dir_error = HardwareFileError(self.path, None, e.strerror or str(e))
            return None
        p.dir_error = None
        return paths

    def _read(self, p: _Pass, path: str, state: _FileState, force: bool) -> bool:
        """Re-read one file if it changed; True if its served records changed."""
        try:
            st = os.stat(path)  # follows symlinks: ConfigMap swaps change the target
        except OSError as e:
            state.signature = None
            _set_error(p, path, state, HardwareFileError(path, None, e.strerror or str(e)))
            return False
        signature = (st.st_ino, st.st_mtime_ns, st.st_size, st.st_mode, st.st_uid, st.st_gid)
        if not force and signature == state.signature:
            return False
        trusted = None if time.time_ns() - st.st_mtime_ns < _RACY_NS else signature
        if not stat_mod.S_ISREG(st.st_mode):
            state.signature = trusted
            _set_error(p, path, state, HardwareFileError(path, None, "not a regular file"))
            return False
        if st.st_size > self._max_file_size:
            state.signature = trusted
            _set_error(p, path, state, HardwareFileError(
                path, None, f"{st.st_size} bytes is more than the {self._max_file_size}-byte limit"
                " for a hardware file; not read"))
            return False
        try:
            result = load_file(path)
        except HardwareFileError as e:
            # Same bytes and permissions fail the same way: no need to retry
            # until the signature (content, mode, owner) changes.
            state.signature = trusted
            _set_error(p, path, state, e)
            return False
        except Exception as e:  # noqa: BLE001 - a parser bug must not take other files down
            # Not retried until the file changes either. The error line is what
            # the operator acts on; the traceback is for the bug report.
            p.log("failure", "parsing {file} raised an unexpected exception (a bug in smee)",
                  failure=Failure(), file=path)
            state.signature = trusted
            _set_error(p, path, state, HardwareFileError(
                path, None, f"cannot be parsed ({type(e).__name__}: {str(e)[:200]})"))
            return False
        state.signature = trusted
        if st.st_size == 0 and not result.hardware and state.result is not None and state.result.hardware:
            # Zero bytes is what a write cut short leaves (O_TRUNC, then a full
            # disk or a crash), not how anyone deletes machines.
            _set_error(p, path, state, HardwareFileError(
                path, None, "is empty (0 bytes: a write cut short?); to remove every machine in it,"
                " delete it (directory mode) or write {}"))
            return False
        _set_error(p, path, state, None)
        if result == state.result:
            return False  # touched or re-read, same content
        for warning in result.warnings:
            p.log("warn", "{warning}", file=path, warning=warning)  # already "path:line: ..."
        state.result = result
        return True

    def _set_dir_error(self, error: HardwareFileError | None) -> None:
        old, self._dir_error = self._dir_error, error
        if error is not None and (old is None or str(old) != str(error)):
            self.log.error("{error} (keeping all records)", error=str(error), file=self.path)
        elif error is None and old is not None:
            self.log.info("{file} is readable again", file=self.path)

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
        Service.stopService(self)
        if self._busy is None:
            return None
        # A parse cannot be interrupted: let it finish (it will be committed,
        # harmlessly) so that nothing of ours runs after the stop completes.
        d: defer.Deferred[None] = defer.Deferred()
        self._again_waiters.append(d)
        return d

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
