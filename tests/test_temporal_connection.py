"""Connecting as every Temporal client does: the worker and the API reach the dev server through
a TLS terminator that demands client certificates (certificates made here), configured by
Temporal's own variables or a TOML profile; a client without a certificate is refused; production
refuses a plaintext connection unless the network is declared trusted."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import os
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from temporalio.client import Client
from temporalio.service import TLSConfig
from temporalio.testing import WorkflowEnvironment

from core.config import Settings, load_settings
from core.storage import ObjectStore
from devstack.cli import stack_environment
from devstack.servers import BIND, free_port, wait_for_port
from tests.helpers import SAFE_PRODUCTION, put_sources, service_process
from workflows.client import connect

SERVER_NAME = "temporal.test"


@dataclass(frozen=True)
class Certificates:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
    *,
    ca: bool = False,
    san: list[x509.GeneralName] | None = None,
    usage: x509.ObjectIdentifier | None = None,
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    issuer_name, issuer_key = issuer or (name, key)
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    if usage:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def make_certificates(directory: Path) -> Certificates:
    """A CA, a server certificate for SERVER_NAME and a client certificate, signed by the CA."""
    ca_key, server_key, client_key = _key(), _key(), _key()
    ca = _cert("test CA", ca_key, None, ca=True)
    issuer = (ca.subject, ca_key)
    server = _cert(
        SERVER_NAME,
        server_key,
        issuer,
        san=[x509.DNSName(SERVER_NAME), x509.IPAddress(ipaddress.ip_address(BIND))],
        usage=ExtendedKeyUsageOID.SERVER_AUTH,
    )
    client = _cert("download-worker", client_key, issuer, usage=ExtendedKeyUsageOID.CLIENT_AUTH)
    files = {
        "ca.pem": ca.public_bytes(serialization.Encoding.PEM),
        "server.pem": server.public_bytes(serialization.Encoding.PEM),
        "server.key": _pem_key(server_key),
        "client.pem": client.public_bytes(serialization.Encoding.PEM),
        "client.key": _pem_key(client_key),
    }
    for name, data in files.items():
        (directory / name).write_bytes(data)
    d = directory
    return Certificates(
        d / "ca.pem", d / "server.pem", d / "server.key", d / "client.pem", d / "client.key"
    )


class TlsTerminator:
    """A TLS front for the dev server that demands a client certificate signed by the CA, and
    forwards the decrypted bytes (gRPC over HTTP/2) to it; runs its own loop in a thread so the
    test may block. Counts the handshakes it completed and refused."""

    def __init__(self, certs: Certificates, upstream: str) -> None:
        self.port = free_port()
        self.upstream_host, _, port = upstream.rpartition(":")
        self.upstream_port = int(port)
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=certs.ca)
        self.context.load_cert_chain(certs.server_cert, certs.server_key)
        self.context.verify_mode = ssl.CERT_REQUIRED
        self.context.set_alpn_protocols(["h2"])
        self.accepted = 0
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    @property
    def address(self) -> str:
        return f"{BIND}:{self.port}"

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        up_reader, up_writer = await asyncio.open_connection(self.upstream_host, self.upstream_port)
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    async def _start(self) -> asyncio.Server:
        # A handshake without a valid client certificate fails in asyncio's SSL layer: the
        # connection is closed before `_handle` runs.
        return await asyncio.start_server(
            self._handle, BIND, self.port, ssl=self.context, ssl_handshake_timeout=10
        )

    def __enter__(self) -> TlsTerminator:
        self.thread.start()
        self.server = asyncio.run_coroutine_threadsafe(self._start(), self.loop).result()
        wait_for_port(self.port)
        return self

    def __exit__(self, *exc: object) -> None:
        async def stop() -> None:
            self.server.close()
            for task in asyncio.all_tasks() - {asyncio.current_task()}:
                task.cancel()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()


@pytest.fixture
def certs(tmp_path: Path) -> Certificates:
    return make_certificates(tmp_path)


@pytest.fixture
def terminator(certs: Certificates, env: WorkflowEnvironment) -> Iterator[TlsTerminator]:
    with TlsTerminator(certs, env.client.service_client.config.target_host) as running:
        yield running


def mtls_variables(certs: Certificates, terminator: TlsTerminator) -> dict[str, str]:
    """Temporal's standard variables, as for any Temporal client behind mutual TLS."""
    return {
        "TEMPORAL_ADDRESS": terminator.address,
        "TEMPORAL_TLS_SERVER_CA_CERT_PATH": str(certs.ca),
        "TEMPORAL_TLS_SERVER_NAME": SERVER_NAME,
        "TEMPORAL_TLS_CLIENT_CERT_PATH": str(certs.client_cert),
        "TEMPORAL_TLS_CLIENT_KEY_PATH": str(certs.client_key),
    }


