"""Settings: environment names of the existing service, parsing, and one-line errors."""

from __future__ import annotations

import subprocess
import sys

import pytest

from core.config import Process, Settings, load_settings
from devstack.servers import BIN
from tests.helpers import SAFE_PRODUCTION


def test_defaults_keep_the_existing_service_names(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("PORT", "S3_BUCKET_NAME", "DOWNLOAD_DELAY_ENABLED", "RATE_LIMIT_MAX_REQUESTS"):
        monkeypatch.delenv(name, raising=False)
    s = Settings(_env_file=None)  # type: ignore[call-arg]
    assert s.port == 3000
    assert s.s3_bucket_name == "downloads"
    assert s.source_key(70000) == "downloads/70000.zip"
    assert s.rate_limit_max_requests == 100
    assert s.rate_limit_window_ms == 60_000
    assert s.request_timeout_ms == 30_000
    assert s.download_delay_enabled is False


@pytest.mark.parametrize(("raw", "expected"), [("false", False), ("0", False), ("true", True)])
def test_booleans(monkeypatch: pytest.MonkeyPatch, raw: str, expected: bool) -> None:
    monkeypatch.setenv("DOWNLOAD_DELAY_ENABLED", raw)
    monkeypatch.setenv("S3_FORCE_PATH_STYLE", raw)
    s = Settings(_env_file=None)  # type: ignore[call-arg]
    assert s.download_delay_enabled is expected
    assert s.s3_force_path_style is expected


def test_environment_values_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORT", "8080")
    monkeypatch.setenv("CORS_ORIGINS", "https://a.example, https://b.example")
    monkeypatch.setenv("TEMPORAL_TASK_QUEUE", "bundles")
    monkeypatch.setenv("AUTH_API_KEYS", "k1=alice,k2=bob")
    s = Settings(_env_file=None)  # type: ignore[call-arg]
    assert s.port == 8080
    assert s.cors_origin_list == ["https://a.example", "https://b.example"]
    assert s.temporal_task_queue == "bundles"
    assert s.api_keys == {"k1": "alice", "k2": "bob"}
    assert s.auth_enabled


def test_archive_and_source_templates_must_name_their_placeholder(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("S3_SOURCE_KEY_TEMPLATE", "downloads/static.zip")
    with pytest.raises(SystemExit):
        load_settings(_env_file=None)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PORT", "not-a-port"),
        ("PORT", "70000"),
        ("DOWNLOAD_DELAY_ENABLED", "maybe"),
        ("RATE_LIMIT_MAX_REQUESTS", "0"),
        ("TRUSTED_PROXIES", "300.1.1.1"),
        ("ARCHIVE_COMPRESSION", "bzip2"),
    ],
)
def test_bad_value_stops_with_one_clear_line(name: str, value: str) -> None:
    """A bad value exits non-zero naming the variable, with no traceback."""
    code = "from core.config import load_settings; load_settings(_env_file=None)"
    env = {"PATH": "/usr/bin:/bin", name: value}
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert name in lines[0] or (name == "TRUSTED_PROXIES" and "TRUSTED_PROXIES" in proc.stderr)


def test_delay_range_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOWNLOAD_DELAY_MIN_MS", "5000")
    monkeypatch.setenv("DOWNLOAD_DELAY_MAX_MS", "100")
    with pytest.raises(SystemExit):
        load_settings(_env_file=None)


def test_env_example_documents_every_setting() -> None:
    from pathlib import Path

    text = (Path(__file__).parent.parent / ".env.example").read_text()
    # The settings come first; compose's own variables follow (checked with the deploy files).
    text = text.split("\n# --- docker compose")[0]
    documented = {line.split("=", 1)[0] for line in text.splitlines() if "=" in line[:40]}
    documented = {d for d in documented if not d.startswith("#")}
    assert {name.upper() for name in Settings.model_fields} == documented


def test_env_example_values_are_the_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    from pathlib import Path

    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
    example = Settings(_env_file=Path(__file__).parent.parent / ".env.example")  # type: ignore[call-arg]
    defaults = Settings(_env_file=None)  # type: ignore[call-arg]
    for name in Settings.model_fields:
        assert (getattr(example, name) or None) == (getattr(defaults, name) or None), name


