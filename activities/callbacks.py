"""Terminal-state notices POSTed to a caller's `callback_url`, signed with the owner's key.

A callback URL is chosen by a client, so each delivery attempt treats its target as hostile: the
host is resolved once and every address vetted (private, loopback, link-local and the same
addresses written as IPv4-mapped, NAT64 or 6to4 IPv6 are refused unless `CALLBACK_ALLOW_PRIVATE`);
the connection goes to a vetted address while TLS and `Host` keep the URL's name, so a second DNS
answer can never redirect it; the answer is read up to `CALLBACK_MAX_RESPONSE_BYTES`; the attempt
has one deadline; and one owner's deliveries hold at most `CALLBACK_MAX_PENDING_PER_OWNER` of this
worker's callback slots.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import ipaddress
import json
import socket
import ssl
import time
from collections import Counter
from collections.abc import AsyncGenerator, Iterator, Sequence
from dataclasses import dataclass
from typing import cast

import httpx
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.sealed import sealed_request
from core.config import Settings
from workflows.errors import ErrorType, callback_refused, invalid_request
from workflows.models import CallbackNotice
from workflows.names import SEND_CALLBACK

SIGNATURE_HEADER = "X-Signature"
TIMESTAMP_HEADER = "X-Signature-Timestamp"
KEY_ID_HEADER = "X-Signature-Key-Id"
DELIVERY_ID_HEADER = "X-Delivery-Id"

# Retryable failures of one attempt: Temporal backs off and tries again (refusals are final).
CALLBACK_FAILED = ErrorType.callback_failed.value
CALLBACK_OWNER_BUSY = ErrorType.callback_owner_busy.value

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


# --- signing: what a receiver needs to copy -------------------------------------------------


def owner_key(secret: str, owner: str) -> bytes:
    """The key that signs `owner`'s notices, derived from the master secret; give it to them."""
    return hmac.new(secret.encode(), b"callback:" + owner.encode(), hashlib.sha256).digest()


def key_id(key: bytes) -> str:
    """Names a key (which one signed, after a rotation) without revealing it."""
    return hashlib.sha256(key).hexdigest()[:16]


