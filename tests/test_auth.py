"""Authentication that holds: JWT rules, owner names and namespaces, API keys, the legacy routes,
stream tickets, and no credential in a recorded span."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import jwt
import pytest
import websockets
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from api.auth import Authenticator, parse_api_keys
from api.errors import ApiError
from api.tickets import StreamTickets
from core.config import Settings
from core.observability import redact_span_query
from core.storage import ObjectStore
from devstack.servers import free_port
from tests.helpers import (
    POLICY_VIOLATION,
    api_client,
    assert_error,
    initiate,
    put_sources,
    receive_all,
    serve,
    service_process,
    socket_url,
    wait_for,
    with_keys,
)

SECRET = "test-secret-with-enough-length-for-hs256"
ISSUER, AUDIENCE = "https://id.example.test", "downloads"
# Phrases of PyJWT's own messages: none may reach a client.
LIBRARY_WORDS = ("Signature has expired", "Invalid", "claim", "must be", "(iat)", "Expiration")


def jwt_settings(settings: Settings, **update: Any) -> Settings:
    return settings.model_copy(
        update={
            "auth_jwt_secret": SECRET,
            "auth_jwt_issuer": ISSUER,
            "auth_jwt_audience": AUDIENCE,
            "auth_jwt_max_lifetime_seconds": 3600,
            **update,
        }
    )


def claims(sub: object = "carol", lifetime: int = 300, **extra: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"sub": sub, "iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + lifetime, **extra}


def bearer(payload: dict[str, Any], secret: str = SECRET, algorithm: str = "HS256") -> str:
    return jwt.encode(payload, secret, algorithm=algorithm)


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def without(payload: dict[str, Any], *names: str) -> dict[str, Any]:
    return {k: v for k, v in payload.items() if k not in names}


# --- JWT rules ---
async def test_jwt_refusals_are_401_with_a_plain_message(
    settings: Settings, store: ObjectStore
) -> None:
    now = int(time.time())
    refused = [
        (bearer(without(claims(), "exp")), "token has no expiry"),
        (bearer(claims(lifetime=7200)), "token lifetime exceeds the maximum"),
        (bearer(without(claims(lifetime=7200), "iat")), "token lifetime exceeds the maximum"),
        (bearer(claims(iss="https://elsewhere.test")), "token issuer is not accepted"),
        (bearer(without(claims(), "iss")), "token has no issuer"),
        (bearer(claims(aud="someone-else")), "token audience is not accepted"),
        (bearer(without(claims(), "aud")), "token has no audience"),
        (bearer(claims(exp=now - 10, iat=now - 70)), "token expired"),
        (
            bearer(claims(), secret="another-secret-of-enough-length!!"),
            "token signature is invalid",
        ),
        (bearer(claims(iat=now + 600, exp=now + 900)), "token is not valid yet"),
        (bearer(without(claims(), "sub")), "token has no subject"),
        (bearer(claims(sub=12345)), "token subject is not a valid owner"),
        (jwt.encode(claims(), "", algorithm="none"), "token algorithm is not accepted"),
        ("not-a-token", "credentials are neither a known API key nor a well-formed token"),
    ]
    async with api_client(jwt_settings(settings)) as api:
        for token, message in refused:
            resp = await api.post("/v1/download/initiate", json={"file_ids": [10_001]}, **_h(token))
            body = assert_error(resp, 401, "unauthorized")
            assert body["message"] == message, (message, body)
            assert resp.headers["www-authenticate"] == "Bearer"
            assert not any(word in resp.text for word in LIBRARY_WORDS), resp.text

        # Within the limits: with `iat`, and without it (then `exp - now` counts).
        for token in (bearer(claims(lifetime=3500)), bearer(without(claims(), "iat"))):
            assert (await api.get("/v1/downloads", headers=auth(token))).status_code == 200


def _h(token: str) -> dict[str, Any]:
    return {"headers": auth(token)}


@pytest.mark.parametrize("subject", ["x" * 3000, "alice\x00admin", "tab\there", " padded", ""])
async def test_unusable_subjects_are_401_never_5xx(
    settings: Settings, store: ObjectStore, subject: str
) -> None:
    async with api_client(jwt_settings(settings)) as api:
        for method, path, body in [
            ("POST", "/v1/download/initiate", {"file_ids": [10_001]}),
            ("POST", "/v1/download/start", {"file_id": 10_001}),
            ("GET", "/v1/downloads", None),
        ]:
            resp = await api.request(method, path, json=body, headers=auth(bearer(claims(subject))))
            assert resp.status_code == 401, resp.text
            assert resp.json()["message"] == "token subject is not a valid owner"


async def test_jwt_bearer_names_the_owner(settings: Settings, store: ObjectStore) -> None:
    secret = "test-secret-with-enough-length-for-hs256"
    keyed = settings.model_copy(update={"auth_jwt_secret": secret, "auth_jwt_audience": "dl"})

    def token(sub: str, **claims: Any) -> dict[str, str]:
        payload = {"sub": sub, "aud": "dl", "exp": int(time.time()) + 60, **claims}
        return {"Authorization": f"Bearer {jwt.encode(payload, secret, algorithm='HS256')}"}

    async with api_client(keyed) as api:
        job = await initiate(api, [10_001], headers=token("carol"))
        assert (await api.get(job["statusUrl"], headers=token("carol"))).status_code == 200
        assert_error(await api.get(job["statusUrl"], headers=token("dave")), 404)
        expired = token("carol", exp=int(time.time()) - 10)
        assert_error(await api.get(job["statusUrl"], headers=expired), 401)
        other_aud = token("carol", aud="elsewhere")
        assert_error(await api.get(job["statusUrl"], headers=other_aud), 401)
        forged = jwt.encode({"sub": "carol", "aud": "dl"}, "another-secret-of-enough-length!!")
        resp = await api.get(job["statusUrl"], headers={"Authorization": f"Bearer {forged}"})
        assert_error(resp, 401)
        assert resp.headers["www-authenticate"] == "Bearer"


async def test_jwt_signed_with_a_private_key(settings: Settings, store: ObjectStore) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    keyed = settings.model_copy(update={"auth_jwt_public_key": public.decode()})
    token = jwt.encode({"sub": "grace", "exp": int(time.time()) + 60}, key, algorithm="RS256")
    async with api_client(keyed) as api:
        job = await initiate(api, [10_001], headers={"Authorization": f"Bearer {token}"})
        assert job["status"] == "queued"
        # An HS token cannot pass for the RS key's owner: no secret is configured.
        forged = jwt.encode({"sub": "grace"}, "guess-guess-guess-guess-guess-32", algorithm="HS256")
        resp = await api.get(job["statusUrl"], headers={"Authorization": f"Bearer {forged}"})
        assert_error(resp, 401)


# --- owners and API keys ---
async def test_api_key_and_jwt_owners_live_apart(settings: Settings, store: ObjectStore) -> None:
    """An API key's owner "alice" and a token whose subject is "alice" are two owners."""
    both = jwt_settings(settings, auth_api_keys="alice-key=alice")
    as_key, as_jwt = {"X-API-Key": "alice-key"}, auth(bearer(claims("alice")))
    same = {"Idempotency-Key": f"order-{time.time_ns()}"}
    async with api_client(both) as api:
        by_key = await initiate(api, [10_001], headers={**as_key, **same})
        by_jwt = await initiate(api, [10_001], headers={**as_jwt, **same})
        assert by_key["jobId"] != by_jwt["jobId"]
        for mine, theirs in ((as_key, by_key), (as_jwt, by_jwt)):
            assert (await api.get(theirs["statusUrl"], headers=mine)).status_code == 200
        for mine, theirs in ((as_key, by_jwt), (as_jwt, by_key)):
            assert_error(await api.get(theirs["statusUrl"], headers=mine), 404, "not_found")
            assert_error(await api.delete(theirs["detailsUrl"], headers=mine), 404)
            ticket = await api.post(f"/v1/download/{theirs['jobId']}/ticket", headers=mine)
            assert_error(ticket, 404)

        async def listed(headers: dict[str, str], own: str) -> set[str] | None:
            jobs = (await api.get("/v1/downloads", headers=headers)).json()["jobs"]
            ids = {j["jobId"] for j in jobs}
            return ids if own in ids else None

        assert by_jwt["jobId"] not in await wait_for(lambda: listed(as_key, by_key["jobId"]))
        assert by_key["jobId"] not in await wait_for(lambda: listed(as_jwt, by_jwt["jobId"]))


