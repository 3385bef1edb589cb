"""The redesign plan's "thread per connection" pool (seed/000_610d0e42611822aa.txt).

``IbConnection`` keeps one ib_insync ``IB`` alive on a dedicated thread with its own persistent
event loop and a request queue, and exits after 3 minutes idle; ``IbConnectionPool`` hands out
healthy connections, drops broken ones and opens new ones with the next client id (skipping an
id that is in use). Everything runs in the caller's process, so every connection shares one GIL.

Where the plan's sketch would not work as written, this version does what it meant:

* the queue is created on the connection's own loop and fed with ``call_soon_threadsafe``, and
  each request carries a ``concurrent.futures.Future`` (an ``asyncio.Future`` cannot be awaited
  across loops);
* each queued request runs as a task, so one connection has many requests in flight, as
  ib_insync allows (awaiting them one by one would serialise every connection);
* ``start()`` waits for the connection (or its failure) instead of sleeping one second;
* the pool hands out the least busy healthy connection and opens another while every one is
  busy, up to ``size`` (returning the first healthy one would never use a second connection);
* a request whose connection drops is retried on a healthy connection, and requests wait for
  the pacer (the farm's ``SharedPacer`` in a namespace of its own) so both sides follow the
  same rules.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

from ibfarm.backend import IB

log = logging.getLogger(__name__)

Job = Callable[[IB], Awaitable[Any]]


class IbConnection:
    """One IB connection on a dedicated thread with a persistent event loop.

    Args:
        client_id: the IB client id.
        host, port: the gateway.
        idle_timeout: seconds without a request after which the connection closes (3 min).
    """

    def __init__(self, client_id: int, host: str, port: int, idle_timeout: float = 180.0,
                 connect_timeout: float = 15.0):
        self.client_id, self.host, self.port = client_id, host, port
        self.idle_timeout, self.connect_timeout = idle_timeout, connect_timeout
        self.ib = IB()
        self.ib.RaiseRequestErrors = True
        self.ib.client.MaxRequests = 0  # requests wait for the pool's pacer instead
        self.thread: threading.Thread | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.request_queue: asyncio.Queue | None = None
        self.stop_event = threading.Event()
        self.connected = False
        self.last_activity = time.monotonic()
        self.in_flight = 0
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def start(self) -> None:
        """Start the thread and wait until connected; raise the connection error if any."""
        self.thread = threading.Thread(target=self._run_event_loop, daemon=True,
                                       name=f"ib-conn-{self.client_id}")
        self.thread.start()
        if not self._ready.wait(self.connect_timeout + 5):
            self.stop()
            raise TimeoutError(f"connection {self.client_id} did not connect")
        if self._error is not None:
            self.thread.join(5)
            raise self._error

    def _run_event_loop(self) -> None:
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._connection_loop())
        finally:
            self.loop.close()

    async def _connection_loop(self) -> None:
        self.request_queue = asyncio.Queue()
        try:
            await self.ib.connectAsync(self.host, self.port, clientId=self.client_id,
                                       timeout=self.connect_timeout, readonly=True)
            self.connected = True
            log.debug("IB connection %d established", self.client_id)
        except BaseException as exc:  # reported to start()
            self._error = exc
            self._ready.set()
            self.ib.disconnect()
            return
        self._ready.set()
        tasks: set[asyncio.Task] = set()
        try:
            await self._process_requests(tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._fail_queued(ConnectionError(f"connection {self.client_id} stopped"))
            self.connected = False
            self.ib.disconnect()

    async def _process_requests(self, tasks: set[asyncio.Task]) -> None:
        while not self.stop_event.is_set() and self.ib.isConnected():
            if not self.in_flight and time.monotonic() - self.last_activity > self.idle_timeout:
                log.info("connection %d idle timeout", self.client_id)
                return
            try:
                job, future = await asyncio.wait_for(self.request_queue.get(), timeout=0.25)
            except asyncio.TimeoutError:
                continue
            self.last_activity = time.monotonic()
            task = asyncio.ensure_future(self._execute_request(job, future))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    async def _execute_request(self, job: Job, future: concurrent.futures.Future) -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            result = await job(self.ib)
        except asyncio.CancelledError:  # the connection stopped under it: try another
            future.set_exception(ConnectionError(f"connection {self.client_id} stopped"))
        except BaseException as exc:  # handed to the caller
            future.set_exception(exc)
        else:
            future.set_result(result)
        finally:
            self.last_activity = time.monotonic()

    def _fail_queued(self, error: BaseException) -> None:
        while self.request_queue is not None and not self.request_queue.empty():
            _, future = self.request_queue.get_nowait()
            if future.set_running_or_notify_cancel():
                future.set_exception(error)

    def execute_request(self, job: Job) -> concurrent.futures.Future:
        """Run ``await job(ib)`` on this connection's loop (from any thread)."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        loop = self.loop
        if loop is None or not self.is_healthy():
            future.set_exception(ConnectionError(f"connection {self.client_id} is down"))
            return future
        self.in_flight += 1
        future.add_done_callback(self._done)
        try:
            loop.call_soon_threadsafe(self.request_queue.put_nowait, (job, future))
        except RuntimeError:  # the loop closed meanwhile
            future.set_exception(ConnectionError(f"connection {self.client_id} is down"))
        return future

    def _done(self, _future: concurrent.futures.Future) -> None:
        self.in_flight -= 1

    def is_healthy(self) -> bool:
        return (self.connected and self.ib.isConnected() and self.thread is not None
                and self.thread.is_alive() and not self.stop_event.is_set())

    def stop(self) -> None:
        self.stop_event.set()
        if self.thread and self.thread.is_alive():
            self.thread.join(timeout=5)