def sign(key: bytes, timestamp: str, body: bytes) -> str:
    """`sha256=<hex>` of HMAC-SHA256 over `{timestamp}.{body}`."""
    return "sha256=" + hmac.new(key, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def verify(
    key: bytes,
    timestamp: str,
    body: bytes,
    signature: str,
    *,
    tolerance: float = 300,
    now: float | None = None,
) -> bool:
    """A receiver's check: signed with `key`, and signed within `tolerance` seconds of now."""
    if not (timestamp.isascii() and timestamp.isdigit()):
        return False
    if abs((time.time() if now is None else now) - int(timestamp)) > tolerance:
        return False
    expected = sign(key, timestamp, body).encode()
    return hmac.compare_digest(expected, signature.encode("utf-8", "replace"))


# --- vetting the target ---------------------------------------------------------------------

# IPv6 forms that carry an IPv4 address in their last 32 bits: IPv4-compatible (::/96),
# IPv4-translated (::ffff:0:0:0/96) and the well-known NAT64 prefix (64:ff9b::/96).
_IPV4_IN_LAST_32_BITS = [
    ipaddress.IPv6Network("::/96"),
    ipaddress.IPv6Network("::ffff:0:0:0/96"),
    ipaddress.IPv6Network("64:ff9b::/96"),
]
# Local-use NAT64 (RFC 8215): the network decides where the IPv4 address sits, so none is trusted.
_LOCAL_NAT64 = ipaddress.IPv6Network("64:ff9b:1::/48")


def embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address a packet to `address` really reaches (mapped, 6to4, NAT64 ...), if any."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if any(address in network for network in _IPV4_IN_LAST_32_BITS):
        return ipaddress.IPv4Address(int(address) & 0xFFFF_FFFF)
    return None


def is_public(address: IPAddress) -> bool:
    """Whether a callback may connect to `address` when private targets are not allowed."""
    if isinstance(address, ipaddress.IPv6Address):
        if address in _LOCAL_NAT64 or address.is_site_local:
            return False
        inner = embedded_ipv4(address)
        if inner is not None and not is_public(inner):
            return False
    return address.is_global and not address.is_multicast


def refuse_private(host: str, addresses: Sequence[IPAddress]) -> None:
    """Every address must be public: one private answer refuses the target."""
    if not all(is_public(address) for address in addresses):
        raise callback_refused(f"callback host {host} resolves to a non-public address")


@dataclass(frozen=True)
class Target:
    url: httpx.URL
    host: str  # what is resolved, and the TLS server name (IDNA)
    port: int
    literal: bool  # the URL names an IP address itself

    @classmethod
    def parse(cls, url: str) -> Target:
        try:
            parsed = httpx.URL(url)
        except httpx.InvalidURL as exc:
            raise callback_refused(f"callback URL is invalid: {exc}") from None
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise callback_refused("callback URL must be http(s) with a host")
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        try:
            ipaddress.ip_address(parsed.host)
        except ValueError:
            return cls(parsed, parsed.raw_host.decode("ascii"), port, literal=False)
        return cls(parsed, parsed.host, port, literal=True)

    def post(
        self, client: httpx.AsyncClient, address: IPAddress, headers: dict[str, str], body: bytes
    ) -> httpx.Request:
        """A POST sent to `address` that names the URL's host in `Host` and to TLS (SNI and the
        certificate check), so nothing looks the name up again."""
        return client.build_request(
            "POST",
            self.url.copy_with(host=str(address)),
            content=body,
            headers=headers | {"Host": self.url.netloc.decode("ascii")},
            extensions={} if self.literal else {"sni_hostname": self.host},
        )


async def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address of `host`, from one lookup; the attempt connects to these and nothing else."""
    with contextlib.suppress(ValueError):
        return [ipaddress.ip_address(host)]
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ApplicationError(
            f"callback host does not resolve: {host}", type=CALLBACK_FAILED
        ) from exc
    return list(dict.fromkeys(ipaddress.ip_address(info[4][0]) for info in infos))


# --- delivery --------------------------------------------------------------------------------


class OwnerSlots:
    """In-flight deliveries per owner in this process; beyond `limit` an attempt fails at once,
    so one owner's slow targets cannot hold every callback slot of the worker."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._pending: Counter[str] = Counter()

    def pending(self, owner: str) -> int:
        return self._pending[owner]

    @contextlib.contextmanager
    def hold(self, owner: str) -> Iterator[None]:
        if self._pending[owner] >= self.limit:
            # Retryable: Temporal backs off, and the slot serves other owners meanwhile.
            raise ApplicationError(
                "too many callbacks pending for this owner", type=CALLBACK_OWNER_BUSY
            )
        self._pending[owner] += 1
        try:
            yield
        finally:
            self._pending[owner] -= 1
            if not self._pending[owner]:
                del self._pending[owner]


async def read_capped(response: httpx.Response, limit: int) -> bytes:
    """At most `limit` bytes of the answer, undecoded; the rest is never read."""
    kept = bytearray()
    # An async generator: closed on leaving, not whenever the garbage collector gets to it.
    raw = cast("AsyncGenerator[bytes, None]", response.aiter_raw())
    async with contextlib.aclosing(raw) as chunks:
        async for chunk in chunks:
            kept += chunk[: limit - len(kept)]
            if len(kept) >= limit:
                break
    return bytes(kept)


def delivery_id(notice: CallbackNotice, body: bytes) -> str:
    """Stable across the retries of one notice; derived from it for notices that name none."""
    if notice.delivery_id:
        return notice.delivery_id
    return "sha256:" + hashlib.sha256(notice.url.encode() + b"\n" + body).hexdigest()[:32]


def bound_notice(settings: Settings, notice: CallbackNotice) -> CallbackNotice:
    """The notice, if its owner, URL and job are those of its run's sealed request (or it comes
    from a run from before sealing); the owner's key signs nothing else."""
    sealed = sealed_request(settings, notice.request, str(notice.payload.get("jobId")))
    if sealed is None:
        return notice
    if notice.owner != sealed.owner or notice.url != sealed.callback_url:
        raise invalid_request("the notice's owner or URL is not the sealed request's")
    return notice


class CallbackActivities:
    def __init__(self, settings: Settings, tls: ssl.SSLContext | None = None) -> None:
        self.settings = settings
        # Loaded once: the CA bundle costs more than a callback.
        self.tls = tls or httpx.create_ssl_context()
        self.owners = OwnerSlots(settings.callback_max_pending_per_owner)

    @activity.defn(name=SEND_CALLBACK)
    async def send_callback(self, notice: CallbackNotice) -> int:
        """POST the notice; refused targets fail for good, anything short of a 2xx is retried.
        Only a notice bound to its run's sealed request is signed (else `InvalidRequest`)."""
        notice = bound_notice(self.settings, notice)
        target = Target.parse(notice.url)
        body = json.dumps(notice.payload, separators=(",", ":")).encode()
        deadline = self.settings.callback_timeout_seconds
        with self.owners.hold(notice.owner):
            try:
                # One deadline for the whole attempt: lookup, connect, send and read.
                async with asyncio.timeout(deadline):
                    addresses = await resolve(target.host, target.port)
                    if not self.settings.callback_allow_private:
                        refuse_private(target.host, addresses)
                    status = await self._post(target, addresses, self._headers(notice, body), body)
            except TimeoutError:
                raise ApplicationError(
                    f"callback did not answer within {deadline:g} s", type=CALLBACK_FAILED
                ) from None
        if not 200 <= status < 300:
            raise ApplicationError(f"callback answered {status}", type=CALLBACK_FAILED)
        return status

    def _headers(self, notice: CallbackNotice, body: bytes) -> dict[str, str]:
        key = owner_key(self.settings.callback_secret, notice.owner)
        timestamp = str(int(time.time()))
        return {
            "Content-Type": "application/json",
            "Accept-Encoding": "identity",
            "User-Agent": "download-service-callback/1",
            SIGNATURE_HEADER: sign(key, timestamp, body),
            TIMESTAMP_HEADER: timestamp,
            KEY_ID_HEADER: key_id(key),
            DELIVERY_ID_HEADER: delivery_id(notice, body),
        }

    async def _post(
        self, target: Target, addresses: list[IPAddress], headers: dict[str, str], body: bytes
    ) -> int:
        """Status of the first vetted address that accepts the connection; redirects not followed."""
        unreachable: Exception | None = None
        async with httpx.AsyncClient(
            verify=self.tls,
            timeout=self.settings.callback_timeout_seconds,
            follow_redirects=False,
            trust_env=False,  # no proxy: it would resolve the name again
        ) as client:
            for address in addresses:
                try:
                    response = await client.send(
                        target.post(client, address, headers, body), stream=True
                    )
                except httpx.ConnectError as exc:
                    unreachable = exc
                    continue
                except httpx.HTTPError as exc:
                    raise ApplicationError(
                        f"callback failed: {type(exc).__name__}", type=CALLBACK_FAILED
                    ) from exc
                try:
                    await read_capped(response, self.settings.callback_max_response_bytes)
                except httpx.HTTPError as exc:
                    raise ApplicationError(
                        f"callback answer broke off: {type(exc).__name__}", type=CALLBACK_FAILED
                    ) from exc
                finally:
                    await response.aclose()
                return response.status_code
        raise ApplicationError(
            f"callback unreachable: {type(unreachable).__name__}", type=CALLBACK_FAILED
        ) from unreachable
