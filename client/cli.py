"""``rmm-client``: what a hospital runs next to its data.

    rmm-client keygen --site A --dir keys/            # once: key pair; hand over keys/site-A.pub only
    rmm-client --site A --data /secure/site-A --check # validate the folder, print a summary, connect nothing
    rmm-client --site A --data /secure/site-A --check --policy site-policy.toml  # ... and the effective policy
    rmm-client --site A --data /secure/site-A --superlink fl.example.org:9092 \\
               --root-cert ca.crt --key keys/site-A   # join the federation (TLS + node authentication)
    rmm-client ledger --summary /secure/site-A/egress.jsonl [--budget STATE/privacy-budget.json]
                                                      # what this site sent, refused, and spent

The site folder is validated before anything connects: a bad folder exits 2 with the file, the
field and the fix. Joining runs Flower's ``flower-supernode`` as a child in its own process group
with ``--isolation process`` and one long-lived ClientApp worker next to it (``--isolation
subprocess`` gives Flower's process per message back); SIGTERM/SIGINT end both groups, every
Flower child included.

This module is the command line only; the work is done in:

- :mod:`rmmfed.flower.processes`: Flower child processes, supervised (shared with ``rmm-server``);
- :mod:`rmmfed.flower.supernode`: the site's use of Flower's non-public modules (shortened SuperNode
  polls, ``rmm-client _flower``; the worker's Runtime API names), for Flower 1.41 only;
  see docs/deployment-performance.md;
- :mod:`rmmfed.client.worker`: the long-lived ClientApp worker (``rmm-client _worker``);
- :mod:`rmmfed.flower.config_args`: Flower ``key=value`` strings and site names (shared with ``rmm-server``);
- :mod:`rmmfed.client.keys`: ``rmm-client keygen``'s key pair (its fingerprint: :mod:`rmmfed.flower.key_fingerprint`).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from ..core.errors import RmmError
from ..flower.config_args import check_site_name, flower_kv
from ..flower.key_fingerprint import ssh_fingerprint
from ..flower.processes import EXIT_OK, EXIT_USAGE, flower_env, free_port, require_executable, run_supervised, warn
from ..flower.supernode import SUPERNODE_IDLE_POLL_S, flower_launcher, launch_flower
from ..flower.version import SITE_FIX, require_tested_flower
from .errors import ClientCliError
from .keys import keygen
from .worker import WORKER_POLL_S, run_worker


_HINTS = {  # what flower-supernode printed -> what the hospital should do
    "[code: 2004]": "the SuperLink does not know this site's key. Fix: send site-{site}.pub (never the private "
                    "key) to the coordinator for 'rmm-server register'; if it is registered and this site just "
                    "restarted, wait about a minute until the old connection is marked offline, then start again.",
    "[code: 2001]": "the SuperLink requires node authentication. Fix: pass --key <private key from rmm-client keygen>.",
    "CERTIFICATE_VERIFY_FAILED": "the server certificate did not verify. Fix: pass the consortium's ca.crt as "
                                 "--root-cert and use a --superlink host name/address listed in the server "
                                 "certificate (rmm-server init-ca printed its SANs).",
    "Connection refused": "nothing answers at --superlink. Fix: check the address and port, that the server runs "
                          "(rmm-server start) and that the firewall lets this host through.",
}


# ---- site folder -----------------------------------------------------------------------------
def format_summary(summary: dict, root: str | Path) -> str:
    """The readable ``--check`` report of ``SiteData.summary()``."""
    n = summary["patients"]
    lines = [f"site folder  {root}  (site '{summary['site']}')",
             f"patients     {n}",
             f"events       {summary['events']} ({100 * summary['event_rate']:.1f}%)",
             "splits       " + ", ".join(f"{k} {v}" for k, v in summary["splits"].items())]
    mods = summary["modalities"]
    if mods:
        width = max(10, *(len(m) for m in mods))
        lines.append(f"{'modality':<{width}}  {'dim':>5}  {'present':>7}  {'missing':>7}")
        for m, v in mods.items():
            dim = "-" if v["dim"] is None else str(v["dim"])
            lines.append(f"{m:<{width}}  {dim:>5}  {v['present']:>7}  {v['missing']:>7}"
                         + ("   (folder has no files)" if v["present"] == 0 else ""))
    else:
        lines.append("modalities   none (no modality folders: every patient abstains)")
    lines.append(f"patients with no modality  {summary['no_modality']}"
                 + ("  (kept: they are the abstention case)" if summary["no_modality"] else ""))
    return "\n".join(lines)


def validate_site(data: str | Path):
    """load_site or raise its SiteDataError / SchemaMismatchError (message: file, field, fix)."""
    from ..core.data.site_data import load_site

    return load_site(data)


def effective_policy(data: str | Path, policy: str | Path | None):
    """(where it comes from, the SitePolicy) as the ClientApp will resolve it (client/policy_mod.py)."""
    from ..core.privacy.site_policy import load_policy
    from .policy_mod import SITE_POLICY_FILE

    if policy:
        return str(policy), load_policy(policy)
    local = Path(data) / SITE_POLICY_FILE
    if local.is_file():
        return str(local), load_policy(local)
    return "defaults (no --policy, no policy.toml in the site folder)", load_policy(None)


# ---- joining the federation ----------------------------------------------------------------------
def supernode_command(args: argparse.Namespace, data: Path, runtime_port: int) -> list[str]:
    """The ``flower-supernode`` command line for these arguments (no process started).

    With ``--isolation process`` (the default) the SuperNode starts no ClientApp processes itself:
    rmm-client runs one long-lived worker next to it (:func:`worker_command`).
    """
    cmd = [require_executable("flower-supernode"), "--superlink", args.superlink]
    if args.insecure:
        cmd.append("--insecure")
    else:
        cmd += ["--root-certificates", str(Path(args.root_cert).resolve()),
                "--auth-supernode-private-key", str(Path(args.key).resolve())]
    cmd += ["--host", "127.0.0.1", "--port", str(runtime_port),
            "--max-retries", str(args.max_retries), "--max-wait-time", str(args.max_wait)]
    if getattr(args, "isolation", "subprocess") == "process":
        cmd += ["--isolation", "process"]
    node = {"data-dir": str(data.resolve()), "device": args.device, "site": args.site}
    if getattr(args, "policy", None):
        node["policy"] = str(Path(args.policy).resolve())  # the hospital's own floor, read by the ClientApp
    if getattr(args, "state_dir", None):  # the lifetime privacy budget (core/privacy/privacy_budget.py)
        node["state-dir"] = str(Path(args.state_dir).resolve())
    if getattr(args, "ledger", None):  # the egress ledger (client/ledger.py)
        node["ledger"] = str(Path(args.ledger).resolve())
    cmd += ["--node-config", " ".join(flower_kv(node))]
    return cmd


def budget_line(args: argparse.Namespace, policy) -> str:
    """What ``--check`` says of the site's lifetime privacy budget: the folder the ClientApp would keep it in
    (client/client_app.state_dir, from --state-dir, --ledger and --data) and what the file says so far."""
    from flwr.app import Context, RecordDict

    from ..core.privacy.privacy_budget import BUDGET_FILE, read_budget
    from .client_app import state_dir

    node = {k: str(Path(v).resolve()) for k, v in (("state-dir", getattr(args, "state_dir", None)),
                                                   ("ledger", getattr(args, "ledger", None))) if v}
    folder = state_dir(Context(run_id=0, node_id=0, node_config=node, state=RecordDict(), run_config={}),
                       str(Path(args.data).resolve()))
    path = folder / BUDGET_FILE
    eps, evals = policy.dp.total_epsilon, policy.max_evaluations
    if not path.is_file():
        return f"budget       {path}: no run yet; lifetime caps epsilon {eps:g}, exact test evaluations {evals}"
    state = read_budget(path)
    return (f"budget       {path}: epsilon spent {state.epsilon_spent:g} of {eps:g} over {len(state.runs)} run(s), "
            f"exact test evaluations {state.evaluations} of {evals}")


def worker_command(args: argparse.Namespace, runtime_port: int, secret_file: Path | None) -> list[str]:
    """The long-lived ClientApp worker serving the SuperNode's Runtime API on ``runtime_port``."""
    cmd = [sys.executable, "-m", "rmmfed.client.cli", "_worker", "--runtime-api-address",
           f"127.0.0.1:{runtime_port}", "--parent-pid", str(os.getpid()), "--site", args.site]
    if secret_file is not None:
        cmd += ["--secret-file", str(secret_file)]
    return cmd


