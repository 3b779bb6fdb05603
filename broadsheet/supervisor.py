"""One place that starts, watches and stops every process of a node or a
local cluster, and logs their output in one format."""

from __future__ import annotations

import ctypes
import os
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


def _die_with_parent() -> None:
    # A child outlives a supervisor killed with SIGKILL unless the kernel is
    # told to signal it; LiteFS unmounts cleanly on SIGTERM.
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


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


class Supervisor:
    def __init__(self, log_dir: Path, echo: TextIO | None = None):
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.echo = echo
        self._procs: dict[str, subprocess.Popen] = {}
        self._services: dict[str, Service] = {}
        self._lock = threading.Lock()
        self._expected_exit: set[str] = set()
        self._watcher: threading.Thread | None = None
        self._closing = False
        # Held while starting or stopping, so the watcher never restarts a
        # process in the middle of a deliberate stop.
        self._lifecycle = threading.RLock()

    # -- logging ---------------------------------------------------------
    def log(self, name: str, message: str) -> None:
        line = f"{time.strftime('%H:%M:%S')} {name:<22} | {message}\n"
        with self._lock:
            with open(self.log_dir / "broadsheet.log", "a") as fp:
                fp.write(line)
            if self.echo is not None:
                self.echo.write(line)
                self.echo.flush()

    def _pump(self, name: str, stream) -> None:
        with open(self.log_dir / f"{name}.log", "a") as fp:
            for raw in iter(stream.readline, b""):
                text = raw.decode("utf-8", "replace").rstrip("\n")
                fp.write(text + "\n")
                fp.flush()
                self.log(name, text)

    def log_tail(self, name: str, lines: int = 30) -> str:
        try:
            return "".join((self.log_dir / f"{name}.log").read_text().splitlines(True)[-lines:])
        except FileNotFoundError:
            return ""

    # -- lifecycle -------------------------------------------------------
    def start(self, service: Service) -> None:
        with self._lifecycle:
            self._start(service)

    def _start(self, service: Service) -> None:
        if service.name in self._procs and self._procs[service.name].poll() is None:
            raise StartError(f"{service.name} is already running")
        self._services[service.name] = service
        if service.mount is not None:
            litefs.unmount(service.mount)  # left over from a crash
            service.mount.mkdir(parents=True, exist_ok=True)
        if service.prepare is not None:
            service.prepare()
        env = {**os.environ, **service.env, "PYTHONUNBUFFERED": "1"}
        proc = subprocess.Popen(
            service.argv,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        self._procs[service.name] = proc
        self._expected_exit.discard(service.name)
        if service.mount is not None:
            subprocess.Popen(
                [sys.executable, "-m", "broadsheet.janitor", str(os.getpid()), str(proc.pid), str(service.mount)],
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

    def stop(self, name: str, timeout: float = 15.0, kill: bool = False) -> None:
        """Stop one process (SIGKILL at once when ``kill``, as a crash would)
        and unmount its FUSE mount if it left one."""
        with self._lifecycle:
            self._stop(name, timeout, kill)

    def crash(self, name: str) -> None:
        """SIGKILL a process as a crash would, and let the watcher deal with it."""
        self._stop(name, 10.0, kill=True, expected=False)

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
        for name in reversed(list(self._procs)):
            self.stop(name)

    def unexpected_exits(self) -> list[tuple[str, int]]:
        return [
            (name, proc.returncode)
            for name, proc in self._procs.items()
            if proc.poll() is not None and name not in self._expected_exit
        ]

    def watch(self, interval: float = 0.2) -> None:
        """Watch processes in the background: restart those that want it when
        they exit on their own, and report the others."""
        if self._watcher is not None:
            return
        self._watcher = threading.Thread(target=self._watch, args=(interval,), daemon=True)
        self._watcher.start()

    def _watch(self, interval: float) -> None:
        reported: set[str] = set()
        backoff: dict[str, float] = {}
        while not self._closing:
            for name, code in self.unexpected_exits():
                service = self._services[name]
                if service.restart and not self._closing:
                    delay = backoff.get(name, 0.25)
                    self.log("supervisor", f"{name} exited with {code}; restarting in {delay:g}s")
                    time.sleep(delay)
                    backoff[name] = min(delay * 2, 10.0)
                    try:
                        with self._lifecycle:
                            if not self._closing and name not in self._expected_exit:
                                self.start(service)
                    except Exception as exc:
                        self.log("supervisor", f"restarting {name} failed: {exc}")
                elif name not in reported:
                    reported.add(name)
                    self.log("supervisor", f"{name} exited with {code}; see {self.log_dir / (name + '.log')}")
            time.sleep(interval)


def run_until_signalled(start: Callable[[], None], stop: Callable[[], None], on_up: Callable[[], None]) -> int:
    """Run a node (or a local cluster) in the foreground: ``start`` it, call
    ``on_up``, supervise until SIGINT or SIGTERM, then ``stop`` it in order.
    The role entry points and ``broadsheet up`` both run this way. Returns a
    process exit status."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    # Explicitly: a shell starts background jobs with SIGINT ignored, and a
    # container's PID 1 ignores signals it has no handler for.
    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)
    status = 0
    try:
        start()
        on_up()
        while True:
            time.sleep(0.5)
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
