"""A TCP proxy that puts a network between a benchmark's S3 clients and its S3 server.

On loopback every S3 request is answered within a fraction of a millisecond, so a client that
reads objects one after another looks as fast as one that keeps many requests in flight. Real
S3 is a round trip away (a few to tens of milliseconds), and there the difference decides
everything for many small objects. `NetProxy` listens on 127.0.0.1 and forwards to the S3 server
with `delay` seconds added to everything flowing client -> upstream, so each request's answer
arrives `delay` later, as over a network with that round trip time:

    with NetProxy(s3.port, delay=0.020) as proxy:
        endpoint = f"http://127.0.0.1:{proxy.port}"   # give this to the worker and the baseline
        ...
        print(proxy.requests, proxy.bytes_down)

The delay is a pipeline, not a pause: each chunk is delivered at its arrival time + `delay`,
so bulk transfers keep their throughput and only latency is added (latency, not bandwidth, is
what is being simulated). TCP handshakes are not delayed. Data flowing upstream -> client is
forwarded at once. Buffers are bounded (`BUFFER` bytes per direction per connection; beyond
that, reading from the sender pauses and TCP pushes back), both ends are loopback only.

Counters, readable from any thread (`methods` best while the proxy is idle): `bytes_down` (what the server sent), `bytes_up` (what
clients sent) and `requests`: client -> upstream bursts that began after the connection had
been idle in that direction, i.e. the first bytes on a connection or the first bytes after the
server had answered. For HTTP/1.1 without pipelining (urllib3, minio) that is one per request;
`methods` counts them by their first word (`GET`, `HEAD`, `PUT`, ...).

The proxy keeps listening while the upstream is down or restarting: a connection that cannot
reach the upstream is reset at once (as close to "connection refused" as an accepted
connection gets), and the next one tries again. `cut()` makes the upstream unreachable that
way on purpose (open connections reset too) until `restore()`: an outage as the clients see
it, while the server behind keeps its state.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import threading
from collections import Counter
from collections.abc import Callable
from types import TracebackType

CHUNK = 64 * 1024
BUFFER = 16 * 1024 * 1024  # bytes in flight per direction per connection, at most (about)
CONNECT_TIMEOUT = 5.0


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class NetProxy:
    """A loopback TCP proxy with `delay` seconds of one-way latency towards the upstream; runs
    its own event loop in a daemon thread (`start`/`stop`, or `with`)."""

    def __init__(
        self, upstream_port: int, *, delay: float = 0.0, upstream_host: str = "127.0.0.1"
    ) -> None:
        if delay < 0:
            raise ValueError("delay must not be negative")
        if not _loopback(upstream_host):
            raise ValueError(f"upstream must be a loopback address, not {upstream_host}")
        self.upstream_host, self.upstream_port, self.delay = upstream_host, upstream_port, delay
        self.port = 0
        self.bytes_down = 0
        self.bytes_up = 0
        self.requests = 0
        self.methods: Counter[str] = Counter()  # requests by their first word (GET, PUT...)
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopping: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.is_cut = False

    # ------------------------------------------------------------------ control (any thread)
    def cut(self) -> None:
        """Reset every open connection and every new one until `restore()`."""
        self.is_cut = True
        loop = self._loop
        if loop is not None:
            loop.call_soon_threadsafe(self._reset_all)

    def restore(self) -> None:
        self.is_cut = False

    def _reset_all(self) -> None:
        for task in list(self._tasks):
            task.cancel()

    def start(self) -> NetProxy:
        if self._thread is not None:
            raise RuntimeError("NetProxy already started")
        self._ready.clear()
        self._error = None
        self._thread = threading.Thread(target=self._run, name="netproxy", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            self._thread.join()
            self._thread = None
            raise RuntimeError("NetProxy did not start") from self._error
        return self

    def stop(self) -> None:
        thread, loop, stopping = self._thread, self._loop, self._stopping
        if thread is None:
            return
        if loop is not None and stopping is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop ended already
                loop.call_soon_threadsafe(stopping.set)
        thread.join()
        self._thread = None

    def reset_counters(self) -> None:
        with self._lock:
            self.bytes_down = self.bytes_up = self.requests = 0
            self.methods = Counter()

    def __enter__(self) -> NetProxy:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ------------------------------------------------------------------ the loop's thread
    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve())
        except BaseException as exc:  # reported to start() if it happened before ready
            self._error = exc
        finally:
            self._ready.set()
            loop.close()

    async def _serve(self) -> None:
        self._stopping = asyncio.Event()
        server = await asyncio.start_server(self._connection, "127.0.0.1", 0, limit=CHUNK)
        self.port = int(server.sockets[0].getsockname()[1])
        self._ready.set()
        try:
            await self._stopping.wait()
        finally:
            server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await server.wait_closed()
            await asyncio.sleep(0)  # let the closed transports release their sockets

    async def _connection(
        self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            if self.is_cut:
                client_w.transport.abort()
                return
            try:
                up_r, up_w = await asyncio.wait_for(
                    asyncio.open_connection(self.upstream_host, self.upstream_port, limit=CHUNK),
                    CONNECT_TIMEOUT,
                )
            except (OSError, TimeoutError, asyncio.CancelledError):
                # The upstream is down or restarting: reset the client's connection, as close
                # to "connection refused" as an accepted connection gets.
                client_w.transport.abort()
                return
            try:
                await self._relay(client_r, client_w, up_r, up_w)
            except (OSError, asyncio.CancelledError):
                # A reset or a broken pipe on either side resets the other; so does stop().
                # (Cancellation ends the task normally: asyncio's stream server reports a
                # cancelled handler task as an error.)
                client_w.transport.abort()
                up_w.transport.abort()
            finally:
                up_w.close()
        finally:
            client_w.close()
            self._tasks.discard(task)

    async def _relay(
        self,
        client_r: asyncio.StreamReader,
        client_w: asyncio.StreamWriter,
        up_r: asyncio.StreamReader,
        up_w: asyncio.StreamWriter,
    ) -> None:
        answered = True  # the upstream sent something since the client's last bytes

        def arrived_up(data: bytes) -> None:
            nonlocal answered
            if answered:
                answered = False
                word = data[:16].split(b" ", 1)[0]
                method = word.decode() if word.isalpha() and word.isupper() else "?"
                with self._lock:
                    self.requests += 1
                    self.methods[method] += 1

        def sent_up(size: int) -> None:
            with self._lock:
                self.bytes_up += size

        def arrived_down(data: bytes) -> None:
            nonlocal answered
            answered = True

        def sent_down(size: int) -> None:
            with self._lock:
                self.bytes_down += size

        up = asyncio.ensure_future(self._pump_delayed(client_r, up_w, arrived_up, sent_up))
        down = asyncio.ensure_future(self._pump(up_r, client_w, arrived_down, sent_down))
        try:
            # A side ending normally half-closes the other (write_eof); an error (a reset, a
            # broken pipe) ends both.
            await _all_or_first_error(up, down)
        finally:
            for future in (up, down):
                future.cancel()
            await asyncio.gather(up, down, return_exceptions=True)

    @staticmethod
    async def _pump(
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        on_arrival: Callable[[bytes], None],
        on_sent: Callable[[int], None],
    ) -> None:
        while data := await reader.read(CHUNK):
            on_arrival(data)
            writer.write(data)
            await writer.drain()
            on_sent(len(data))
        if writer.can_write_eof():
            writer.write_eof()

    async def _pump_delayed(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        on_arrival: Callable[[bytes], None],
        on_sent: Callable[[int], None],
    ) -> None:
        """Each chunk (and the end of the stream) leaves `delay` after it arrived; reading goes
        on meanwhile, up to `BUFFER` bytes ahead (a pipeline, not a pause per chunk)."""
        if self.delay <= 0:
            await self._pump(reader, writer, on_arrival, on_sent)
            return
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(maxsize=BUFFER // CHUNK)

        async def receive() -> None:
            while data := await reader.read(CHUNK):
                on_arrival(data)
                await queue.put((loop.time() + self.delay, data))
            await queue.put((loop.time() + self.delay, b""))

        async def deliver() -> None:
            while True:
                due, data = await queue.get()
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                if not data:
                    break
                writer.write(data)
                await writer.drain()
                on_sent(len(data))
            if writer.can_write_eof():
                writer.write_eof()

        receiving, delivering = asyncio.ensure_future(receive()), asyncio.ensure_future(deliver())
        try:
            await _all_or_first_error(receiving, delivering)
        finally:
            for future in (receiving, delivering):
                future.cancel()
            await asyncio.gather(receiving, delivering, return_exceptions=True)


async def _all_or_first_error(*futures: asyncio.Future[None]) -> None:
    """Until every future is done, or one fails (its exception is raised)."""
    done, _ = await asyncio.wait(futures, return_when=asyncio.FIRST_EXCEPTION)
    for future in done:
        future.result()