def main_worker(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="rmm-client _worker", description="long-lived ClientApp (internal; "
                                "rmm-client starts it next to a SuperNode run with --isolation process)")
    p.add_argument("--runtime-api-address", required=True)
    p.add_argument("--secret-file")
    p.add_argument("--parent-pid", type=int)
    p.add_argument("--poll", type=float, default=WORKER_POLL_S)
    p.add_argument("--site", default="")
    a = p.parse_args(list(argv))
    return run_worker(a.runtime_api_address, secret_file=a.secret_file, parent_pid=a.parent_pid, poll_s=a.poll,
                      site=a.site)


def check_connection_args(args: argparse.Namespace) -> None:
    """Refuse missing or unsafe connection settings before anything starts."""
    if not args.superlink:
        raise ClientCliError("--superlink is required to join. Fix: pass the coordinator's address, "
                             "e.g. --superlink fl.consortium.org:9092 (or use --check to validate only)")
    host, sep, port = args.superlink.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ClientCliError(f"--superlink {args.superlink!r} is not HOST:PORT. Fix: e.g. --superlink 10.0.0.5:9092")
    if args.insecure:
        return
    for flag, value, what in (("--root-cert", args.root_cert, "the consortium's ca.crt from the coordinator"),
                              ("--key", args.key, f"the private key from 'rmm-client keygen --site {args.site}'")):
        if not value:
            raise ClientCliError(f"{flag} is required (TLS and node authentication are on by default). "
                                 f"Fix: pass {flag} <{what}>; --insecure exists only for local trials")
        if not Path(value).is_file():
            raise ClientCliError(f"{flag} {value}: file not found. Fix: pass the path of {what}")
    head = Path(args.key).read_text(encoding="ascii", errors="replace")[:64]
    if head.startswith(("ssh-", "ecdsa-")):
        raise ClientCliError(f"--key {args.key} is a PUBLIC key. Fix: pass the private key file (the one "
                             "without .pub) that keygen wrote")
    if Path(args.key).stat().st_mode & 0o077:
        warn(f"{args.key} is readable by other users; run: chmod 600 {args.key}")


