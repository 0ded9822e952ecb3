"""Callbacks cannot be turned against us: vetted and pinned targets, capped answers, one deadline
per attempt, a cap per owner, and per-owner signatures a receiver can check.

Every target here is a loopback server of this file; names resolve through a fake resolver.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import json
import socket
import ssl
import time
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from temporalio.client import WorkflowExecutionStatus
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment, WorkflowEnvironment

from activities.callbacks import (
    CALLBACK_FAILED,
    CALLBACK_OWNER_BUSY,
    CallbackActivities,
    is_public,
    key_id,
    owner_key,
    refuse_private,
    sign,
    verify,
)
from core.config import Settings
from core.storage import ObjectStore
from tests.helpers import put_sources, start_job, wait_for
from worker import build_worker
from workflows.client import new_request
from workflows.errors import ErrorType
from workflows.models import CallbackNotice, JobState, JobStatus
from workflows.names import STATE_MEMO_KEY
from workflows.sealing import seal

MIB = 1024 * 1024
NAME = "callback.test"  # resolved by the `dns` fixture only
DEADLINE = 1.0  # in the tests of the deadline; the others allow 10 s, for a cold start
DRIP_INTERVAL = 0.25


# --- a loopback target ----------------------------------------------------------------------


@dataclass
class Target:
    """A loopback HTTP server: what it received, what it sent, and a gate for hanging answers."""

    base: str
    requests: list[tuple[httpx.Headers, bytes]] = field(default_factory=list)
    sent: int = 0
    finished: int = 0
    release: asyncio.Event = field(default_factory=asyncio.Event)

    async def write(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        writer.write(data)
        self.sent += len(data)
        await writer.drain()


Answer = Callable[[Target, asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def serve_target(
    answer: Answer, tls: ssl.SSLContext | None = None, name: str = "127.0.0.1"
) -> AsyncIterator[Target]:
    handlers: set[asyncio.Task[Any]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            fields = (line.partition(": ") for line in head[1:] if line)
            headers = httpx.Headers([(name, value) for name, _, value in fields])
            body = await reader.readexactly(int(headers.get("content-length", 0)))
            target.requests.append((headers, body))
            await answer(target, writer)
        except (OSError, asyncio.IncompleteReadError):
            pass  # the client hung up: what a cut attempt looks like from here
        finally:
            target.finished += 1
            writer.close()
            handlers.discard(task)

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=tls)
    port = server.sockets[0].getsockname()[1]
    target = Target(f"{'https' if tls else 'http'}://{name}:{port}")
    try:
        yield target
    finally:
        server.close()
        for task in list(handlers):
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        await server.wait_closed()


def status(code: int, *headers: str) -> Answer:
    async def answer(target: Target, writer: asyncio.StreamWriter) -> None:
        extra = "".join(f"{h}\r\n" for h in headers)
        head = f"HTTP/1.1 {code} X\r\nContent-Length: 0\r\nConnection: close\r\n{extra}\r\n"
        await target.write(writer, head.encode())

    return answer


async def huge(target: Target, writer: asyncio.StreamWriter) -> None:
    """A 400 MB answer, written as fast as the client takes it."""
    size, chunk = 400 * MIB, bytes(64 * 1024)
    await target.write(writer, f"HTTP/1.1 200 OK\r\nContent-Length: {size}\r\n\r\n".encode())
    while target.sent < size:
        await target.write(writer, chunk)


def drip(where: str) -> Answer:
    """One byte every DRIP_INTERVAL, forever: in the status line and headers, or in the body."""

    async def answer(target: Target, writer: asyncio.StreamWriter) -> None:
        head = b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n"
        if where == "body":
            await target.write(writer, head)
        while True:
            await target.write(writer, head[:1] if where == "head" else b"x")
            head = head[1:] or b"X-Drip: "
            await asyncio.sleep(DRIP_INTERVAL)

    return answer


async def hang(target: Target, writer: asyncio.StreamWriter) -> None:
    """No answer until the test releases the gate, then 204."""
    await target.release.wait()
    await status(204)(target, writer)


# --- fixtures and helpers -------------------------------------------------------------------


def callback_settings(base: Settings, timeout: float = 10.0) -> Settings:
    """`base` with callbacks signed, bounded, and allowed to loopback targets."""
    return base.model_copy(
        update={
            "callback_allow_private": True,  # every target of these tests is on loopback
            "callback_secret": "master-secret-for-tests",
            "callback_timeout_seconds": timeout,
            "callback_max_response_bytes": 4096,
        }
    )


@pytest.fixture
def config(plain_settings: Settings) -> Settings:
    """Callback settings; the activities run in ActivityEnvironment, with no server started."""
    return callback_settings(plain_settings)


@pytest.fixture
def strict_deadline(plain_settings: Settings) -> Settings:
    return callback_settings(plain_settings, timeout=DEADLINE)


@pytest.fixture
def dns(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """A rebinding resolver for NAME: 127.0.0.1 on the first lookup, 127.0.0.2 on every later one.

    Patched at `socket.getaddrinfo`, under every library, so any lookup anywhere is counted.
    """
    lookups: list[str] = []
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else host
        if name != NAME:
            return real(host, port, *args, **kwargs)
        lookups.append(name)
        address = "127.0.0.1" if len(lookups) == 1 else "127.0.0.2"
        return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (address, int(port)))]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return lookups


def notice(
    url: str, owner: str = "alice", delivery_id: str | None = "job-1:run-1:completed"
) -> CallbackNotice:
    return CallbackNotice(
        url=url,
        owner=owner,
        delivery_id=delivery_id,
        payload={"jobId": "job-1", "status": "completed"},
    )


def sealed_for(settings: Settings, sent: CallbackNotice) -> CallbackNotice:
    """The notice bound to a request the API sealed for its job, owner and URL."""
    # Built unchecked: some tests send URLs no request would pass, to see the activity refuse.
    request = new_request(settings, "job-1", [10_001], owner=sent.owner)
    request = request.model_copy(update={"callback_url": sent.url})
    return sent.model_copy(update={"request": seal(request, settings)})


async def deliver(acts: CallbackActivities, sent: CallbackNotice) -> int:
    """Deliver as the callback activity of the run of job-1 that sealed it."""
    env = ActivityEnvironment()
    env.info = dataclasses.replace(env.info, workflow_id="job-1")
    result: int = await env.run(acts.send_callback, sealed_for(acts.settings, sent))
    return result


async def fails(outcome: Awaitable[int], error_type: str) -> ApplicationError:
    with pytest.raises(ApplicationError) as raised:
        await outcome
    assert raised.value.type == error_type, raised.value
    return raised.value


async def timed(outcome: Awaitable[Any]) -> float:
    started = time.monotonic()
    with pytest.raises(ApplicationError) as raised:
        await outcome
    assert raised.value.type == CALLBACK_FAILED and not raised.value.non_retryable
    return time.monotonic() - started


# --- vetting: pure functions ----------------------------------------------------------------

PRIVATE = [
    "127.0.0.1", "10.0.0.8", "172.16.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1",
    "0.0.0.0", "224.0.0.1", "::1", "::", "fc00::1", "fe80::1", "fec0::1", "ff0e::1",
    # IPv4-mapped, IPv4-compatible and IPv4-translated forms
    "::ffff:127.0.0.1", "::ffff:10.0.0.8", "::ffff:169.254.169.254", "::127.0.0.1",
    "::10.0.0.8", "::ffff:0:127.0.0.1",
    # NAT64, well-known prefix (64:ff9b::/96) and local-use prefix (64:ff9b:1::/48, any address)
    "64:ff9b::127.0.0.1", "64:ff9b::10.0.0.8", "64:ff9b::169.254.169.254",
    "64:ff9b:1::10.0.0.8", "64:ff9b:1:2:3:4:8.8.8.8",
    # 6to4 (2002::/16): the IPv4 address is in bits 16-47
    "2002:7f00:1::", "2002:a00:8::1", "2002:a9fe:a9fe::", "2002:c0a8:101::1",
    # Teredo
    "2001:0:4136:e378:8000:63bf:3fff:fdd2",
]  # fmt: skip
PUBLIC = [
    "8.8.8.8",
    "2606:4700:4700::1111",
    "::ffff:8.8.8.8",
    "64:ff9b::8.8.8.8",
    "2002:808:808::1",
]


@pytest.mark.parametrize("address", PRIVATE)
def test_private_addresses_are_refused_in_every_form(address: str) -> None:
    assert not is_public(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_pass(address: str) -> None:
    assert is_public(ipaddress.ip_address(address))


def test_one_private_answer_refuses_the_host() -> None:
    answers = [ipaddress.ip_address("8.8.8.8"), ipaddress.ip_address("64:ff9b::a00:1")]
    with pytest.raises(ApplicationError) as raised:
        refuse_private("mixed.example", answers)
    assert raised.value.type == ErrorType.callback_refused and raised.value.non_retryable
    refuse_private("public.example", answers[:1])


@pytest.mark.parametrize(
    "url",
    [
        "ftp://a/x",
        "http:///x",
        "http://127.0.0.1/x",
        "http://[::ffff:127.0.0.1]:8080/x",
        "http://[64:ff9b::a9fe:a9fe]/latest/meta-data",
        "http://[2002:a00:1::1]/",
        "http://2130706433/x",  # 127.0.0.1 as one number, parsed by the system resolver
        f"https://{NAME}/x",  # the fake resolver answers 127.0.0.1
    ],
)
async def test_refused_targets_fail_for_good(config: Settings, dns: list[str], url: str) -> None:
    strict = config.model_copy(update={"callback_allow_private": False})
    error = await fails(
        deliver(CallbackActivities(strict), notice(url)), ErrorType.callback_refused
    )
    assert error.non_retryable


# --- pinning ---------------------------------------------------------------------------------


async def test_a_rebinding_name_stays_pinned_to_its_vetted_address(
    config: Settings, dns: list[str]
) -> None:
    """The first lookup says 127.0.0.1 and any later one 127.0.0.2, where nothing listens: the
    notice reaches 127.0.0.1, so the connection used the vetted answer, not a second lookup."""
    acts = CallbackActivities(config)
    async with serve_target(status(204), name=NAME) as target:
        assert await deliver(acts, notice(f"{target.base}/hook")) == 204
        assert dns == [NAME]
        ((headers, _),) = target.requests
        assert headers["host"] == target.base.removeprefix("http://")
        # The next attempt looks up once more and goes where that answer says, and only there.
        await fails(deliver(acts, notice(f"{target.base}/hook")), CALLBACK_FAILED)
        assert dns == [NAME, NAME]
        assert len(target.requests) == 1


def tls_for(name: str, directory: Path) -> tuple[ssl.SSLContext, ssl.SSLContext, list[str]]:
    """A server context with a certificate for `name` (and no IP address), a client context that
    trusts only it, and the server names the server is asked for (SNI)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    pem = cert.public_bytes(serialization.Encoding.PEM)
    (directory / "cert.pem").write_bytes(pem)
    (directory / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(directory / "cert.pem", directory / "key.pem")
    asked: list[str] = []

    def record(_sock: ssl.SSLObject, server_name: str | None, _ctx: ssl.SSLContext) -> None:
        asked.append(server_name or "")

    server.sni_callback = record
    return server, ssl.create_default_context(cadata=pem.decode()), asked


async def test_tls_names_the_host_while_connecting_to_the_pinned_address(
    config: Settings, dns: list[str], tmp_path: Path
) -> None:
    server, client, asked = tls_for(NAME, tmp_path)
    async with serve_target(status(204), tls=server, name=NAME) as target:
        # The certificate names NAME only: verification passes only if TLS used the name.
        assert await deliver(CallbackActivities(config, tls=client), notice(target.base)) == 204
    assert asked == [NAME] and dns == [NAME]
    assert target.requests[0][0]["host"] == target.base.removeprefix("https://")


# --- capped answers and one deadline per attempt --------------------------------------------


async def test_a_huge_answer_is_read_only_up_to_the_cap(config: Settings) -> None:
    acts = CallbackActivities(config)
    async with serve_target(huge) as target:

        async def hung_up() -> bool:
            return target.finished == 1

        # Once untraced, so that first-use imports and caches are not counted below.
        assert await deliver(acts, notice(target.base)) == 200
        await wait_for(hung_up, timeout=10)
        target.sent = target.finished = 0
        tracemalloc.start()
        try:
            started = time.monotonic()
            assert await deliver(acts, notice(target.base)) == 200
            elapsed = time.monotonic() - started
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        await wait_for(hung_up, timeout=10)
    assert elapsed < 1
    assert peak < 2 * MIB  # of a 400 MiB answer
    # What the server got out before the client hung up: socket buffers, not 400 MiB.
    assert target.sent < 32 * MIB


@pytest.mark.parametrize("where", ["head", "body"])
async def test_a_dripping_target_is_cut_at_the_deadline(
    strict_deadline: Settings, where: str
) -> None:
    acts = CallbackActivities(strict_deadline)
    async with serve_target(drip(where)) as target:
        elapsed = await timed(deliver(acts, notice(target.base)))
    # Each read gets a byte well within the deadline: only a total deadline cuts this.
    assert target.sent >= 2
    assert DEADLINE <= elapsed < DEADLINE + 1.5


async def test_a_hanging_target_is_cut_at_the_deadline(strict_deadline: Settings) -> None:
    acts = CallbackActivities(strict_deadline)
    async with serve_target(hang) as target:
        elapsed = await timed(deliver(acts, notice(target.base)))
    assert len(target.requests) == 1
    assert DEADLINE <= elapsed < DEADLINE + 1.5


@pytest.mark.parametrize(
    "answer",
    [status(500), status(404), status(302, "Location: http://169.254.169.254/latest/meta-data")],
    ids=["500", "404", "redirect"],
)
async def test_non_2xx_answers_are_retried_and_redirects_not_followed(
    config: Settings, answer: Answer
) -> None:
    async with serve_target(answer) as target:
        error = await fails(
            deliver(CallbackActivities(config), notice(target.base)), CALLBACK_FAILED
        )
    assert not error.non_retryable
    assert len(target.requests) == 1


# --- one owner cannot take every slot -------------------------------------------------------


async def test_one_owner_cannot_hold_more_than_its_pending_cap(config: Settings) -> None:
    capped = config.model_copy(update={"callback_max_pending_per_owner": 2})
    acts = CallbackActivities(capped)
    async with serve_target(hang) as slow, serve_target(status(204)) as fast:
        alice = [asyncio.create_task(deliver(acts, notice(slow.base, "alice"))) for _ in range(4)]

        async def two_in_flight_two_turned_away() -> bool:
            return len(slow.requests) == 2 and sum(task.done() for task in alice) == 2

        await wait_for(two_in_flight_two_turned_away, timeout=10)
        turned_away = [task for task in alice if task.done()]
        for task in turned_away:
            error = await fails(task, CALLBACK_OWNER_BUSY)
            assert not error.non_retryable  # Temporal backs off and tries again
        # Another owner still gets through while alice's slow targets hang.
        assert await deliver(acts, notice(fast.base, "bob")) == 204
        assert acts.owners.pending("alice") == 2

        slow.release.set()
        assert await asyncio.gather(*(t for t in alice if t not in turned_away)) == [204, 204]
    assert acts.owners.pending("alice") == 0


# --- signatures -----------------------------------------------------------------------------


def test_sign_and_verify_with_the_derived_key() -> None:
    alice, bob = owner_key("master", "alice"), owner_key("master", "bob")
    assert alice != bob and len(alice) == 32
    assert key_id(alice) != key_id(bob) and alice.hex()[:16] != key_id(alice)
    now = time.time()
    ts, body = str(int(now)), b'{"jobId":"j"}'
    signature = sign(alice, ts, body)
    assert signature.startswith("sha256=")
    assert verify(alice, ts, body, signature, now=now)
    assert not verify(bob, ts, body, signature, now=now)
    assert not verify(alice, ts, body + b" ", signature, now=now)
    assert not verify(alice, ts, body, signature, now=now + 301)  # too old
    assert not verify(alice, ts, body, signature, now=now - 301)  # from the future
    fullwidth = "\uff11\uff12"  # digits to str.isdigit(), not to int() everywhere
    assert not verify(alice, fullwidth, body, sign(alice, fullwidth, body), now=12)
    assert not verify(alice, "-1", body, sign(alice, "-1", body), now=-1)
    assert not verify(alice, ts, body, "sha256=é", now=now)


async def test_the_notice_is_signed_with_the_owner_key_and_a_stable_delivery_id(
    config: Settings,
) -> None:
    acts = CallbackActivities(config)
    key = owner_key(config.callback_secret, "alice")
    async with serve_target(status(204)) as target:
        sent = notice(target.base, "alice", "job-1:run-1:completed")
        assert await deliver(acts, sent) == 204
        assert await deliver(acts, sent) == 204  # a retry of the same notice
        assert await deliver(acts, notice(target.base, "alice", None)) == 204  # an older workflow
    first, retry, older = target.requests
    for headers, body in (first, retry, older):
        assert json.loads(body) == {"jobId": "job-1", "status": "completed"}
        assert verify(key, headers["x-signature-timestamp"], body, headers["x-signature"])
        assert not verify(
            owner_key(config.callback_secret, "bob"),
            headers["x-signature-timestamp"],
            body,
            headers["x-signature"],
        )
        assert headers["x-signature-key-id"] == key_id(key)
    assert first[0]["x-delivery-id"] == retry[0]["x-delivery-id"] == "job-1:run-1:completed"
    assert older[0]["x-delivery-id"].startswith("sha256:")


# --- end to end -----------------------------------------------------------------------------


async def test_the_job_completes_and_the_callback_arrives_signed_while_the_target_hangs(
    env: WorkflowEnvironment, settings: Settings, store: ObjectStore
) -> None:
    config = callback_settings(settings, timeout=DEADLINE)
    put_sources(store, config, {10_001: 10})
    async with serve_target(hang) as target, build_worker(env.client, config, store):
        handle = await start_job(
            env.client, config, [10_001], owner="alice", callback_url=f"{target.base}/hook"
        )

        async def cut_and_retried() -> bool:
            return len(target.requests) >= 2

        await wait_for(cut_and_retried, timeout=30)
        desc = await handle.describe()
        memo = await desc.memo_value(STATE_MEMO_KEY, type_hint=JobState)
        # The job is decided and readable while its callback target hangs.
        assert memo.status is JobStatus.completed
        assert desc.status is WorkflowExecutionStatus.RUNNING
        target.release.set()
        state = await handle.result()
    assert state.status is JobStatus.completed
    key = owner_key(config.callback_secret, "alice")
    delivery_ids = set()
    for headers, body in target.requests:
        assert verify(key, headers["x-signature-timestamp"], body, headers["x-signature"])
        assert headers["x-signature-key-id"] == key_id(key)
        assert json.loads(body)["jobId"] == handle.id
        delivery_ids.add(headers["x-delivery-id"])
    assert delivery_ids == {f"{handle.id}:{desc.run_id}:completed"}
