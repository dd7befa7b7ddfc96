"""Client TLS for backends: verification, custom CAs and client certificates (mTLS).

It lives with the config that names the files: the loader builds each https backend's
context while validating, so a bad PEM is refused like any bad value, and fingerprints
the files' contents so that a rotated certificate is a new config.
"""

from __future__ import annotations

import contextlib
import hashlib
import ssl
from pathlib import Path

from ..errors import TlsSetupError
from .schema import GatewayConfig, TlsConfig


def build_ssl_context(tls: TlsConfig) -> ssl.SSLContext:
    """The client TLS context for one backend: CA bundle, verification, client cert.

    Blocking (reads PEM files): the config loader calls it, off the event loop.
    """
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
            with contextlib.suppress(OSError):
                digest.update(path.read_bytes())
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
