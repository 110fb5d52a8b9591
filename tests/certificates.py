"""Certificates made by openssl for a test: an authority, and certificates it signs.

Each is `<name>.pem` and its key `<name>.key` in the test's folder. A server's certificate
names 127.0.0.1 and localhost; the extended key usage says server or client, as a TLS peer
checks it.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Literal

OPENSSL = shutil.which("openssl")


def openssl(*args: str, cwd: Path) -> None:
    assert OPENSSL is not None, "openssl is not installed"
    subprocess.run([OPENSSL, *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def authority(folder: Path, name: str) -> None:
    """A certificate authority of its own: `name`.pem, `name`.key."""
    openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        "-subj", f"/CN={name} test CA", "-keyout", f"{name}.key", "-out", f"{name}.pem",
        cwd=folder,
    )  # fmt: skip


def certificate(folder: Path, name: str, ca: str, role: Literal["server", "client"]) -> None:
    """`name`.pem and `name`.key, signed by the authority `ca`, for a TLS server or client."""
    openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
        "-keyout", f"{name}.key", "-out", f"{name}.csr",
        cwd=folder,
    )  # fmt: skip
    extensions = folder / f"{name}.ext"
    if role == "server":
        extensions.write_text(
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n"
        )
    else:
        extensions.write_text("extendedKeyUsage=clientAuth\n")
    openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
        "-CAcreateserial", "-days", "2", "-out", f"{name}.pem", "-extfile", extensions.name,
        cwd=folder,
    )  # fmt: skip