async def test_hashed_api_keys_and_no_key_kept_in_the_clear(
    settings: Settings, store: ObjectStore
) -> None:
    digest = hashlib.sha256(b"hashed-secret-key").hexdigest()
    keyed = settings.model_copy(
        update={"auth_api_keys": f"sha256:{digest}=hashed-owner,plain-secret-key=plain-owner"}
    )
    authenticator = Authenticator(keyed)
    assert authenticator.owner("hashed-secret-key") == "key:hashed-owner"
    assert authenticator.owner("plain-secret-key") == "key:plain-owner"
    assert "plain-secret-key" not in repr(vars(authenticator))
    async with api_client(keyed) as api:
        for key in ("hashed-secret-key", "plain-secret-key"):
            assert (await api.get("/v1/downloads", headers={"X-API-Key": key})).status_code == 200
        # The configured digest is not itself a key.
        wrong = await api.get("/v1/downloads", headers={"X-API-Key": f"sha256:{digest}"})
        assert assert_error(wrong, 401)["message"] == "unknown API key"


@pytest.mark.parametrize(
    "entries",
    ["lonely-key", "k=k", f"k={'o' * 129}", "k=tab\towner", "sha256:abcd=owner", "k= padded"],
)
def test_bad_api_key_entries_stop_the_start(plain_settings: Settings, entries: str) -> None:
    with pytest.raises(ValueError, match="AUTH_API_KEYS") as caught:
        parse_api_keys(plain_settings.model_copy(update={"auth_api_keys": entries}).api_keys)
    assert "k=" not in str(caught.value) and "abcd" not in str(caught.value)