async def test_worker_and_api_processes_complete_a_job_over_mutual_tls(
    certs: Certificates,
    terminator: TlsTerminator,
    settings: Settings,
    store: ObjectStore,
    subprocess_env: dict[str, str],
    tmp_path: Path,
) -> None:
    data = put_sources(store, settings, {10001: 1000, 10002: 70_000})
    api_port = free_port()
    environment = {**subprocess_env, **mtls_variables(certs, terminator), "PORT": str(api_port)}
    worker_log, api_log = tmp_path / "worker.log", tmp_path / "api.log"
    with (
        service_process("download-worker", environment, worker_log),
        service_process("download-api", environment, api_log) as api_proc,
    ):
        wait_for_port(api_port, timeout=60)
        assert api_proc.poll() is None
        async with httpx.AsyncClient(base_url=f"http://{BIND}:{api_port}", timeout=30) as api:
            started = await api.post("/v1/download/initiate", json={"file_ids": [10001, 10002]})
            assert started.status_code == 200, started.text
            job_id = started.json()["jobId"]
            status: dict[str, object] = {}
            for _ in range(600):
                status = (await api.get(f"/v1/download/status/{job_id}")).json()
                if status["status"] in {"completed", "failed", "cancelled"}:
                    break
                await asyncio.sleep(0.1)
            assert status["status"] == "completed", status
            assert status["completedFiles"] == len(data)
    assert terminator.accepted >= 2  # the worker's and the API's connections, all through TLS
    assert "mutual TLS" in worker_log.read_text()


async def test_a_client_without_a_certificate_is_refused(
    certs: Certificates, terminator: TlsTerminator
) -> None:
    ca = certs.ca.read_bytes()
    for tls in (TLSConfig(server_root_ca_cert=ca, domain=SERVER_NAME), False):
        with pytest.raises(RuntimeError, match="Failed client connect"):
            await Client.connect(terminator.address, tls=tls)
    assert terminator.accepted == 0


async def test_settings_from_env_file_reach_temporal_over_mutual_tls(
    certs: Certificates, terminator: TlsTerminator, tmp_path: Path
) -> None:
    """TEMPORAL_TLS_* given to the settings (as `.env` does) make the same connection."""
    dotenv = tmp_path / ".env"
    lines = mtls_variables(certs, terminator) | {"TEMPORAL_API_KEY": ""}
    dotenv.write_text("".join(f"{name}={value}\n" for name, value in lines.items()))
    from_file = Settings(_env_file=dotenv)  # type: ignore[call-arg]
    client = await connect(from_file)
    assert await client.service_client.check_health()
    assert client.service_client.config.target_host == terminator.address


