"""``security.toml`` for the embedded SeaweedFS: nothing but the signed S3 endpoint serves data without a secret.

Without it, anyone on the machine (an agent under ``strongroom dev`` included) can read, write and delete objects
through the filer's and volume server's HTTP ports and every gRPC port, with no credentials. ``weed`` reads the
file from its working directory (the data directory). Every secret is made fresh at each start and is readable
only by the user running ``strongroom dev`` (files 0600):

- JWT signing keys for volume and filer reads and writes over HTTP (the S3 gateway signs its own requests). A file
  id from the master's HTTP port does not help: a write with it needs a token the master does not hand out;
- mutual TLS on every gRPC port and on the master, volume and filer HTTP ports, with a private CA and one
  certificate the components share (SeaweedFS does not check host names), so a client without that key cannot
  complete the handshake. This is what closes the master's HTTP admin endpoints (``/col/delete`` drops a bucket's
  data), which SeaweedFS otherwise guards with an IP white list only, useless when every component connects from
  127.0.0.1 like an agent does.
"""

from __future__ import annotations

import datetime
import ipaddress
import secrets
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from strongroom.files import write_private

JWT_SECTIONS = ("jwt.signing", "jwt.signing.read", "jwt.filer_signing", "jwt.filer_signing.read")
GRPC_COMPONENTS = ("master", "volume", "filer", "s3", "admin", "worker", "msg_broker", "mq")
HTTPS_COMPONENTS = ("master", "volume", "filer")  # the S3 gateway's port stays plain HTTP, signed with SigV4
CERT_DAYS = 3650  # regenerated at every start anyway; long enough for a dev stack that runs for months


def write_security_config(data_dir: Path) -> Path:
    """Write fresh TLS material under ``data_dir/tls`` and ``data_dir/security.toml``; returns the latter."""
    tls = data_dir / "tls"
    tls.mkdir(mode=0o700, parents=True, exist_ok=True)
    ca_pem, cert_pem, key_pem = _certificates()
    write_private(tls / "ca.crt", ca_pem)
    write_private(tls / "weed.crt", cert_pem)
    write_private(tls / "weed.key", key_pem)
    path = data_dir / "security.toml"
    write_private(path, security_toml(tls))
    return path


def security_toml(tls: Path) -> str:
    jwt = "".join(f'[{name}]\nkey = "{secrets.token_hex(32)}"\nexpires_after_seconds = 10\n\n' for name in JWT_SECTIONS)
    pair = f'cert = "{tls / "weed.crt"}"\nkey = "{tls / "weed.key"}"\n'
    grpc = "".join(f"[grpc.{component}]\n{pair}\n" for component in GRPC_COMPONENTS)
    with_ca = f'{pair}ca = "{tls / "ca.crt"}"\n'
    https = "".join(f"[https.{component}]\n{with_ca}\n" for component in HTTPS_COMPONENTS)
    return (
        f'{jwt}[grpc]\nca = "{tls / "ca.crt"}"\n\n{grpc}[grpc.client]\n{pair}\n'
        f"{https}[https.client]\nenabled = true\n{with_ca}"
    )


def _certificates() -> tuple[str, str, str]:
    """A throwaway CA and one server+client certificate for 127.0.0.1, as PEM text (CA, certificate, key)."""
    now = datetime.datetime.now(datetime.UTC)
    start, end = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=CERT_DAYS)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "strongroom dev SeaweedFS CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
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
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "seaweedfs")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    key_pem = key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return ca.public_bytes(pem).decode(), cert.public_bytes(pem).decode(), key_pem.decode()
