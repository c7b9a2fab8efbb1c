"""The fingerprint of a site's OpenSSH public key, as ``ssh-keygen -l`` prints it (both CLIs show it)."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

from ..core.errors import UsageError


def ssh_fingerprint(pub_path: str | Path) -> str:
    """``SHA256:...`` of an OpenSSH public key line."""
    parts = Path(pub_path).read_text(encoding="ascii", errors="replace").split()
    if len(parts) < 2:
        raise UsageError(f"{pub_path}: not an OpenSSH public key line. Fix: use the .pub file "
                         "that 'rmm-client keygen' wrote")
    try:
        blob = base64.b64decode(parts[1], validate=True)
    except ValueError:
        raise UsageError(f"{pub_path}: the key data is not valid base64. Fix: use the .pub file "
                         "exactly as 'rmm-client keygen' wrote it") from None
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