# --- the legacy routes ---
async def test_legacy_check_and_start_need_credentials(
    settings: Settings, store: ObjectStore
) -> None:
    put_sources(store, settings, {10_001: 1234})
    keyed = with_keys(settings, a="alice").model_copy(update={"request_timeout_ms": 1500})
    async with api_client(keyed) as api:
        for path in ("/v1/download/check", "/v1/download/start"):
            anonymous = await api.post(path, json={"file_id": 10_001})
            assert assert_error(anonymous, 401, "unauthorized")["message"].startswith(
                "authentication required"
            )
            wrong = await api.post(path, json={"file_id": 10_001}, headers={"X-API-Key": "nope"})
            assert_error(wrong, 401)
        alice = {"X-API-Key": "alice-key"}
        found = await api.post("/v1/download/check", json={"file_id": 10_001}, headers=alice)
        assert found.json() == {"file_id": 10_001, "available": True, "s3Key": None, "size": 1234}
        assert settings.source_key(10_001) not in found.text
        # No worker: the job is handed back within the request timeout.
        started = await api.post("/v1/download/start", json={"file_id": 10_001}, headers=alice)
        assert started.status_code == 202, started.text


# --- stream tickets ---
def _payload(ticket: str) -> dict[str, Any]:
    part = ticket.split(".")[1]
    decoded: dict[str, Any] = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    return decoded


def _tampered(ticket: str, other_job: str) -> list[str]:
    """The payload re-pointed at another job under the old signature, and a changed signature."""
    header, payload, signature = ticket.split(".")
    claims = {**_payload(ticket), "job": other_job}
    moved = base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")
    middle = len(signature) // 2
    flipped = "A" if signature[middle] != "A" else "B"
    changed = signature[:middle] + flipped + signature[middle + 1 :]
    return [f"{header}.{moved}.{signature}", f"{header}.{payload}.{changed}"]


async def _first_event(client: httpx.AsyncClient, url: str) -> str:
    async with client.stream("GET", url) as resp:
        assert resp.status_code == 200, await resp.aread()
        async for line in resp.aiter_lines():
            if line.startswith("event:"):
                return line
    raise AssertionError("the stream ended without an event")


async def _socket_refusal(url: str) -> tuple[int | None, str | None]:
    async with websockets.connect(url) as socket:
        messages, code = await receive_all(socket)
    assert messages == []
    return code, socket.close_reason


