"""Decoding that a hang cannot stop: calls run in a child process that is killed after a timeout.

A decoder stuck in native code (decord's ``get_batch`` has been seen to block forever while
holding the GIL, dmlc/decord #373 #375) ignores Python signals and threads, so the only way to
abandon it is to run it in another process. :class:`DecodeWatchdog` keeps one child process per
reading process (DataLoader workers included: the child is a plain subprocess, which daemonic
workers may start), sends it ``backend.method(path, *args)`` and waits at most ``timeout``
seconds for the answer. A call that does not return in time kills the child (the next call
starts a new one) and raises :class:`DecodeTimeoutError`, a
:class:`~mosic.errors.VideoReadError`: training skips the video as it skips a corrupt one.
"""

from __future__ import annotations

import os
import pickle
import socket
import subprocess
import sys
from multiprocessing.connection import Connection
from typing import Any

from ..errors import VideoReadError


class DecodeTimeoutError(VideoReadError):
    """Decoding a video did not finish within ``data.decode_timeout`` seconds."""


class DecodeWatchdog:
    """Runs ``getattr(backend, method)(path, *args)`` in a child process, at most ``timeout`` s a call.

    Picklable (the child is not: each process starts its own on first use). The backend object
    is pickled to the child once; it must be importable there (the parent's ``sys.path`` is
    passed on).
    """

    STARTUP_TIMEOUT = 120.0  # seconds a new child may take to start and import its decoder

    def __init__(self, backend: Any, timeout: float):
        if not timeout > 0:
            raise ValueError(f"decode timeout must be > 0 seconds, got {timeout}")
        self.backend = backend
        self.timeout = float(timeout)
        self._child: subprocess.Popen | None = None
        self._conn: Connection | None = None
        self._pid = None

    def __getstate__(self) -> dict:
        return {"backend": self.backend, "timeout": self.timeout}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["backend"], state["timeout"])

    def __del__(self) -> None:
        self.close()

    def close(self) -> None:
        """Stop the child process (a new one starts on the next call)."""
        child, conn = getattr(self, "_child", None), getattr(self, "_conn", None)
        self._child = self._conn = None
        if conn is not None:
            try:
                conn.close()
            except OSError:
                pass
        if child is not None and self._pid == os.getpid():
            try:
                child.kill()
                child.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                pass

    def _start(self) -> Connection:
        if self._child is not None and self._pid == os.getpid() and self._child.poll() is None:
            return self._conn
        self._child = self._conn = None  # a forked copy of another process's child is not ours
        ours, theirs = socket.socketpair()
        child = subprocess.Popen(
            [sys.executable, "-c", "from mosic.data.watchdog import _serve; _serve()", str(theirs.fileno())],
            pass_fds=(theirs.fileno(),),
            stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)},
        )
        theirs.close()
        conn = Connection(ours.detach())
        self._child, self._conn, self._pid = child, conn, os.getpid()
        conn.send_bytes(pickle.dumps(self.backend))
        # starting Python and importing the decoder is not decoding: it gets its own, longer limit
        try:
            ready = conn.poll(max(self.timeout, self.STARTUP_TIMEOUT)) and conn.recv_bytes() == b"ready"
        except (EOFError, OSError):
            ready = False
        if not ready:
            code = child.poll()
            self.close()
            raise RuntimeError(f"the decoder process did not start (exit code {code}); see its error output above")
        return conn

    def call(self, method: str, path: str, *args: Any, timeout: float | None = None) -> Any:
        """``backend.method(path, *args)`` in the child; :class:`DecodeTimeoutError` after
        ``timeout`` (default: the watchdog's) seconds; the child's exceptions are re-raised."""
        timeout = self.timeout if timeout is None else timeout
        conn = self._start()
        try:
            conn.send_bytes(pickle.dumps((method, path, args), protocol=pickle.HIGHEST_PROTOCOL))
            ready = conn.poll(timeout)
            reply = pickle.loads(conn.recv_bytes()) if ready else None
        except (EOFError, OSError) as error:  # the child died (killed, out of memory, a crash in native code)
            code = self._child.poll() if self._child is not None else None
            self.close()
            raise VideoReadError(path, f"the decoder process died while decoding (exit code {code}): {error}") from error
        if not ready:
            self.close()
            raise DecodeTimeoutError(
                path,
                f"decoding did not finish within {timeout:g} s (the decoder hung); "
                "the video is skipped; raise data.decode_timeout if it is only slow",
            )
        ok, value = reply
        if ok:
            return value
        raise value


def _serve() -> None:
    """The child's loop: read the backend, then answer (method, path, args) requests."""
    conn = Connection(int(sys.argv[1]))
    backend = pickle.loads(conn.recv_bytes())
    conn.send_bytes(b"ready")
    while True:
        try:
            method, path, args = pickle.loads(conn.recv_bytes())
        except EOFError:
            return
        try:
            reply = (True, getattr(backend, method)(path, *args))
        except Exception as error:  # noqa: BLE001 - sent back and raised in the parent
            try:
                pickle.dumps(error)
            except Exception:  # noqa: BLE001
                error = VideoReadError(path, f"{type(error).__name__}: {error}")
            reply = (False, error)
        conn.send_bytes(pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL))
