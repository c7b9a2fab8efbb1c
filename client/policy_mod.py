"""The site policy in the ClientApp: where it comes from, the run's pins, and refusals as error replies.

Which policy file (the first that exists): the node's ``policy`` (``rmm-client --policy FILE`` puts it
in the SuperNode's node config, which the hospital sets, never the coordinator); ``policy.toml``
in the site folder; the file given to :func:`~rmmfed.client.client_app.make_client_app`
(``rmm-simulate --policy FILE``, every site); else the safe defaults of
:data:`~rmmfed.core.privacy.site_policy.DEFAULT_POLICY`. The run config is never read for it.

:func:`policy_mod` sits inside the egress guard and the ledger: a handler that raises
:class:`~rmmfed.core.privacy.site_policy.PolicyViolation` gets an error reply (code :data:`POLICY_REFUSED`,
a fixed reason naming the policy key and nothing else), which the ledger logs with the key and the
server does not retry. Any other exception gets the fixed site error (code :data:`SITE_ERROR`).
The full text of either (counts, paths, traceback) goes to the site log only (client/site_errors.py).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from flwr.app import ConfigRecord, Context, Message

from ..core.privacy.request_policy import RequestPolicy
from ..core.privacy.site_policy import PolicyViolation, SitePolicy, load_policy
from ..flower.refusal import POLICY_REFUSED
from .site_errors import SITE_ERROR, refusal, site_error

__all__ = ["POLICY_REFUSED", "SITE_ERROR", "SITE_POLICY_FILE", "policy_mod", "policy_path", "request_policy",
           "save_pins", "site_policy"]
SITE_POLICY_FILE = "policy.toml"
_STATE_PINS = "rmm-policy-pins"  # context.state key (stays on the site)
_CACHE: dict[tuple[str, float], SitePolicy] = {}


def policy_path(context: Context, site_folder: str | Path, default: str | Path | None = None) -> Path | None:
    """The policy file that governs this node (module docstring), or None for the defaults."""
    node = str(context.node_config.get("policy", "") or "")
    if node:
        return Path(node)
    local = Path(site_folder) / SITE_POLICY_FILE
    if local.is_file():
        return local
    return Path(default) if default else None


def site_policy(path: Path | None) -> SitePolicy:
    """Load (cached by path and modification time) the policy at ``path``; the defaults for None."""
    if path is None:
        return load_policy(None)
    try:
        key = (str(path.resolve()), path.stat().st_mtime)
    except OSError:
        return load_policy(path)  # raises PolicyFileError naming the file
    if key not in _CACHE:
        _CACHE[key] = load_policy(path)
    return _CACHE[key]


def request_policy(context: Context, policy: SitePolicy) -> RequestPolicy:
    """The policy with this run's pins (kept in ``context.state``, which Flower keeps per run and node)."""
    pins = context.state[_STATE_PINS] if _STATE_PINS in context.state else {}
    return RequestPolicy(policy, {k: str(v) for k, v in pins.items()})


def save_pins(context: Context, rp: RequestPolicy) -> None:
    context.state[_STATE_PINS] = ConfigRecord(dict(rp.pins))


def policy_mod(msg: Message, context: Context, call_next: Callable[[Message, Context], Message]) -> Message:
    """A policy refusal becomes the fixed refusal of its key; any other exception the fixed site error.
    Nothing computed is sent, and no exception reaches Flower (which would send its text)."""
    try:
        return call_next(msg, context)
    except PolicyViolation as err:
        return refusal(msg, err)
    except Exception as err:  # noqa: BLE001 - e.g. a SiteDataError naming the site's files: logged here only
        return site_error(msg, err)