async def test_tickets_open_only_their_own_jobs_streams(
    settings: Settings, store: ObjectStore
) -> None:
    keyed = with_keys(settings, a="alice", b="bob")
    alice, bob = {"X-API-Key": "alice-key"}, {"X-API-Key": "bob-key"}
    async with serve(keyed) as (client, app):
        job_id = (await initiate(client, [10_001], headers=alice))["jobId"]
        other_id = (await initiate(client, [10_001], headers=alice))["jobId"]

        # Issued to the job's owner only.
        path = f"/v1/download/{job_id}/ticket"
        assert_error(await client.post(path), 401, "unauthorized")
        assert_error(await client.post(path, headers=bob), 404, "not_found")
        issued = await client.post(path, headers=alice)
        assert issued.status_code == 200, issued.text
        assert issued.headers["cache-control"] == "no-store"
        body = issued.json()
        assert set(body) == {"ticket", "expiresAt"}
        ttl = (datetime.fromisoformat(body["expiresAt"]) - datetime.now(UTC)).total_seconds()
        assert settings.stream_ticket_ttl_seconds - 5 < ttl <= settings.stream_ticket_ttl_seconds
        ticket = body["ticket"]
        assert {"sub": "key:alice", "job": job_id}.items() <= _payload(ticket).items()

        # Accepted on that job's SSE routes and WebSocket.
        for route in ("subscribe", "progress"):
            url = f"/v1/download/{route}/{job_id}?ticket={ticket}"
            assert await _first_event(client, url) == "event: progress"
        async with websockets.connect(socket_url(client, job_id, f"?ticket={ticket}")) as socket:
            first = json.loads(await asyncio.wait_for(socket.recv(), 10))
        assert first["data"]["jobId"] == job_id

        # Refused: for another job, expired, tampered, or not a ticket at all.
        tickets: StreamTickets = app.state.services.tickets
        expired = tickets.issue("key:alice", job_id, now=time.time() - 600).ticket
        refusals = [
            (other_id, ticket, "ticket is for another job"),
            (job_id, expired, "ticket expired"),
            *((job_id, forged, "ticket is invalid") for forged in _tampered(ticket, other_id)),
            (other_id, _tampered(ticket, other_id)[0], "ticket is invalid"),
            (job_id, "garbage", "ticket is invalid"),
        ]
        for target, candidate, message in refusals:
            resp = await client.get(f"/v1/download/subscribe/{target}?ticket={quote(candidate)}")
            assert assert_error(resp, 401, "unauthorized")["message"] == message
            url = socket_url(client, target, f"?ticket={quote(candidate)}")
            assert await _socket_refusal(url) == (POLICY_VIOLATION, message)

        # A ticket opens streams only: neither another route nor a bearer header takes it.
        assert_error(await client.get(f"/v1/download/status/{job_id}?ticket={ticket}"), 401)
        bearer_ticket = await client.get(f"/v1/download/status/{job_id}", headers=auth(ticket))
        assert_error(bearer_ticket, 401)

        # A bearer token in the URL is not read any more, on either transport.
        in_url = await client.get(f"/v1/download/subscribe/{job_id}?access_token=alice-key")
        assert "ticket" in assert_error(in_url, 401, "unauthorized")["message"]
        code, _ = await _socket_refusal(socket_url(client, job_id, "?access_token=alice-key"))
        assert code == POLICY_VIOLATION


def test_tickets_from_one_secret_hold_across_processes(plain_settings: Settings) -> None:
    shared = plain_settings.model_copy(update={"stream_ticket_secret": "t" * 40})
    ticket = StreamTickets(shared).issue("key:alice", "job-1").ticket
    assert StreamTickets(shared).owner(ticket, "job-1") == "key:alice"
    # Without the setting each process has its own secret: another replica refuses the ticket.
    local = StreamTickets(plain_settings).issue("key:alice", "job-1").ticket
    with pytest.raises(ApiError, match="ticket is invalid"):
        StreamTickets(plain_settings).owner(local, "job-1")


# --- nothing secret in a recorded span ---
def _recorded(span: ReadableSpan) -> str:
    """Everything a span carries as text: name, attributes, events' attributes."""
    texts = [span.name]
    texts += [f"{k}={v!r}" for k, v in (span.attributes or {}).items()]
    for event in span.events:
        texts += [f"{k}={v!r}" for k, v in (event.attributes or {}).items()]
    return "\n".join(texts)


async def follow_with_a_ticket(
    client: httpx.AsyncClient, credentials: dict[str, str]
) -> tuple[str, str]:
    """Start a job, take a stream ticket for it, and open its SSE and WebSocket streams with
    the ticket in their URLs; returns the job id and the ticket."""
    job_id = (await initiate(client, [10_001], headers=credentials))["jobId"]
    issued = await client.post(f"/v1/download/{job_id}/ticket", headers=credentials)
    ticket: str = issued.json()["ticket"]
    url = f"/v1/download/subscribe/{job_id}?ticket={ticket}"
    assert await _first_event(client, url) == "event: progress"
    async with websockets.connect(socket_url(client, job_id, f"?ticket={ticket}")) as socket:
        await asyncio.wait_for(socket.recv(), 10)
    return job_id, ticket


