"""Certificates for TLS tests, made with ``openssl``: a CA and a server certificate for 127.0.0.1."""

from __future__ import annotations

import subprocess
from pathlib import Path


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A CA, and a certificate it signed for 127.0.0.1 with its key: ``(ca.pem, s.pem, s.key)``."""
    names = ("ca.key", "ca.pem", "s.key", "s.csr", "s.pem")
    ca_key, ca, key, csr, cert = (directory / name for name in names)
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=llmqueue test CA",
            "-keyout", str(ca_key), "-out", str(ca))  # fmt: skip
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", str(key),
            "-out", str(csr))  # fmt: skip
    ext = directory / "ext.cnf"
    ext.write_text("subjectAltName=IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial",
            "-days", "1", "-out", str(cert), "-extfile", str(ext))  # fmt: skip
    return ca, cert, key
