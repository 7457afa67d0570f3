"""SocketThread: the driver every socket-owning thread of the spearlet runs on.

ZeroMQ sockets are not thread-safe, and an actor cannot block on its inbox and a socket at
once, so each server socket lives in one thread that owns a ZeroMQ context and everything
opened in it (the router pump, :mod:`.router`; the control endpoint, :mod:`.control`). This
class is that thread's life, written once, modelled on pyzmq's ``ThreadAuthenticator``:

- :meth:`start_thread` (owner's thread; a subclass's ``start`` calls it) starts the thread
  and waits for it, bounded; whatever :meth:`_open` raised while binding comes back to the
  caller, and the context is destroyed.
- the loop polls what :meth:`_open` registered plus a :class:`~.wake.WakePipe`, so any
  thread may :meth:`wake` it (a pipe's write end, unlike a socket, may be written from any
  thread); it drains the pipe and calls :meth:`_ready` with the events (thread).
- :meth:`stop` (any thread but this one) sets the stop flag, wakes the thread and joins it;
  the thread calls :meth:`_close` (which closes the sockets with the linger it wants) and
  terminates the context. Idempotent.

Subclasses implement :meth:`_open`, :meth:`_ready` and :meth:`_close`, and may override
:meth:`_poll_timeout` (default: block until something happens).
"""

from __future__ import annotations

import threading

import zmq

from .._log import log_exception, logger
from ..errors import TransportError
from .wake import WakePipe

__all__ = ["SocketThread"]

Context = zmq.Context[zmq.Socket[bytes]]


class SocketThread:
    """One thread owning one ZeroMQ context and its sockets; see the module docstring."""

    def __init__(self, name: str) -> None:
        self.thread_name = name
        self._wakeup = WakePipe()
        self._stopping = False
        self._started = threading.Event()
        self._start_error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._poller = zmq.Poller()
        """The socket thread's (it may register sockets opened later)."""

    # -- owner API ---------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stopping

    def start_thread(self, timeout: float = 10.0) -> None:
        """Start the thread and wait until it has opened its sockets. Re-raises what
        :meth:`_open` raised (TransportError if it was not an Exception); TransportError if
        the thread does not come up within ``timeout``."""
        if self._thread is not None:
            raise TransportError(f"{self.thread_name} was already started")
        self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)
        self._thread.start()
        if not self._started.wait(timeout):
            self._stopping = True
            self._wakeup.wake()
            raise TransportError(f"{self.thread_name} did not start within {timeout} s")
        if self._start_error is not None:
            self._thread.join(timeout)
            raise self._start_error

    def wake(self) -> None:
        """Make the thread look at its work now (any thread, never blocks)."""
        self._wakeup.wake()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread; it closes its sockets and terminates its context. Idempotent."""
        self._stopping = True
        thread = self._thread
        if thread is not None and thread.is_alive():
            self._wakeup.wake()
            thread.join(timeout)
            if thread.is_alive():
                logger.error("{} did not stop within {} s", self.thread_name, timeout)
                return  # the thread still polls the pipe: closing it now could wake a stranger
        self._wakeup.close()

    # -- hooks (socket thread) ---------------------------------------------------------------
    def _open(self, ctx: Context) -> None:
        """Open and bind the sockets, registering with ``self._poller`` what is to be
        watched. Raise to fail :meth:`start_thread`; the context is then destroyed."""
        raise NotImplementedError

    def _ready(self, events: dict[zmq.Socket[bytes] | int, int], woken: bool) -> None:
        """Handle one poll's events; ``woken``: the wake pipe fired (already drained)."""
        raise NotImplementedError

    def _close(self) -> None:
        """Close every socket :meth:`_open` (or :meth:`_ready`) made, with its linger."""
        raise NotImplementedError

    def _poll_timeout(self) -> int | None:
        """Milliseconds the next poll may block (None: until something happens)."""
        return None

    # -- the thread --------------------------------------------------------------------------
    def _run(self) -> None:
        ctx: Context = zmq.Context()
        try:
            self._open(ctx)
        except BaseException as exc:
            self._start_error = exc if isinstance(exc, Exception) else TransportError(str(exc))
            # destroy, not term: a socket opened before the failure may still be open, and
            # term() would wait for it forever
            ctx.destroy(linger=0)
            self._started.set()
            return
        self._started.set()
        wake_fd = self._wakeup.fd
        poller = self._poller
        poller.register(wake_fd, zmq.POLLIN)
        try:
            while not self._stopping:
                events = dict(poller.poll(self._poll_timeout()))
                woken = wake_fd in events
                if woken:
                    self._wakeup.drain()
                self._ready(events, woken)
        except Exception:
            log_exception(logger, "{} crashed", self.thread_name)
        finally:
            try:
                self._close()
            except Exception:
                log_exception(logger, "{}: closing its sockets failed", self.thread_name)
            ctx.destroy(linger=0)  # what _close() closed keeps its own linger