async def test_a_toml_profile_is_read_and_the_environment_overrides_it(
    certs: Certificates,
    terminator: TlsTerminator,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    config_file = tmp_path / "temporal.toml"
    config_file.write_text(
        f"""
[profile.default]
address = "{BIND}:1"

[profile.staging]
address = "{terminator.address}"
namespace = "somewhere-else"

[profile.staging.tls]
server_name = "{SERVER_NAME}"
server_ca_cert_path = "{certs.ca}"
client_cert_path = "{certs.client_cert}"
client_key_path = "{certs.client_key}"
"""
    )
    for name in Settings.model_fields:
        if name.startswith("temporal_"):
            monkeypatch.delenv(name.upper(), raising=False)
    monkeypatch.setenv("TEMPORAL_CONFIG_FILE", str(config_file))
    monkeypatch.setenv("TEMPORAL_PROFILE", "staging")
    profile_only = Settings(_env_file=None)  # type: ignore[call-arg]
    config = profile_only.temporal_client_config()
    assert (config["target_host"], config["namespace"]) == (terminator.address, "somewhere-else")
    # The environment wins over the profile, field by field; the rest comes from the profile.
    monkeypatch.setenv("TEMPORAL_NAMESPACE", "default")
    client = await connect(Settings(_env_file=None))  # type: ignore[call-arg]
    assert client.namespace == "default"
    assert await client.count_workflows() is not None
    assert terminator.accepted >= 1


# Safe in production, except that nothing says the network to Temporal is trusted.
UNSAFE_TEMPORAL = {k: v for k, v in SAFE_PRODUCTION.items() if k != "TEMPORAL_TRUSTED_NETWORK"}


@pytest.mark.parametrize(
    ("variables", "refused"),
    [
        ({}, True),
        ({"TEMPORAL_TLS": "false", "TEMPORAL_API_KEY": "k" * 40}, True),
        ({"TEMPORAL_TRUSTED_NETWORK": "true"}, False),
        ({"TEMPORAL_API_KEY": "k" * 40}, False),
        ({"TEMPORAL_TLS": "true"}, False),
    ],
)
def test_production_refuses_a_plaintext_connection_unless_the_network_is_trusted(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    variables: dict[str, str],
    refused: bool,
) -> None:
    for name in Settings.model_fields:
        if name.startswith("temporal_"):
            monkeypatch.delenv(name.upper(), raising=False)
    monkeypatch.setenv("TEMPORAL_CONFIG_FILE", "/dev/null")
    for name, value in (UNSAFE_TEMPORAL | variables).items():
        monkeypatch.setenv(name, value)
    if not refused:
        assert load_settings(_env_file=None).environment == "production"
        return
    with pytest.raises(SystemExit):
        load_settings(_env_file=None)
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("unsafe production configuration: the connection to Temporal is")
    assert "TEMPORAL_TRUSTED_NETWORK=true" in line


def test_an_unusable_temporal_configuration_stops_the_start_with_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "absent.pem"
    for variables, said in [
        ({"TEMPORAL_TLS_CLIENT_CERT_PATH": str(missing)}, str(missing)),
        ({"TEMPORAL_PROFILE": "nowhere"}, "nowhere"),
        ({"TEMPORAL_TLS_DISABLE_HOST_VERIFICATION": "true"}, "TEMPORAL_TLS_SERVER_CA_CERT_PATH"),
    ]:
        with pytest.raises(ValueError, match=said):
            Settings(
                _env_file=None,  # type: ignore[call-arg]
                temporal_config_file="/dev/null",
                **{name.lower(): value for name, value in variables.items()},  # type: ignore[arg-type]
            ).temporal_client_config()


def test_the_local_stack_ignores_an_operators_temporal_profile(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`download-stack run` points its worker and API at its own plaintext dev server, whatever
    Temporal credentials the operator's shell carries."""
    config_file = tmp_path / "temporal.toml"
    config_file.write_text('[profile.cloud]\naddress = "x.tmprl.cloud:7233"\napi_key = "k"\n')
    for name, value in {
        "TEMPORAL_CONFIG_FILE": str(config_file),
        "TEMPORAL_PROFILE": "cloud",
        "TEMPORAL_API_KEY": "cloud-key",
        "TEMPORAL_TLS_CLIENT_CERT_PATH": str(tmp_path / "absent.pem"),
    }.items():
        monkeypatch.setenv(name, value)
    stack = stack_environment(Settings(_env_file=None), tmp_path)  # type: ignore[call-arg]
    for name in list(os.environ):
        monkeypatch.delenv(name)
    for name, value in stack.items():
        monkeypatch.setenv(name, value)
    config = Settings(_env_file=None).temporal_client_config()  # type: ignore[call-arg]
    assert config == {
        "target_host": stack["TEMPORAL_ADDRESS"],
        "namespace": "default",
        "tls": False,
    }
