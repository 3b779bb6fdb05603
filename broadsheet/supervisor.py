"""One place that starts, watches and stops every process of a node or a
local cluster, and logs their output in one format.

What heals what: the supervisor restarts a process that exits on its own
(``Service.restart``), and with it every process that uses it
(``Service.depends_on``): those stop first and start again, in order, once
it is ready. A LiteFS crash thus becomes: its dead mount unmounted, LiteFS
started on the same data, then the Datasette or publisher that had the
database open. What the supervisor cannot do, should it die itself, is left
to the kernel (``PR_SET_PDEATHSIG``), to one janitor per mount
(``broadsheet/janitor.py``), to the next supervisor on the same directory
(``Supervisor.claim``), and in a container to its restart policy.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, TextIO

from . import litefs

_PR_SET_PDEATHSIG = 1

# Every process a supervisor starts carries the directory it claimed in its
# environment, so that the next supervisor on that directory can tell a
# crashed predecessor's orphans from anyone else's processes.
SUPERVISOR_ENV = "BROADSHEET_SUPERVISOR"
PID_FILE = "supervisor.pid"


def _die_with(supervisor: int) -> Callable[[], None]:
    def preexec() -> None:
        # A child outlives a supervisor killed with SIGKILL unless the kernel is
        # told to signal it; LiteFS unmounts cleanly on SIGTERM. (The signal
        # follows the thread that forked: see Supervisor._watch.)
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        except OSError:
            pass
        if os.getppid() != supervisor:  # it died before the prctl: nobody would signal us
            os._exit(1)

    return preexec


class StartError(RuntimeError):
    """A process exited or never became ready; the message carries its log tail."""


@dataclass
class Service:
    """A process to supervise.

    ``ready`` is polled until it returns true; ``prepare`` runs (and may wait)
    before the process starts; ``mount`` is a FUSE mount to clean up after it.
    """

    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    ready: Callable[[], bool] | None = None
    prepare: Callable[[], None] | None = None
    mount: Path | None = None
    stop_signal: int = signal.SIGTERM
    ready_timeout: float = 60.0
    # Start it again should it exit on its own (crash, OOM kill, …).
    restart: bool = False
    # The services this one uses for as long as it runs (a mount it keeps
    # databases open on): it starts after them, and whenever one of them is
    # restarted it is stopped before and started again after.
    depends_on: tuple[str, ...] = ()
    # Send SIGINT after this many seconds of a stop: uvicorn (Datasette, the
    # control plane) waits for open streams to end on the first signal and
    # exits at once on a SIGINT after it. None: one signal, then SIGKILL.
    force_after: float | None = None
    # Variables of the supervisor's own environment the process must not
    # inherit (a read node's processes never see a team secret).
    drop_env: tuple[str, ...] = ()


# What a person watching ``broadsheet up`` need not read, line by line: a
# request's access log line, a process's routine start-up and shut-down
# chatter (the supervisor says when each starts and stops), the publisher's
# routine cycles and Datasette's per-request events. Warnings, errors,
# tracebacks and anything unrecognised still reach the terminal, and every
# line stays in the log files.
CHATTER = re.compile(
    r"INFO: "  # uvicorn (Datasette, the control plane): access and start-up lines
    r"|.*\blevel=(INFO|DEBUG)\b"  # LiteFS's structured lines
    r"|LiteFS v\d|waiting for signal or subprocess to exit$|signal received, litefs shutting down$"
    r"|litefs shut down complete$"
    r"|event: \{"  # primary/datasette/events.py: one line per Datasette event (logins, writes)
    r"|publisher: (cycle: |copied |unpublishing )"
)


def is_chatter(line: str) -> bool:
    return CHATTER.match(line) is not None


class Supervisor:
    """``echo`` gets every line the combined log gets, or with ``quiet`` only
    the supervisor's own lines and what is not chatter (``is_chatter``)."""

    def __init__(self, log_dir: Path, echo: TextIO | None = None, quiet: bool = False):
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.echo = echo
        self.quiet = quiet
        self.root: Path | None = None  # the directory this supervisor claimed
        self._claim_fd: int | None = None
        self._procs: dict[str, subprocess.Popen] = {}
        self._services: dict[str, Service] = {}
        self._lock = threading.Lock()
        self._expected_exit: set[str] = set()
        self._started_at: dict[str, float] = {}
        self._retry_at: dict[str, float] = {}  # when an exited service may start again
        self._delay: dict[str, float] = {}  # its backoff
        self._watcher: threading.Thread | None = None
        self._closing = False
        self._stopped = False
        # Held while starting, stopping or healing, so the watcher never
        # restarts a process in the middle of a deliberate stop.
        self._lifecycle = threading.RLock()

    # -- logging ---------------------------------------------------------
    def log(self, name: str, message: str, chatter: bool = False) -> None:
        line = f"{time.strftime('%H:%M:%S')} {name:<22} | {message}\n"
        with self._lock:
            with open(self.log_dir / "broadsheet.log", "a") as fp:
                fp.write(line)
            if self.echo is not None and not (chatter and self.quiet):
                self.echo.write(line)
                self.echo.flush()

    def _pump(self, name: str, stream) -> None:
        with open(self.log_dir / f"{name}.log", "a") as fp:
            for raw in iter(stream.readline, b""):
                text = raw.decode("utf-8", "replace").rstrip("\n")
                fp.write(text + "\n")
                fp.flush()
                self.log(name, text, chatter=is_chatter(text))

    def log_tail(self, name: str, lines: int = 30) -> str:
        try:
            return "".join((self.log_dir / f"{name}.log").read_text().splitlines(True)[-lines:])
        except FileNotFoundError:
            return ""

    # -- the directory it runs in ----------------------------------------
    def claim(self, root: Path) -> None:
        """Make ``root`` (a node's or a local cluster's directory) this
        supervisor's alone, and clear what a crashed predecessor left there.

        The supervisor holds a lock on ``root/supervisor.pid`` for as long as
        it lives, and the kernel drops it however the process ends. While a
        live supervisor holds it, StartError names that process. Otherwise
        any predecessor is gone, and so must be what it left: the processes
        it started (their environment names ``root``: LiteFS, Datasette, the
        janitors, which would otherwise unmount the new mounts) are killed,
        and every mount under ``root`` is unmounted. Claiming a directory
        inside the one already claimed does nothing.
        """
        root = Path(root).resolve()
        if self.root is not None:
            if root == self.root or self.root in root.parents:
                return
            raise StartError(f"this supervisor runs {self.root}, not {root}")
        root.mkdir(parents=True, exist_ok=True)
        fd = os.open(root / PID_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise StartError(
                f"{root} is in use by a running broadsheet (pid {holder}); stop it first"
                f" (kill -TERM {holder}, or broadsheet down for a local cluster)"
            ) from None
        predecessor = os.pread(fd, 32, 0).decode(errors="replace").strip()
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.root, self._claim_fd = root, fd
        orphans, mounts = processes_of(root), _mounts_under(root)
        if orphans or mounts:
            self.log(
                "supervisor",
                f"clearing what a crashed supervisor (pid {predecessor or 'unknown'}) left in {root}:"
                f" {len(orphans)} processes {orphans}, {len(mounts)} mounts",
            )
            _kill(orphans)
            for mount in sorted(mounts, reverse=True):
                # Its FUSE connection first: a process inside a request to
                # the dead LiteFS is let go (and can die) only then.
                litefs.abort_connection(mount)
                litefs.unmount(mount)
            # A process that was inside a request to a dead LiteFS dies once
            # its connection is aborted: wait for it too.
            _kill([pid for pid in orphans if _exists(pid)])
            stuck = [str(pid) for pid in orphans if _exists(pid)] + [m for m in mounts if litefs.is_mounted(m)]
            if stuck:
                raise StartError(f"cannot clear {root}: still there after SIGKILL and unmount: {', '.join(stuck)}")

    def _release(self) -> None:
        if self._claim_fd is not None:
            os.close(self._claim_fd)
            self.root = self._claim_fd = None

    def _marked(self, env: dict[str, str]) -> dict[str, str]:
        return {**env, SUPERVISOR_ENV: str(self.root)} if self.root is not None else env

    # -- lifecycle -------------------------------------------------------
    def start(self, service: Service) -> None:
        with self._lifecycle:
            self._start(service)

    def _start(self, service: Service) -> None:
        if self.running(service.name):
            raise StartError(f"{service.name} is already running")
        self._services[service.name] = service
        if service.mount is not None:
            litefs.unmount(service.mount)  # left over from a crash
            service.mount.mkdir(parents=True, exist_ok=True)
        if service.prepare is not None:
            service.prepare()
        inherited = {k: v for k, v in os.environ.items() if k not in service.drop_env}
        env = self._marked({**inherited, **service.env, "PYTHONUNBUFFERED": "1"})
        proc = subprocess.Popen(
            service.argv,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with(os.getpid()),
        )
        self._procs[service.name] = proc
        self._started_at[service.name] = time.monotonic()
        self._retry_at.pop(service.name, None)
        self._expected_exit.discard(service.name)
        if service.mount is not None:
            subprocess.Popen(
                [sys.executable, "-m", "broadsheet.janitor", str(os.getpid()), str(proc.pid), str(service.mount)],
                env=self._marked(dict(os.environ)),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        threading.Thread(target=self._pump, args=(service.name, proc.stdout), daemon=True).start()
        self.log("supervisor", f"started {service.name} (pid {proc.pid})")
        if service.ready is not None:
            self._wait_ready(service, proc)

    def _wait_ready(self, service: Service, proc: subprocess.Popen) -> None:
        deadline = time.monotonic() + service.ready_timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise StartError(
                    f"{service.name} exited with {proc.returncode} before it was ready:\n"
                    + self.log_tail(service.name)
                )
            if self._closing:
                raise StartError(f"{service.name}: stopping before it was ready")
            try:
                if service.ready():
                    return
            except Exception:
                pass
            time.sleep(0.05)
        raise StartError(
            f"{service.name} not ready after {service.ready_timeout:.0f}s:\n" + self.log_tail(service.name)
        )

    def running(self, name: str) -> bool:
        proc = self._procs.get(name)
        return proc is not None and proc.poll() is None

    def pid(self, name: str) -> int | None:
        proc = self._procs.get(name)
        return proc.pid if proc is not None else None

    def pids(self) -> dict[str, int]:
        """Every running process by name, in the order they were started."""
        return {name: proc.pid for name, proc in list(self._procs.items()) if proc.poll() is None}

    def dependents(self, name: str) -> list[str]:
        """The services that use ``name``, directly or through another, in
        the order they were started."""
        using = {name}
        grew = True
        while grew:
            grew = False
            for other, service in self._services.items():
                if other not in using and using.intersection(service.depends_on):
                    using.add(other)
                    grew = True
        return [other for other in self._procs if other in using and other != name]

    def stop(self, name: str, timeout: float = 15.0, kill: bool = False) -> None:
        """Stop one process (SIGKILL at once when ``kill``) and unmount its
        FUSE mount if it left one. What uses it is left running: stop that
        first."""
        with self._lifecycle:
            self._stop(name, timeout, kill)

    def restart(self, name: str) -> None:
        """Start ``name`` again, and what uses it: its running dependents stop
        (last started first), its mount is cleaned, it starts and becomes
        ready, then they start again in order."""
        with self._lifecycle:
            self._restart(name)

    def _restart(self, name: str) -> None:
        dependents = [d for d in self.dependents(name) if d not in self._expected_exit]
        if dependents:
            self.log("supervisor", f"restarting {name}, and with it {', '.join(dependents)}")
        # Not deliberate stops: should the restart fail, the watcher brings
        # them back once what they use runs again. After a crash, SIGKILL:
        # on a dead mount nothing is left to finish cleanly, and a graceful
        # stop only hangs (SQLite spends its busy timeout failing to close a
        # database there); every process here is built to survive a kill.
        crashed = not self.running(name)
        for dependent in reversed(dependents):
            self._stop(dependent, 5.0, kill=crashed, expected=False)
        self._stop(name, 5.0, kill=False, expected=False)
        try:
            self._start(self._services[name])
        except StartError:
            # Not ready in time (or stopping): stop it too, so that the
            # watcher tries again from scratch.
            self._stop(name, 5.0, kill=True, expected=False)
            raise
        for dependent in dependents:
            if not self.running(dependent):
                self._start(self._services[dependent])

    def crash(self, name: str) -> int:
        """SIGKILL a process as a crash would, leave the rest to the watcher,
        and return the pid it had."""
        proc = self._procs[name]
        try:
            os.kill(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(10)
        return proc.pid

    def _stop(self, name: str, timeout: float, kill: bool, expected: bool = True) -> None:
        proc = self._procs.get(name)
        service = self._services.get(name)
        if expected:
            self._expected_exit.add(name)
        if proc is not None and proc.poll() is None:
            sig = signal.SIGKILL if kill else (service.stop_signal if service else signal.SIGTERM)
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                pass
            if not kill and service is not None and service.force_after is not None:
                try:
                    proc.wait(service.force_after)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGINT)  # open streams: stop without them
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.log("supervisor", f"{name} did not stop in {timeout:.0f}s; killing it")
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            self.log("supervisor", f"stopped {name} ({'killed' if kill else 'exit ' + str(proc.returncode)})")
        if service is not None and service.mount is not None:
            litefs.unmount(service.mount)

    def stop_all(self) -> None:
        self._closing = True
        with self._lifecycle:
            for name in reversed(list(self._procs)):
                self._stop(name, 15.0, kill=False)
            self._stopped = True
            self._release()
        if self._watcher is not None and self._watcher is not threading.current_thread():
            self._watcher.join(5)

    def unexpected_exits(self) -> list[tuple[str, int]]:
        return [
            (name, proc.returncode)
            for name, proc in list(self._procs.items())
            if proc.poll() is not None and name not in self._expected_exit
        ]

    def watch(self, interval: float = 0.2) -> None:
        """Watch processes in the background: restart those that want it when
        they exit on their own (with what depends on them), and report the
        others."""
        if self._watcher is not None:
            return
        self._watcher = threading.Thread(target=self._watch, args=(interval,), daemon=True, name="supervisor")
        self._watcher.start()

    def _watch(self, interval: float) -> None:
        # This thread forks every process it restarts, and the kernel sends
        # the parent-death signal when the forking *thread* ends: so it must
        # outlive them all, until stop_all has stopped every one.
        while not self._stopped:
            with self._lifecycle:
                if not self._closing:
                    try:
                        self._heal()
                    except Exception as exc:  # keep watching whatever happens
                        self.log("supervisor", f"watcher: {exc!r}")
            time.sleep(interval)

    def _heal(self) -> None:
        for name, code in self.unexpected_exits():
            if self.running(name) or name in self._expected_exit:
                continue  # brought back (or stopped) by an earlier restart in this pass
            service = self._services[name]
            now = time.monotonic()
            if name not in self._retry_at:  # newly exited
                if not service.restart:
                    self._retry_at[name] = float("inf")
                    self.log("supervisor", f"{name} exited with {code}; see {self.log_dir / (name + '.log')}")
                    continue
                self._retry_at[name] = now + self._backoff(name, now - self._started_at.get(name, now))
                self.log("supervisor", f"{name} exited with {code}; restarting in {self._delay[name]:g}s")
            if now < self._retry_at[name]:
                continue
            if any(not self.running(dep) for dep in service.depends_on):
                continue  # it comes back with what it uses
            try:
                self._restart(name)
            except Exception as exc:
                self._retry_at[name] = time.monotonic() + self._backoff(name, 0.0)
                self.log("supervisor", f"restarting {name} failed: {exc}; next try in {self._delay[name]:g}s")

    def _backoff(self, name: str, ran: float) -> float:
        """The wait before restarting ``name``, which ran ``ran`` seconds:
        short after a long run, doubling (up to 10 s) while it keeps failing."""
        delay = 0.25 if ran > 30 else min(self._delay.get(name, 0.125) * 2, 10.0)
        self._delay[name] = delay
        return delay


def holder(root: Path) -> int | None:
    """The pid of the live supervisor that holds ``root`` (see
    ``Supervisor.claim``), or None: a pid file nobody holds is a dead one's."""
    try:
        fd = os.open(Path(root) / PID_FILE, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.pread(fd, 32, 0).decode(errors="replace").strip()
            return int(text) if text.isdigit() else None
        return None
    finally:
        os.close(fd)


def processes_of(root: Path) -> list[int]:
    """The processes a supervisor of ``root`` started, and their children,
    found by the mark in their environment."""
    mine = f"{SUPERVISOR_ENV}={Path(root).resolve()}".encode()
    found = []
    spared = _ancestors()  # this process and what started it, whatever their environment
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) in spared:
            continue
        try:
            with open(f"/proc/{entry.name}/environ", "rb") as fp:
                env = fp.read().split(b"\0")
        except OSError:
            continue
        if mine in env:
            found.append(int(entry.name))
    return found


def _ancestors() -> set[int]:
    pids, pid = set(), os.getpid()
    while pid > 1 and pid not in pids:
        pids.add(pid)
        try:
            with open(f"/proc/{pid}/stat") as fp:
                pid = int(fp.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return pids


def _mounts_under(root: Path) -> list[str]:
    """FUSE mounts (LiteFS's) below ``root``: never ``root`` itself, nor any
    other kind of mount there (in a container, ``root`` is a volume)."""
    with open("/proc/mounts") as fp:
        entries = [line.split() for line in fp]
    return [
        point
        for _, point, fstype, *_ in entries
        if point.startswith(f"{root}/") and fstype.split(".")[0] in ("fuse", "fuseblk")
    ]


def _kill(pids: list[int], timeout: float = 10.0) -> None:
    """SIGKILL: their supervisor is gone, so they have crashed in all but
    name, and a crash is what every process here is built to survive. It
    also ends a stopped process, which SIGTERM would not."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    while any(_exists(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)


def _exists(pid: int) -> bool:
    """True while ``pid`` runs (a zombie, waiting for its parent, does not)."""
    try:
        with open(f"/proc/{pid}/stat") as fp:
            return fp.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError as exc:
        return exc.errno not in (errno.ENOENT, errno.ESRCH)


def run_until_signalled(
    start: Callable[[], None],
    stop: Callable[[], None],
    on_up: Callable[[], None],
    on_usr1: Callable[[], None] | None = None,
) -> int:
    """Run a node (or a local cluster) in the foreground: ``start`` it, call
    ``on_up``, supervise until SIGINT or SIGTERM, then ``stop`` it in order.
    ``on_usr1`` runs on this (the main) thread after each SIGUSR1, which
    ``broadsheet promote`` sends: the processes it starts are tied to a
    thread that lives as long as the node (PR_SET_PDEATHSIG). The role entry
    points and ``broadsheet up`` all run this way. Returns a process exit
    status."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    usr1 = threading.Event()
    # Explicitly: a shell starts background jobs with SIGINT ignored, and a
    # container's PID 1 ignores signals it has no handler for.
    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)
    if on_usr1 is not None:
        signal.signal(signal.SIGUSR1, lambda *_: usr1.set())
    status = 0
    try:
        start()
        on_up()
        while True:
            if usr1.wait(0.5):
                usr1.clear()
                try:
                    on_usr1()
                except Exception as exc:  # a promotion that failed: the node says why, and runs on
                    print(f"\nbroadsheet: {exc}", file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        print("\nstopping…", flush=True)
    except Exception as exc:  # StartError, a bad setting, a missing binary
        print(f"\nbroadsheet could not start: {exc}", file=sys.stderr, flush=True)
        status = 1
    finally:
        # A second signal must not cut the orderly stop short: LiteFS can only
        # unmount once the processes using its mount are gone.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stop()
    return status


def run_node(node) -> int:
    """Run one node (``broadsheet primary`` / ``broadsheet replica``: a node
    built from its environment, with ``root``, ``start(supervisor)`` and
    ``banner``) under a supervisor of its own until SIGTERM; returns a
    process exit status."""
    supervisor = Supervisor(node.root / "logs", echo=sys.stdout)

    def start():
        node.start(supervisor)
        supervisor.watch()

    return run_until_signalled(start, supervisor.stop_all, lambda: supervisor.log("broadsheet", node.banner))