def check_device(device: str) -> str:
    """Resolve auto/cpu/cuda here (ConfigError if CUDA was asked for but is absent)."""
    from ..core.model.device import resolve_device

    return str(resolve_device(device))


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="rmm-client", description="Validate this hospital's site folder and join the federation (TLS + node key).",
                                epilog="Key pair: rmm-client keygen --site A --dir keys/ (see rmm-client keygen -h)",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--site", required=True, help="this hospital's site name, as the consortium agreed (e.g. A)")
    p.add_argument("--data", required=True, type=Path, help="the site folder (patients.csv + modality folders)")
    p.add_argument("--superlink", help="coordinator address HOST:PORT (e.g. fl.consortium.org:9092)")
    p.add_argument("--root-cert", help="the consortium CA certificate (ca.crt) from the coordinator")
    p.add_argument("--key", help="this site's private key from 'rmm-client keygen' (keys/site-A)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="training device (default auto)")
    p.add_argument("--insecure", action="store_true", help="no TLS, no node authentication: local trials ONLY")
    p.add_argument("--check", action="store_true", help="validate the site folder, print a summary and the "
                   "effective site policy, connect nothing")
    p.add_argument("--policy", type=Path, help="this hospital's site policy (TOML or JSON): the privacy floor every "
                   "request is checked against (default: the folder's policy.toml, else safe defaults; docs/privacy.md)")
    p.add_argument("--state-dir", type=Path, help="writable folder where this site keeps its lifetime privacy budget "
                   "(privacy-budget.json; default: the --ledger's folder, else <data>/.rmm-state)")
    p.add_argument("--ledger", type=Path, help="this site's egress ledger file (one JSON line per reply; read it with "
                   "'rmm-client ledger --summary')")
    p.add_argument("--runtime-port", type=int, default=0,
                   help="local port of the SuperNode's Runtime API (default: a free port, so several nodes can share a host)")
    p.add_argument("--max-retries", type=int, default=60, help="connection attempts before giving up (default 60)")
    p.add_argument("--max-wait", type=float, default=600.0,
                   help="seconds to keep retrying an unreachable SuperLink before giving up (default 600)")
    p.add_argument("--isolation", choices=["process", "subprocess"], default="process",
                   help="process (default): one long-lived ClientApp worker keeps PyTorch, the site's data and the "
                        "model loaded between messages; subprocess: Flower's default, a new ClientApp process per "
                        "message (slower: 5-10 s per message on a small machine)")
    p.add_argument("--poll-interval", type=float, default=SUPERNODE_IDLE_POLL_S,
                   help=f"seconds between the SuperNode's polls of the server when idle (default "
                        f"{SUPERNODE_IDLE_POLL_S}; Flower's own is 3)")
    p.add_argument("--threads", type=int, default=0,
                   help="CPU threads of the ClientApp's PyTorch and BLAS (default 0: theirs, one per core); on a "
                        "machine shared by several sites (a trial) give each about cores / sites")
    p.add_argument("--no-flower-tuning", action="store_true",
                   help="run Flower's own flower-supernode, without rmm's shorter polls (flower/supernode.py); "
                        "with --isolation subprocess nothing of Flower is patched")
    args = p.parse_args(list(argv))
    if args.max_retries < 1 or args.max_wait <= 0:
        p.error("--max-retries must be >= 1 and --max-wait > 0 (retries are bounded on purpose)")
    if not 0.05 <= args.poll_interval <= 60:
        p.error("--poll-interval must be between 0.05 and 60 seconds")
    if args.threads < 0:
        p.error("--threads must be >= 1 (or 0: PyTorch's default, one per core)")
    return args


def thread_env(threads: int) -> dict[str, str]:
    """Environment that caps PyTorch's and BLAS' CPU threads in the ClientApp processes (none for 0)."""
    return {k: str(threads) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")} if threads else {}


def parse_keygen_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="rmm-client keygen",
                                description="Create this site's key pair (ECDSA P-384, OpenSSH format, via ssh-keygen).")
    p.add_argument("--site", required=True, help="site name (e.g. A): writes <dir>/site-A and <dir>/site-A.pub")
    p.add_argument("--dir", type=Path, default=Path("keys"), help="folder for the key files (default keys/)")
    p.add_argument("--force", action="store_true", help="replace an existing key pair")
    return p.parse_args(list(argv))


def main_keygen(argv: Sequence[str]) -> int:
    args = parse_keygen_args(argv)
    try:
        private, public = keygen(args.site, args.dir, force=args.force)
        fp = ssh_fingerprint(public)
    except RmmError as err:
        print(f"rmm-client keygen: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    print(f"private key  {private}   (mode 600) KEEP IT HERE: never send it, never copy it off this machine")
    print(f"public key   {public}")
    print(f"fingerprint  {fp}")
    print(f"\nHand over ONLY {public} to the coordinator, and confirm the fingerprint with them by phone.")
    print(f"Then join with: rmm-client --site {args.site} --data <site folder> --superlink <host:port> "
          f"--root-cert ca.crt --key {private}")
    return EXIT_OK


def main_ledger(argv: Sequence[str]) -> int:
    """``rmm-client ledger --summary LEDGER [--budget FILE]``: the egress ledger's summary (client/ledger.py)."""
    p = argparse.ArgumentParser(prog="rmm-client ledger", description="Read this site's egress ledger: runs seen, "
                                "replies by status, refusals by policy key, errors by type, the privacy budget, and "
                                "warnings about patterns worth asking the coordinator about.")
    p.add_argument("--summary", required=True, type=Path, metavar="LEDGER", help="the ledger file (node config 'ledger')")
    p.add_argument("--budget", type=Path, metavar="FILE", help="the site's privacy-budget.json: epsilon per run, "
                   "in total and left")
    p.add_argument("--since", help="ISO 8601 time (UTC if no offset), inclusive")
    p.add_argument("--until", help="ISO 8601 time (UTC if no offset), inclusive")
    a = p.parse_args(list(argv))
    from .ledger import print_summary

    return print_summary(a.summary, a.since, a.until, a.budget, prog="rmm-client ledger")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["keygen"]:
        return main_keygen(argv[1:])
    if argv[:1] == ["ledger"]:
        return main_ledger(argv[1:])
    if argv[:1] == ["_flower"]:
        return launch_flower(argv[1:])
    if argv[:1] == ["_worker"]:
        return main_worker(argv[1:])
    args = parse_args(argv)
    try:
        check_site_name(args.site)
    except RmmError as err:
        print(f"rmm-client: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    try:
        site = validate_site(args.data)  # first: a bad folder never connects
    except (RmmError, OSError) as err:
        print(f"rmm-client: site folder is not valid: {err}", file=sys.stderr)
        return EXIT_USAGE
    try:
        source, policy = effective_policy(args.data, args.policy)
    except RmmError as err:
        print(f"rmm-client: site policy is not valid: {err}", file=sys.stderr)
        return EXIT_USAGE
    if args.check:
        print(format_summary(site.summary(), args.data))
        print(f"\nsite policy  {source}\n" + "\n".join("  " + line for line in policy.describe().splitlines()))
        print(budget_line(args, policy))
        try:
            print(f"device       {check_device(args.device)}")
        except RmmError as err:
            print(f"rmm-client: error: {err}", file=sys.stderr)
            return EXIT_USAGE
        print(f"\nOK: {args.data} is a valid site folder. Nothing was sent anywhere.")
        return EXIT_OK
    try:
        check_connection_args(args)
        check_device(args.device)
        if args.insecure:
            warn("--insecure: NO TLS and NO node authentication. Weights and metrics travel in clear text "
                 "and anyone can pose as the server. Use this only for local trials with synthetic data.")
            if args.key or args.root_cert:
                warn("--insecure ignores --key and --root-cert")
        if args.isolation == "process" or not args.no_flower_tuning:  # they patch Flower 1.41's internals
            require_tested_flower("rmm-client's long-lived ClientApp worker and tuned SuperNode polls", SITE_FIX)
        port = args.runtime_port or free_port()
        cmd = supernode_command(args, args.data, port)
    except RmmError as err:
        print(f"rmm-client: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    print(f"[rmm-client] site {args.site}: {len(site)} patients validated; joining {args.superlink} "
          f"({'INSECURE' if args.insecure else 'TLS + node key'}; "
          f"{'long-lived ClientApp worker' if args.isolation == 'process' else 'a ClientApp process per message'})",
          flush=True)
    seen: list[str] = []

    def relay(line: str) -> None:
        print(line, flush=True)
        seen.extend(marker for marker in _HINTS if marker in line and marker not in seen)

    companions: dict[str, list[str]] = {}
    secrets_dir: Path | None = None
    if args.isolation == "process":
        # Only a holder of this secret may take tasks from the SuperNode's local Runtime API.
        import tempfile

        secrets_dir = Path(tempfile.mkdtemp(prefix="rmm-client-"))
        secret = secrets_dir / "superexec.secret"
        fd = os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(os.urandom(32))
        cmd += ["--superexec-auth-secret-file", str(secret)]
        companions["ClientApp worker"] = worker_command(args, port, secret)
    try:
        launcher = () if args.no_flower_tuning else flower_launcher(args.poll_interval)
        code = run_supervised(cmd, flower_env(thread_env(args.threads)), on_line=relay, launcher=launcher,
                              companions=companions)
    finally:
        if secrets_dir is not None:
            shutil.rmtree(secrets_dir, ignore_errors=True)
    if code != 0 and code < 128:
        hints = [_HINTS[m].format(site=args.site, key=args.key) for m in seen] or [
            "see the 'Exit Code:' message above (https://flower.ai/docs/framework/ref-exit-codes.html)"]
        print(f"rmm-client: flower-supernode exited with code {code}: " + " ".join(hints), file=sys.stderr)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