class IbConnectionPool:
    """Healthy ``IbConnection`` objects, opened on demand with sequential client ids.

    Args:
        host, port: the gateway.
        size: connections at most.
        first_client_id: the first id tried; an id in use (326) is skipped.
        before_connect: called before each new connection (e.g. to wait for the pacer).
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 4002, size: int = 4,
                 first_client_id: int = 1, idle_timeout: float = 180.0,
                 before_connect: Callable[[], None] | None = None):
        self.host, self.port, self.size = host, port, size
        self.before_connect = before_connect
        self.idle_timeout = idle_timeout
        self.connections: list[IbConnection] = []
        self.lock = threading.Lock()
        self.next_client_id = first_client_id

    def acquire_connection(self) -> IbConnection:
        """The least busy healthy connection; a new one while all are busy and room is left."""
        with self.lock:
            self.connections = [c for c in self.connections if c.is_healthy()]
            idle = [c for c in self.connections if c.in_flight == 0]
            if idle:
                return idle[0]
            if len(self.connections) < self.size:
                return self._create_connection()
            return min(self.connections, key=lambda c: c.in_flight)

    def _create_connection(self, max_attempts: int = 10) -> IbConnection:
        last: BaseException | None = None
        for _ in range(max_attempts):
            client_id = self.next_client_id
            self.next_client_id += 1
            conn = IbConnection(client_id, self.host, self.port, self.idle_timeout)
            if self.before_connect is not None:
                self.before_connect()
            try:
                conn.start()
            except Exception as exc:
                last = exc
                if "326" in str(exc) or "already in use" in str(exc).lower():
                    continue  # the next id
                raise
            self.connections.append(conn)
            return conn
        raise ConnectionError(f"no IB connection after {max_attempts} attempts: {last}")

    def submit(self, job: Job, retries: int = 20, retry_wait: float = 0.25,
               deadline: float = 60.0) -> concurrent.futures.Future:
        """Run ``await job(ib)`` on a healthy connection; retried when its connection drops."""
        outer: concurrent.futures.Future = concurrent.futures.Future()
        give_up = time.monotonic() + deadline

        def attempt(left: int) -> None:
            try:
                inner = self.acquire_connection().execute_request(job)
            except (ConnectionError, OSError, TimeoutError) as exc:
                retry(left, exc)
                return
            inner.add_done_callback(lambda f: finished(f, left))

        def finished(inner: concurrent.futures.Future, left: int) -> None:
            exc = inner.exception()
            if exc is None:
                outer.set_result(inner.result())
            elif isinstance(exc, (ConnectionError, OSError)):
                retry(left, exc)
            else:
                outer.set_exception(exc)

        def retry(left: int, exc: BaseException) -> None:
            if left <= 0 or time.monotonic() > give_up:
                outer.set_exception(exc)
                return
            # a fresh connection is tried from a timer thread, never from a dying loop
            timer = threading.Timer(retry_wait, attempt, (left - 1,))
            timer.daemon = True
            timer.start()

        attempt(retries)
        return outer

    def close(self) -> None:
        with self.lock:
            for conn in self.connections:
                conn.stop()
            self.connections.clear()