async def test_no_span_attribute_holds_a_token_or_ticket(
    settings: Settings, store: ObjectStore
) -> None:
    keyed = jwt_settings(settings, auth_api_keys="span-secret-key=spans")
    token = bearer(claims("span-owner"))
    exporter = InMemorySpanExporter()
    async with serve(keyed) as (client, _):
        provider = trace.get_tracer_provider()
        assert isinstance(provider, TracerProvider)
        processor = SimpleSpanProcessor(exporter)
        provider.add_span_processor(processor)
        try:
            job_id, ticket = await follow_with_a_ticket(client, auth(token))
            status = f"/v1/download/status/{job_id}"
            await client.get(f"{status}?access_token={token}", headers=auth(token))
            await client.get(f"/v1/download/subscribe/{job_id}?access_token={token}")
            await client.get(f"{status}?api_key=span-secret-key", headers={"X-API-Key": "x"})

            async def both_streams_ended() -> bool:
                urls = [_recorded(span) for span in exporter.get_finished_spans()]
                with_ticket = [u for u in urls if "ticket=REDACTED" in u]
                return any("/subscribe/" in u for u in with_ticket) and any(
                    "/stream/" in u for u in with_ticket
                )

            await wait_for(both_streams_ended, timeout=20)
        finally:
            processor.shutdown()
    texts = [_recorded(span) for span in exporter.get_finished_spans()]
    # Each of the seven requests above left its span: the scan below looks at every one.
    assert len([t for t in texts if "/v1/download/" in t]) >= 7
    for secret in (token, ticket, quote(ticket), "span-secret-key"):
        leaks = [text for text in texts if secret in text]
        assert leaks == [], leaks


async def test_the_api_process_logs_no_ticket_or_key(
    subprocess_env: dict[str, str], store: ObjectStore, tmp_path: Path
) -> None:
    """The real `download-api` (its logging set up as in production): uvicorn's own WebSocket
    handshake line keeps the path, and our access lines log the path only."""
    port = free_port()
    env = {
        **subprocess_env,
        "PORT": str(port),
        "AUTH_API_KEYS": "log-secret-key=logger",
        "STREAM_TICKET_SECRET": "s" * 40,
        "LOG_LEVEL": "INFO",
    }
    log = tmp_path / "api.log"
    with service_process("download-api", env, log) as proc:
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:

                async def live() -> bool:
                    with contextlib.suppress(httpx.TransportError):
                        return (await client.get("/livez")).status_code == 200
                    return False

                await wait_for(live, timeout=30)
                headers = {"X-API-Key": "log-secret-key"}
                job_id, ticket = await follow_with_a_ticket(client, headers)
                await client.get(f"/v1/download/status/{job_id}?access_token=log-secret-key")
        finally:
            proc.terminate()  # a clean stop writes every log line
            proc.wait(timeout=20)
    text = log.read_text()
    assert "WebSocket /v1/download/stream/" in text and "?ticket=REDACTED" in text, text
    assert f"/v1/download/status/{job_id}" in text
    for secret in (ticket, "log-secret-key"):
        assert secret not in text


def test_every_url_attribute_loses_its_query_values() -> None:
    """Both semantic-convention generations: `http.url`/`http.target` and `url.full`/`url.query`."""
    span = TracerProvider().get_tracer("t").start_span("GET /x")
    assert isinstance(span, ReadableSpan)
    span.set_attributes(
        {
            "http.url": "http://api.test/x?ticket=t0p&lastEventId=1",
            "http.target": "/x?access_token=s3cr3t",
            "url.full": "http://api.test/x?ticket=t0p",
            "url.query": "ticket=t0p&flag&weird%20name=s3cr3t",
            "url.path": "/x",
        }
    )
    redact_span_query(span)
    assert span.attributes == {
        "http.url": "http://api.test/x?ticket=REDACTED&lastEventId=REDACTED",
        "http.target": "/x?access_token=REDACTED",
        "url.full": "http://api.test/x?ticket=REDACTED",
        "url.query": "ticket=REDACTED&REDACTED&REDACTED",
        "url.path": "/x",
    }
