"""Temporal client configuration as every Temporal client reads it: the SDK's environment
configuration (`temporalio.envconfig`), i.e. the profile `TEMPORAL_PROFILE` of the TOML file
`TEMPORAL_CONFIG_FILE` (the `temporal` CLI's file), each field overridden by `TEMPORAL_ADDRESS`,
`TEMPORAL_NAMESPACE`, `TEMPORAL_API_KEY`, `TEMPORAL_TLS*` and `TEMPORAL_GRPC_META_*`.

Imports no project code: the settings hand it the variables (core/config.py).
"""

from __future__ import annotations

from collections.abc import Mapping

from temporalio.envconfig import ClientConfigProfile, ClientConnectConfig

DEFAULT_ADDRESS = "localhost:7233"
DEFAULT_NAMESPACE = "default"


def client_config(environ: Mapping[str, str]) -> ClientConnectConfig:
    """`Client.connect` arguments from `environ` and the profile file it names; ValueError with
    one line when they cannot be used (bad TOML, unknown profile, unreadable certificate)."""
    if environ.get("TEMPORAL_TLS_DISABLE_HOST_VERIFICATION", "").lower() in {"1", "true"}:
        raise ValueError(
            "TEMPORAL_TLS_DISABLE_HOST_VERIFICATION is not supported by the Python SDK: give the "
            "server's CA (TEMPORAL_TLS_SERVER_CA_CERT_PATH) and name (TEMPORAL_TLS_SERVER_NAME)"
        )
    try:
        profile = ClientConfigProfile.load(
            profile=environ.get("TEMPORAL_PROFILE") or None, override_env_vars=environ
        )
    except Exception as exc:  # the SDK's native ConfigError is not exported
        raise ValueError(f"Temporal client configuration: {exc}".splitlines()[0]) from exc
    try:
        config = profile.to_client_connect_config()  # reads the certificate files
    except OSError as exc:
        raise ValueError(f"Temporal TLS: cannot read {exc.filename}: {exc.strerror}") from exc
    config.setdefault("target_host", DEFAULT_ADDRESS)
    config.setdefault("namespace", DEFAULT_NAMESPACE)
    return config


def is_plaintext(config: ClientConnectConfig) -> bool:
    """Whether the connection would carry requests (and any API key) unencrypted."""
    return config.get("tls", False) is False


def describe(config: ClientConnectConfig) -> str:
    """For logs: where and how, never a secret."""
    tls = config.get("tls", False)
    if tls is False:
        how = "plaintext"
    elif tls is not True and tls.client_cert:
        how = "mutual TLS"
    else:
        how = "TLS"
    if config.get("api_key"):
        how += " + API key"
    return f"{config.get('target_host')} namespace={config.get('namespace')} ({how})"
