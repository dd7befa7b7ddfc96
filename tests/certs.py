"""Throw-away PKI for TLS tests: CAs, a loopback server certificate and client certificates.

Everything is generated on the fly with ``cryptography`` (EC P-256, valid for a day) and
written as PEM files, so tests exercise the same file loading an admin's config would.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_VALIDITY = datetime.timedelta(days=1)


@dataclass(frozen=True)
class Authority:
    """A CA: its certificate file, plus what is needed to sign more certificates."""

    name: str
    cert_path: Path
    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class Issued:
    """A leaf certificate as separate cert/key files and as one combined PEM."""

    cert_path: Path
    key_path: Path
    combined_path: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Local AI Gateway tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _cert_pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


def make_ca(directory: Path, name: str) -> Authority:
    """A self-signed CA written to ``directory/<name>.pem``."""
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    subject = _name(f"{name} test CA")
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
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
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path = directory / f"{name}.pem"
    cert_path.write_bytes(_cert_pem(certificate))
    return Authority(name, cert_path, certificate, key)


def issue(
    authority: Authority,
    directory: Path,
    name: str,
    *,
    server: bool,
    hosts: tuple[str, ...] = (),
) -> Issued:
    """A leaf certificate signed by ``authority``: a server cert for ``hosts`` or a client cert.

    Writes ``<name>.crt``, ``<name>.key`` and ``<name>-combined.pem`` (cert then key).
    """
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(authority.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(authority.key.public_key()),
            critical=False,
        )
    )
    if hosts:
        names: list[x509.GeneralName] = []
        for host in hosts:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    certificate = builder.sign(authority.key, hashes.SHA256())
    cert_path = directory / f"{name}.crt"
    key_path = directory / f"{name}.key"
    combined_path = directory / f"{name}-combined.pem"
    cert_path.write_bytes(_cert_pem(certificate))
    key_path.write_bytes(_key_pem(key))
    combined_path.write_bytes(_cert_pem(certificate) + _key_pem(key))
    return Issued(cert_path, key_path, combined_path)


@dataclass(frozen=True)
class TestPki:
    """The certificates the TLS tests need, all under one directory."""

    __test__ = False  # not a pytest test class despite the name

    directory: Path
    ca: Authority
    server: Issued
    client: Issued
    wrong_ca: Authority
    wrong_client: Issued


def make_pki(directory: Path) -> TestPki:
    """A CA with a loopback server cert and a client cert, plus an unrelated CA and client."""
    ca = make_ca(directory, "ca")
    wrong_ca = make_ca(directory, "wrong-ca")
    return TestPki(
        directory=directory,
        ca=ca,
        server=issue(ca, directory, "server", server=True, hosts=("127.0.0.1", "localhost")),
        client=issue(ca, directory, "client", server=False),
        wrong_ca=wrong_ca,
        wrong_client=issue(wrong_ca, directory, "wrong-client", server=False),
    )