@pytest.mark.parametrize(
    ("entry_point", "expected"),
    [
        (
            "download-api",
            [
                "no authentication",
                "STREAM_TICKET_SECRET",
                "REQUEST_SEAL_SECRET",
                "S3 credentials",
                "S3_PUBLIC_ENDPOINT",
                "S3_PRESIGN_ACCESS_KEY_ID",
                "TEMPORAL_TRUSTED_NETWORK",
            ],
        ),
        (
            "download-worker",
            [
                "CALLBACK_SECRET",
                "REQUEST_SEAL_SECRET",
                "S3 credentials",
                "CALLBACK_ALLOW_PRIVATE",
                "TEMPORAL_TRUSTED_NETWORK",
            ],
        ),
    ],
)
def test_production_refuses_to_start_unsafe(entry_point: str, expected: list[str]) -> None:
    """Every unsafe setting the process uses is named, one line each, and the process exits
    before serving; the worker is not asked for the API's secrets, nor the API for the
    worker's."""
    env = {
        "PATH": "/usr/bin:/bin",
        "ENVIRONMENT": "production",
        "CALLBACK_SECRET": "change-me",
        "CALLBACK_ALLOW_PRIVATE": "true",
    }
    proc = subprocess.run(
        [str(BIN / entry_point)], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert all(line.startswith("unsafe production configuration: ") for line in lines), lines
    assert len(lines) == len(expected), lines
    for line, name in zip(lines, expected, strict=True):
        assert name in line


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"AUTH_JWT_SECRET": "short"}, "AUTH_JWT_SECRET"),
        ({"CALLBACK_SECRET": "change-me"}, "CALLBACK_SECRET"),
        ({"S3_SECRET_ACCESS_KEY": "minioadmin", "S3_ACCESS_KEY_ID": "minioadmin"}, "S3 creden"),
        ({"S3_PUBLIC_ENDPOINT": ""}, "S3_PUBLIC_ENDPOINT"),
        ({"STREAM_TICKET_SECRET": "x" * 10}, "STREAM_TICKET_SECRET"),
        ({"CALLBACK_ALLOW_PRIVATE": "true"}, "CALLBACK_ALLOW_PRIVATE"),
        ({"TRUSTED_PROXIES": "10.0.0.2,0.0.0.0/0"}, "TRUSTED_PROXIES is too broad (0.0.0.0/0)"),
        ({"TRUSTED_PROXIES": "::/0"}, "TRUSTED_PROXIES is too broad (::/0)"),
        ({"TRUSTED_PROXIES": "128.0.0.0/1"}, "TRUSTED_PROXIES is too broad"),
        ({"TRUSTED_PROXIES": "2001:db8::/32"}, "TRUSTED_PROXIES is too broad"),
        ({"S3_PRESIGN_ACCESS_KEY_ID": ""}, "signed by a read-only user"),
        ({"S3_PRESIGN_SECRET_ACCESS_KEY": ""}, "signed by a read-only user"),
        ({"S3_PRESIGN_ACCESS_KEY_ID": "downloads-service"}, "the service's own S3 user"),
        ({"AUTH_API_KEYS": f"{'k' * 40}=alice,{'k' * 31}=bob"}, "1 key(s) shorter than 32"),
        ({"AUTH_JWT_PUBLIC_KEY": "pem", "AUTH_JWT_ISSUER": "https://id"}, "AUTH_JWT_AUDIENCE"),
        ({"AUTH_JWT_PUBLIC_KEY": "pem", "AUTH_JWT_AUDIENCE": "downloads"}, "AUTH_JWT_ISSUER"),
        ({"REQUEST_SEAL_SECRET": "change-me"}, "REQUEST_SEAL_SECRET"),
        ({"REQUEST_SEAL_SECRET": ""}, "REQUEST_SEAL_SECRET"),
    ],
)
def test_each_unsafe_production_setting_is_named(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    changes: dict[str, str],
    named: str,
) -> None:
    for key, safe in SAFE_PRODUCTION.items():
        monkeypatch.setenv(key, safe)
    assert load_settings(_env_file=None).environment == "production"  # the safe baseline starts
    for name, value in changes.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit):
        load_settings(_env_file=None)
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert named in line


@pytest.mark.parametrize(
    "changes",
    [
        {"TRUSTED_PROXIES": "10.0.0.0/8,fd00:10:244::/56"},
        {"AUTH_API_KEYS": f"{'k' * 32}=alice,sha256:{'ab' * 32}=bob"},
        {"AUTH_JWT_PUBLIC_KEY": "pem", "AUTH_JWT_ISSUER": "https://id", "AUTH_JWT_AUDIENCE": "dl"},
    ],
)
def test_production_accepts_what_is_narrow_enough(
    monkeypatch: pytest.MonkeyPatch, changes: dict[str, str]
) -> None:
    """A pod network as the proxies, keys of 32 characters or given as digests (whose length
    cannot be known), a public key with both claims pinned."""
    for key, value in {**SAFE_PRODUCTION, **changes}.items():
        monkeypatch.setenv(key, value)
    assert load_settings(_env_file=None).environment == "production"


def test_each_process_is_asked_for_what_it_uses(monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker starts without the API's secrets (auth, tickets, presigning), the API without
    the worker's (callbacks), a tool such as `download-stack seed` with its storage only."""
    monkeypatch.setenv("ENVIRONMENT", "production")
    monkeypatch.setenv("S3_ACCESS_KEY_ID", "downloads-worker")
    monkeypatch.setenv("S3_SECRET_ACCESS_KEY", "w" * 40)
    assert load_settings(Process.tool, _env_file=None)  # reaches no Temporal: plaintext or not
    monkeypatch.setenv("TEMPORAL_TRUSTED_NETWORK", "true")
    monkeypatch.setenv("REQUEST_SEAL_SECRET", SAFE_PRODUCTION["REQUEST_SEAL_SECRET"])
    with pytest.raises(SystemExit):
        load_settings(Process.worker, _env_file=None)  # CALLBACK_SECRET is the example value
    monkeypatch.setenv("CALLBACK_SECRET", "c" * 40)
    assert load_settings(Process.worker, _env_file=None)
    with pytest.raises(SystemExit):
        load_settings(Process.api, _env_file=None)
    for key in ("AUTH_JWT_SECRET", "STREAM_TICKET_SECRET", "S3_PUBLIC_ENDPOINT"):
        monkeypatch.setenv(key, SAFE_PRODUCTION[key])
    monkeypatch.setenv("S3_PRESIGN_ACCESS_KEY_ID", "downloads-reader")
    monkeypatch.setenv("S3_PRESIGN_SECRET_ACCESS_KEY", "r" * 40)
    monkeypatch.setenv("CALLBACK_SECRET", "change-me")
    assert load_settings(Process.api, _env_file=None)


def test_development_starts_with_the_local_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ENVIRONMENT", raising=False)
    assert load_settings(_env_file=None).environment == "development"
