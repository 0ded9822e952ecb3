"""Terminal-state notices POSTed to a caller's `callback_url`, signed with HMAC-SHA256."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import json
import socket
import time
from urllib.parse import urlsplit

import httpx
from temporalio import activity
from temporalio.exceptions import ApplicationError

from core.config import Settings
from workflows.errors import callback_refused
from workflows.models import CallbackNotice
from workflows.names import SEND_CALLBACK

SIGNATURE_HEADER = "X-Signature"
TIMESTAMP_HEADER = "X-Signature-Timestamp"


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """`sha256=<hex>` over `{timestamp}.{body}`; receivers recompute it to trust the notice."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


async def check_target(url: str, allow_private: bool) -> None:
    """Refuse non-HTTP URLs and, unless allowed, hosts resolving to internal addresses."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise callback_refused(f"callback URL must be http(s) with a host: {url}")
    if allow_private:
        return
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(
            parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
        )
    except socket.gaierror as exc:
        raise ApplicationError(f"callback host does not resolve: {parts.hostname}") from exc
    for info in infos:
        address = ipaddress.ip_address(info[4][0])
        if not address.is_global or address.is_multicast:
            raise callback_refused(
                f"callback host {parts.hostname} resolves to a non-public address"
            )


class CallbackActivities:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @activity.defn(name=SEND_CALLBACK)
    async def send_callback(self, notice: CallbackNotice) -> int:
        """POST the notice; non-2xx answers raise so Temporal retries them."""
        await check_target(notice.url, self.settings.callback_allow_private)
        body = json.dumps(notice.payload, separators=(",", ":")).encode()
        timestamp = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            TIMESTAMP_HEADER: timestamp,
            SIGNATURE_HEADER: sign(self.settings.callback_secret, timestamp, body),
            "User-Agent": "download-service-callback/1",
        }
        async with httpx.AsyncClient(
            timeout=self.settings.callback_timeout_seconds, follow_redirects=False
        ) as client:
            try:
                response = await client.post(notice.url, content=body, headers=headers)
            except httpx.HTTPError as exc:
                raise ApplicationError(f"callback unreachable: {type(exc).__name__}") from exc
        if not 200 <= response.status_code < 300:
            raise ApplicationError(f"callback answered {response.status_code}")
        return response.status_code
