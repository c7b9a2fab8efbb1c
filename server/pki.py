"""The consortium's TLS material: one CA and one SuperLink server certificate.

Standard X.509 through the ``cryptography`` package, nothing home-made: an ECDSA P-384 CA
(self-signed, path length 0) and a server certificate it signs for the SuperLink, valid one year,
with SANs ``DNS:localhost, IP:127.0.0.1`` plus the coordinator's own host names / addresses.

    consortium/ca.crt       hand to every hospital (``rmm-client --root-cert``) and to ``flwr``
    consortium/ca.key       stays with the coordinator, offline if possible (mode 600)
    consortium/server.crt   SuperLink ``--ssl-certfile``
    consortium/server.key   SuperLink ``--ssl-keyfile`` (mode 600)
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ..core.errors import RmmError

CA_CERT, CA_KEY, SERVER_CERT, SERVER_KEY = "ca.crt", "ca.key", "server.crt", "server.key"
DEFAULT_SANS = ("DNS:localhost", "IP:127.0.0.1")
VALIDITY_DAYS = 365


class PkiError(RmmError):
    """The consortium's certificates cannot be created or are incomplete."""


@dataclass(frozen=True)
class Pki:
    """Paths of the consortium's TLS files inside one folder."""

    root: Path

    ca_cert = property(lambda self: self.root / CA_CERT, doc="the CA certificate every hospital gets")
    ca_key = property(lambda self: self.root / CA_KEY, doc="the CA's private key (stays with the coordinator)")
    server_cert = property(lambda self: self.root / SERVER_CERT, doc="the SuperLink's certificate")
    server_key = property(lambda self: self.root / SERVER_KEY, doc="the SuperLink's private key")

    def files(self) -> list[Path]:
        return [self.ca_cert, self.ca_key, self.server_cert, self.server_key]

    def require_server_files(self) -> None:
        """Raise PkiError naming what is missing for the SuperLink to start with TLS."""
        missing = [p for p in (self.ca_cert, self.server_cert, self.server_key) if not p.is_file()]
        if missing:
            raise PkiError(f"TLS file(s) missing: {', '.join(str(p) for p in missing)}. Fix: run "
                           f"'rmm-server init-ca --dir {self.root}' first (or point --dir at the "
                           "folder that holds ca.crt, server.crt and server.key)")


def parse_san(text: str) -> x509.GeneralName:
    """``DNS:name``, ``IP:addr`` or a bare name/address -> a SubjectAlternativeName entry."""
    kind, sep, value = text.strip().partition(":")
    if sep and kind.upper() in ("DNS", "IP"):
        if kind.upper() == "DNS":
            if not value:
                raise PkiError(f"--san {text!r}: empty DNS name. Fix: write e.g. --san DNS:fl.hospital.org")
            return x509.DNSName(value)
        try:
            return x509.IPAddress(ipaddress.ip_address(value))
        except ValueError:
            raise PkiError(f"--san {text!r}: {value!r} is not an IP address. "
                           "Fix: write e.g. --san IP:10.0.0.5, or --san DNS:<name> for a host name") from None
    try:
        return x509.IPAddress(ipaddress.ip_address(text.strip()))
    except ValueError:
        if not text.strip() or any(c.isspace() for c in text.strip()):
            raise PkiError(f"--san {text!r} is not a host name or IP address. "
                           "Fix: write --san DNS:<name> or --san IP:<address>") from None
        return x509.DNSName(text.strip())


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "rmm consortium"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    """Write a PEM private key created with mode 600 (never world-readable, not even briefly)."""
    data = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(path, 0o600)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    os.chmod(path, 0o644)


def init_ca(directory: str | Path, sans: list[str] | tuple[str, ...] = (), *, days: int = VALIDITY_DAYS,
            force: bool = False, ca_name: str = "rmm consortium CA") -> Pki:
    """Create ``ca.crt/ca.key`` and ``server.crt/server.key`` in ``directory``.

    Refuses to overwrite existing files unless ``force`` (re-issuing the CA means re-distributing
    ``ca.crt`` to every hospital).
    """
    pki = Pki(Path(directory))
    existing = [p for p in pki.files() if p.exists()]
    if existing and not force:
        raise PkiError(f"{', '.join(str(p) for p in existing)} already exist(s). Fix: keep the existing CA "
                       "(hospitals already trust it), choose another --dir, or pass --force to replace "
                       "it and then hand the new ca.crt to every hospital")
    names: list[x509.GeneralName] = []
    for text in (*DEFAULT_SANS, *sans):
        san = parse_san(text)
        if san not in names:
            names.append(san)
    pki.root.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5)  # tolerate small clock skew
    until = now + dt.timedelta(days=days)

    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_subject = _name(ca_name)
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (x509.CertificateBuilder()
               .subject_name(ca_subject).issuer_name(ca_subject)
               .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now).not_valid_after(until)
               .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                            key_encipherment=False, data_encipherment=False,
                                            key_agreement=False, key_cert_sign=True, crl_sign=True,
                                            encipher_only=False, decipher_only=False), critical=True)
               .add_extension(ca_ski, critical=False)
               .sign(ca_key, hashes.SHA384()))

    srv_key = ec.generate_private_key(ec.SECP384R1())
    srv_cert = (x509.CertificateBuilder()
                .subject_name(_name("rmm superlink")).issuer_name(ca_subject)
                .public_key(srv_key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now).not_valid_after(until)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                             key_encipherment=False, data_encipherment=False,
                                             key_agreement=True, key_cert_sign=False, crl_sign=False,
                                             encipher_only=False, decipher_only=False), critical=True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
                .add_extension(x509.SubjectAlternativeName(names), critical=False)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(srv_key.public_key()), critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
                               critical=False)
                .sign(ca_key, hashes.SHA384()))

    _write_key(pki.ca_key, ca_key)
    _write_cert(pki.ca_cert, ca_cert)
    _write_key(pki.server_key, srv_key)
    _write_cert(pki.server_cert, srv_cert)
    return pki


def server_sans(cert_path: str | Path) -> list[str]:
    """The SANs of a certificate as ``DNS:x`` / ``IP:y`` strings (for summaries and checks)."""
    cert = x509.load_pem_x509_certificate(Path(cert_path).read_bytes())
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return ([f"DNS:{n}" for n in ext.get_values_for_type(x509.DNSName)]
            + [f"IP:{a}" for a in ext.get_values_for_type(x509.IPAddress)])


def fingerprint(cert_path: str | Path) -> str:
    """SHA-256 fingerprint (colon hex) so hospitals can check the ca.crt they received by phone."""
    cert = x509.load_pem_x509_certificate(Path(cert_path).read_bytes())
    return ":".join(f"{b:02X}" for b in cert.fingerprint(hashes.SHA256()))
