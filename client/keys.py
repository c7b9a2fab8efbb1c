"""A site's key pair for SuperNode authentication (``rmm-client keygen``); its fingerprint: flower/key_fingerprint.py."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from ..flower.config_args import check_site_name
from .errors import ClientCliError


def keygen(site: str, directory: str | Path, *, force: bool = False) -> tuple[Path, Path]:
    """Create ``<dir>/site-<site>`` (private, mode 600) and ``.pub`` (ECDSA P-384, OpenSSH format)."""
    check_site_name(site)
    folder = Path(directory)
    private = folder / f"site-{site}"
    public = private.with_name(private.name + ".pub")
    if (private.exists() or public.exists()) and not force:
        raise ClientCliError(f"{private} already exists. Fix: keep it (the coordinator registered its .pub), "
                             "or pass --force to replace it and hand the new .pub to the coordinator again")
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    for p in (private, public):
        p.unlink(missing_ok=True)
    tool = shutil.which("ssh-keygen")
    if tool:
        done = subprocess.run([tool, "-q", "-t", "ecdsa", "-b", "384", "-N", "", "-C", f"rmm-site-{site}",
                               "-f", str(private)], stdin=subprocess.DEVNULL, capture_output=True, text=True)
        if done.returncode != 0:
            raise ClientCliError(f"ssh-keygen failed ({done.stderr.strip() or done.returncode}). "
                                 f"Fix: check that {folder} is writable")
    else:  # same key type and file formats, through the cryptography package
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec

        key = ec.generate_private_key(ec.SECP384R1())
        fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                           serialization.NoEncryption()))
        line = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        public.write_bytes(line + f" rmm-site-{site}\n".encode())
    os.chmod(private, 0o600)
    os.chmod(public, 0o644)
    return private, public
