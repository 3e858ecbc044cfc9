"""The secrets of a secure local cluster (`shoal up --secure`): a CA, certificates, the cluster secret, a key.

Made with the `cryptography` package (imported only here, only when asked for), written with mode 0600
under DATA/secrets/ and reused on the next start:

    ca.pem, ca.key           the local CA: it signs the servers' and the user's certificates
    server.pem, server.key   every server's certificate (localhost, 127.0.0.1 and the listen host)
    client.pem, client.key   the user's client certificate (mutual TLS to the coordinator; no cluster member)
    cluster.secret           what coordinators show shards to prove cluster membership
    keys.json, admin.key     the coordinator's API keys file, and the admin key made with it
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from shoal._keystore import FileKeyStore

VALID_DAYS = 825  # the longest validity clients such as Apple's accept for a server certificate


@dataclass(frozen=True)
class LocalSecrets:
    """The paths of a secure local cluster's secrets."""

    folder: Path

    @property
    def ca(self) -> Path:
        return self.folder / "ca.pem"

    @property
    def server_cert(self) -> Path:
        return self.folder / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.folder / "server.key"

    @property
    def client_cert(self) -> Path:
        return self.folder / "client.pem"

    @property
    def client_key(self) -> Path:
        return self.folder / "client.key"

    @property
    def cluster_secret(self) -> Path:
        return self.folder / "cluster.secret"

    @property
    def keys(self) -> Path:
        return self.folder / "keys.json"

    @property
    def admin_key(self) -> Path:
        return self.folder / "admin.key"


def _write(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def ensure_secrets(folder: Path, hosts: list[str]) -> LocalSecrets:
    """The secrets under `folder`, made now if they are not there yet (server names: localhost and `hosts`)."""
    found = LocalSecrets(folder)
    if found.admin_key.exists():
        return found
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    now = datetime.datetime.now(datetime.UTC)

    def pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
        return key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    def name(common: str) -> x509.Name:
        return x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Shoal local"),
                x509.NameAttribute(NameOID.COMMON_NAME, common),
            ]
        )

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("Shoal local CA"))
        .issuer_name(name("Shoal local CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(common: str, usage: x509.ObjectIdentifier, sans: list[x509.GeneralName]) -> tuple[bytes, bytes]:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(common))
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return builder.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM), pem_key(key)

    sans: list[x509.GeneralName] = [x509.DNSName("localhost")]
    for host in dict.fromkeys(["127.0.0.1", *hosts]):
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    server_cert, server_key = leaf("shoal server", ExtendedKeyUsageOID.SERVER_AUTH, sans)
    client_cert, client_key = leaf("shoal user", ExtendedKeyUsageOID.CLIENT_AUTH, [])
    _write(found.ca, ca.public_bytes(serialization.Encoding.PEM))
    _write(folder / "ca.key", pem_key(ca_key))
    _write(found.server_cert, server_cert)
    _write(found.server_key, server_key)
    _write(found.client_cert, client_cert)
    _write(found.client_key, client_key)
    _write(found.cluster_secret, secrets.token_urlsafe(32).encode() + b"\n")
    token, _ = FileKeyStore(found.keys).create("admin")
    _write(found.admin_key, token.encode() + b"\n")  # last: its presence says every other file is there
    return found
