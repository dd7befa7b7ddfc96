"""Client TLS for backends: verification, custom CAs and client certificates (mTLS).

It lives with the config that names the files: the loader builds each https backend's
context while validating, so a bad PEM is refused like any bad value, and fingerprints
the files' contents so that a rotated certificate is a new config. Each file is read
within bounds, like the YAML: a regular file of at most ``MAX_TLS_FILE_BYTES`` (a path to
a huge file is refused, not read whole into memory at every reload).
"""

from __future__ import annotations

import hashlib
import ssl
from pathlib import Path

from ..errors import ConfigError, TlsSetupError
from .schema import GatewayConfig, TlsConfig
from .yamlread import read_file

MAX_TLS_FILE_BYTES = 4 * 1024 * 1024  # a CA bundle, client certificate or key


def build_ssl_context(tls: TlsConfig) -> ssl.SSLContext:
    """The client TLS context for one backend: CA bundle, verification, client cert.

    Blocking (reads PEM files): the config loader calls it, off the event loop.
    """
    _check_size("ca_bundle", "the CA bundle", tls.ca_bundle)
    _check_size("client_cert", "the client certificate", tls.client_cert)
    _check_size("client_key", "the client key", tls.client_key)
    try:
        if tls.ca_bundle is not None:
            context = ssl.create_default_context(cafile=str(tls.ca_bundle))
        else:
            context = ssl.create_default_context()
    except (OSError, ssl.SSLError) as exc:
        raise TlsSetupError("ca_bundle", f"cannot load the CA bundle: {_reason(exc)}") from exc
    if not tls.verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if tls.client_cert is not None:
        try:
            context.load_cert_chain(
                str(tls.client_cert), str(tls.client_key) if tls.client_key else None
            )
        except (OSError, ssl.SSLError) as exc:
            raise TlsSetupError(
                "client_cert",
                f"cannot load the client certificate and key: {_reason(exc)} "
                "(expected PEM: the certificate, then its key in the same file or client_key)",
            ) from exc
    return context


def _check_size(field: str, what: str, path: Path | None) -> None:
    """Refuse a file OpenSSL should not be given: not regular, or over the bound."""
    if path is None:
        return
    try:
        read_file(path, MAX_TLS_FILE_BYTES)
    except ConfigError as exc:
        reason = exc.issues[0].message.removeprefix("cannot read: ")
        raise TlsSetupError(field, f"cannot load {what}: {reason}") from None


def _reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)
    if isinstance(reason, str):
        return reason.replace("_", " ").lower()
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return type(exc).__name__


def fingerprint(tls: TlsConfig) -> str:
    """A digest of the TLS files' contents: a rotated certificate means a new session."""
    digest = hashlib.sha256()
    for path in (tls.ca_bundle, tls.client_cert, tls.client_key):
        if path is not None:
            try:
                digest.update(read_file(path, MAX_TLS_FILE_BYTES))
            except ConfigError as exc:  # refused when the context is built
                digest.update(exc.issues[0].message.encode())
        digest.update(b"\0")
    return digest.hexdigest()


def tls_files(config: GatewayConfig) -> list[Path]:
    """The CA bundles, client certificates and keys the config's backends load."""
    paths: dict[Path, None] = {}
    for backend in config.backends:
        for path in (backend.tls.ca_bundle, backend.tls.client_cert, backend.tls.client_key):
            if path is not None:
                paths[path] = None
    return list(paths)
