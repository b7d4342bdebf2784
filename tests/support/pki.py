"""Certificates for TLS tests, made with the `openssl` command-line tool: a CA, server
certificates (RSA and ECDSA, for localhost and 127.0.0.1) and client certificates."""

from __future__ import annotations

import subprocess
from pathlib import Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


class Pki:
    """A CA in `directory` (files ca.pem and ca.key)."""

    def __init__(self, directory: Path, name: str = "Test Charging CA"):
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ca_file = self.dir / "ca.pem"
        self._serial = 1
        _openssl(
            "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
            "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "3650",
            "-subj", f"/CN={name}",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
            cwd=self.dir,
        )

    def _issue(self, name: str, subject: str, key: list[str], extensions: str) -> tuple[Path, Path]:
        self._serial += 1
        (self.dir / f"{name}.ext").write_text(extensions)
        _openssl(
            "req", "-new", "-newkey", *key, "-nodes", "-keyout", f"{name}.key",
            "-out", f"{name}.csr", "-subj", subject,
            cwd=self.dir,
        )
        _openssl(
            "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-set_serial", str(self._serial), "-days", "365", "-sha256",
            "-extfile", f"{name}.ext", "-out", f"{name}.pem",
            cwd=self.dir,
        )
        return self.dir / f"{name}.pem", self.dir / f"{name}.key"

    def server(self, kind: str) -> tuple[Path, Path]:
        """A server certificate and key for localhost and 127.0.0.1; `kind` is rsa or ecdsa."""
        key = ["rsa:2048"] if kind == "rsa" else ["ec", "-pkeyopt", "ec_paramgen_curve:P-256"]
        return self._issue(
            f"server-{kind}", "/CN=localhost", key,
            "basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"
            "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
        )

    def revocation_list(self, revoked: list[Path]) -> Path:
        """A CRL of this CA (PEM) that revokes the certificates `revoked`."""
        (self.dir / "index.txt").write_text("")
        (self.dir / "crlnumber").write_text("01\n")
        (self.dir / "ca.cnf").write_text(
            "[ca]\ndefault_ca = this\n[this]\ndatabase = index.txt\ncrlnumber = crlnumber\n"
            "default_md = sha256\ndefault_crl_days = 30\n"
        )
        for certificate in revoked:
            _openssl(
                "ca", "-config", "ca.cnf", "-keyfile", "ca.key", "-cert", "ca.pem",
                "-revoke", str(certificate),
                cwd=self.dir,
            )
        _openssl(
            "ca", "-config", "ca.cnf", "-keyfile", "ca.key", "-cert", "ca.pem",
            "-gencrl", "-out", "crl.pem",
            cwd=self.dir,
        )
        return self.dir / "crl.pem"

    def client(self, common_name: str, organization: str | None = None) -> tuple[Path, Path]:
        """A charge point's client certificate with subject CN `common_name`."""
        subject = f"/CN={common_name}" + (f"/O={organization}" if organization else "")
        return self._issue(
            f"client-{self._serial}", subject,
            ["ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
            "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n",
        )


def certificates_setting(*pairs: tuple[Path, Path]) -> str:
    """The value of `CPGW_TLS__CERTIFICATES` for (certificate, key) file pairs."""
    entries = ",".join(
        f'{{certificate_file="{certificate}",key_file="{key}"}}' for certificate, key in pairs
    )
    return f"[{entries}]"
