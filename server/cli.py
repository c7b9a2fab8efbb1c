"""``rmm-server``: the coordinator's commands, thin wrappers over Flower's own tools.

    rmm-server init-ca  --dir consortium/ [--san DNS:fl.example.org]   # CA + SuperLink certificate
    rmm-server register --key site-A.pub --connection rmm [--dir consortium/]  # flwr supernode register
    rmm-server start    --dir consortium/ --db consortium/state.db [--port 9092]  # flower-superlink, TLS + node auth
    rmm-server run      --config consortium.toml --connection rmm --out runs/crc-1  # flwr run ... --stream

TLS and SuperNode authentication are on unless ``--insecure`` is given, which says so loudly.
Every Flower process gets ``FLWR_TELEMETRY_ENABLED=0`` and ``FLWR_DISABLE_UPDATE_CHECK=1``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..core.errors import RmmError
from ..flower.key_fingerprint import ssh_fingerprint
from ..flower.processes import EXIT_FAILED, EXIT_OK, EXIT_USAGE, flower_env, require_executable, run_supervised, warn
from .consortium import load_consortium
from .pki import Pki, PkiError, fingerprint, init_ca, server_sans
from .run_console import StreamConsole
from .summary import summary_lines

DEFAULT_PORT = 9092
DEFAULT_ADDRESS = f"127.0.0.1:{DEFAULT_PORT}"
_RUN_ID = re.compile(r"Successfully started run (\d+)")
OUTPUT_FILES = ("metrics.json", "calibration.json", "run_config.json", "model.pt", "report.md", "report.html")


class ServerCliError(RmmError):
    """A coordinator command cannot proceed; the message says how to fix it."""


# ---- the app folder and the FLWR_HOME connection ---------------------------------------------
def app_dir(explicit: str | Path | None = None) -> Path:
    """The rmm project folder (the one with pyproject.toml) that ``flwr run`` packages and ships."""
    import rmmfed

    candidates = [Path(explicit)] if explicit else [Path(rmmfed.__file__).resolve().parent]
    for folder in candidates:
        toml = folder / "pyproject.toml"
        if toml.is_file():
            try:
                project = tomllib.loads(toml.read_text(encoding="utf-8"))
            except tomllib.TOMLDecodeError as err:
                raise ServerCliError(f"{toml} is not valid TOML ({err})") from None
            components = project.get("tool", {}).get("flwr", {}).get("app", {}).get("components", {})
            if project.get("project", {}).get("name") == "rmmfed" and components.get("serverapp"):
                return folder
            raise ServerCliError(f"{toml} is not the rmm project (no [tool.flwr.app.components] of rmmfed). "
                                 "Fix: pass --app <folder of the rmm checkout>")
    raise ServerCliError(f"no pyproject.toml in {candidates[0]}: 'flwr run' ships the app from the project folder, "
                         "which a plain wheel install does not have. Fix: install the coordinator from the "
                         "rmm source checkout (pip install -e <checkout>) or pass --app <checkout folder>")


def flwr_home() -> Path:
    """Flower's home folder: $FLWR_HOME, else ~/.flwr (as Flower itself resolves it)."""
    return Path(os.environ["FLWR_HOME"]) if os.environ.get("FLWR_HOME") else Path.home() / ".flwr"


def ensure_connection(name: str, *, address: str | None, root_cert: str | Path | None,
                      insecure: bool) -> dict[str, Any]:
    """Make ``[superlink.<name>]`` in $FLWR_HOME/config.toml say how to reach the SuperLink.

    An existing entry is kept when no address is given; otherwise the entry is (re)written with the
    address and either the absolute CA path or ``insecure = true``. Returns the entry in use.
    """
    import tomli_w  # a dependency of flwr

    if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
        raise ServerCliError(f"--connection {name!r}: use letters, digits, '-' or '_' (e.g. --connection rmm)")
    path = flwr_home() / "config.toml"
    try:
        config = tomllib.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except tomllib.TOMLDecodeError as err:
        raise ServerCliError(f"{path} is not valid TOML ({err}). Fix: repair or remove it") from None
    links = config.setdefault("superlink", {})
    current = links.get(name)
    if address is None and isinstance(current, dict) and current.get("address"):
        return current
    entry: dict[str, Any] = {"address": address or DEFAULT_ADDRESS}
    if insecure:
        entry["insecure"] = True
    else:
        if root_cert is None or not Path(root_cert).is_file():
            raise ServerCliError(f"no CA certificate for connection '{name}' ({root_cert or 'none given'}). "
                                 "Fix: pass --dir <consortium folder with ca.crt> or --root-cert ca.crt")
        entry["root-certificates"] = str(Path(root_cert).resolve())
    if current != entry:
        links[name] = entry
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(tomli_w.dumps(config), encoding="utf-8")
        print(f"[rmm-server] connection '{name}' -> {entry['address']} "
              f"({'INSECURE' if insecure else 'TLS, CA ' + entry['root-certificates']}) written to {path}")
    return entry


def _root_cert(args: argparse.Namespace) -> Path | None:
    if getattr(args, "root_cert", None):
        return Path(args.root_cert)
    if getattr(args, "dir", None):
        return Pki(Path(args.dir)).ca_cert
    return None


def _flwr_json(cmd: list[str], timeout: float = 120) -> dict[str, Any]:
    """Run a ``flwr ... --format json`` command; its JSON (Flower reports errors as success=false, rc 0)."""
    done = subprocess.run(cmd, env=flower_env(), capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)
    text = done.stdout
    start = text.find("{")
    try:
        return json.loads(text[start:]) if start >= 0 else {"success": False, "error-message": text + done.stderr}
    except json.JSONDecodeError:
        return {"success": False, "error-message": (text + done.stderr).strip()}


# ---- init-ca -------------------------------------------------------------------------------------
def cmd_init_ca(args: argparse.Namespace) -> int:
    pki = init_ca(args.dir, args.san or [], days=args.days, force=args.force)
    print(f"CA certificate      {pki.ca_cert}   -> give to every hospital (--root-cert) ")
    print(f"CA private key      {pki.ca_key}   (mode 600; keep offline, it signs server certificates)")
    print(f"server certificate  {pki.server_cert}   SANs: {', '.join(server_sans(pki.server_cert))}")
    print(f"server private key  {pki.server_key}   (mode 600)")
    print(f"CA fingerprint      SHA256 {fingerprint(pki.ca_cert)}")
    print("\nHospitals connect with the host name or address listed in the SANs; read the fingerprint to them "
          "so they can check the ca.crt they received (openssl x509 -noout -fingerprint -sha256 -in ca.crt).")
    return EXIT_OK


# ---- register ----------------------------------------------------------------------------------
def check_public_key(path: str | Path) -> str:
    """Refuse a private key or a non-ECDSA key before Flower sees it; return the fingerprint."""
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_ssh_public_key

    file = Path(path)
    if not file.is_file():
        raise ServerCliError(f"--key {file}: file not found. Fix: pass the site's .pub file")
    data = file.read_bytes()
    if b"PRIVATE KEY" in data[:100]:
        raise ServerCliError(f"--key {file} is a PRIVATE key. Fix: the hospital keeps it; ask for the .pub file "
                             "only, and have them create a new key pair (rmm-client keygen --force) because this "
                             "one has left their site")
    try:
        key = load_ssh_public_key(data.strip())
    except (ValueError, TypeError) as err:
        raise ServerCliError(f"--key {file}: not an OpenSSH public key ({err}). Fix: use the .pub file written "
                             "by 'rmm-client keygen'") from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ServerCliError(f"--key {file}: Flower node authentication needs an ECDSA (NIST curve) key, not "
                             f"{type(key).__name__}. Fix: have the site run 'rmm-client keygen' (ECDSA P-384)")
    return ssh_fingerprint(file)


def cmd_register(args: argparse.Namespace) -> int:
    fp = check_public_key(args.key)
    ensure_connection(args.connection, address=args.superlink, root_cert=_root_cert(args), insecure=args.insecure)
    res = _flwr_json([require_executable("flwr"), "supernode", "register", str(Path(args.key).resolve()),
                      args.connection, "--format", "json"])
    if res.get("success"):
        print(f"registered {args.key} ({fp}) as SuperNode {res.get('node-id')}")
        return EXIT_OK
    message = str(res.get("error-message", res))
    if "already in use" in message:
        print(f"{args.key} ({fp}) is already registered; nothing to do")
        return EXIT_OK
    print(f"rmm-server register: error: {message.strip()}\nFix: check that the server runs "
          f"(rmm-server start) and that connection '{args.connection}' points at it", file=sys.stderr)
    return EXIT_FAILED


# ---- start ---------------------------------------------------------------------------------------
def superlink_command(args: argparse.Namespace) -> list[str]:
    db = Path(args.db).resolve()
    cmd = [require_executable("flower-superlink"), "--host", args.host, "--port", str(args.port),
           "--database", str(db), "--disable-runtime-dependency-installation"]
    if args.insecure:
        return cmd + ["--insecure"]
    pki = Pki(Path(args.dir).resolve())
    pki.require_server_files()
    return cmd + ["--ssl-ca-certfile", str(pki.ca_cert), "--ssl-certfile", str(pki.server_cert),
                  "--ssl-keyfile", str(pki.server_key), "--enable-supernode-auth"]


def cmd_start(args: argparse.Namespace) -> int:
    if args.db is None:
        args.db = str(Path(args.dir) / "state.db")
    cmd = superlink_command(args)
    Path(args.db).resolve().parent.mkdir(parents=True, exist_ok=True)
    if args.insecure:
        warn("--insecure: the SuperLink runs WITHOUT TLS and WITHOUT SuperNode authentication. Anyone who "
             "reaches the port can join as a site or read the traffic. Local trials with synthetic data ONLY.")
    else:
        print(f"[rmm-server] TLS with {Path(args.dir) / 'server.crt'} (SANs: "
              f"{', '.join(server_sans(Pki(Path(args.dir)).server_cert))}); SuperNode authentication on")
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"[rmm-server] NOTE: Flower 1.41 serves the Fleet, Control and Runtime APIs on this one port "
              f"({args.host}:{args.port}); the Control API (submit runs, register nodes) has no login. "
              "Expose only /v1/fleet/ to hospitals (docs/deployment.md, 'Exposing the server').",
              file=sys.stderr, flush=True)
    print(f"[rmm-server] state database {Path(args.db).resolve()}", flush=True)
    return run_supervised(cmd, flower_env(), grace=20.0)


# ---- run -----------------------------------------------------------------------------------------
def run_status(connection: str, run_id: str, wait_s: float = 30.0) -> tuple[str, str]:
    """(status, details) of a run from ``flwr ls``; waits briefly for a 'finished:*' status."""
    flwr = require_executable("flwr")
    deadline = time.monotonic() + wait_s
    status, details = "unknown", ""
    while True:
        res = _flwr_json([flwr, "ls", connection, "--run-id", run_id, "--format", "json"])
        runs = res.get("runs") or []
        if runs:
            status, details = str(runs[0].get("status", "unknown")), str(runs[0].get("status-details", ""))
        elif not res.get("success"):
            details = str(res.get("error-message", ""))
        if status.startswith("finished") or time.monotonic() > deadline:
            return status, details
        time.sleep(1.0)


def outputs_ok(out: Path, since: float) -> list[str]:
    """Names of the expected output files that are missing or older than ``since``."""
    return [n for n in OUTPUT_FILES if not (out / n).is_file() or (out / n).stat().st_mtime < since - 1]


def cmd_run(args: argparse.Namespace) -> int:
    consortium = load_consortium(args.config)
    app = app_dir(args.app)
    ensure_connection(args.connection, address=args.superlink, root_cert=_root_cert(args), insecure=args.insecure)
    if args.insecure:
        warn("--insecure: the run is submitted without TLS.")
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    pairs = consortium.run_config_args(out)
    if args.resume:
        if not (out / "checkpoint.pt").is_file():
            print(f"rmm-server: error: --resume but {out / 'checkpoint.pt'} does not exist. Fix: point --out at the "
                  "interrupted run's output folder, or drop --resume to start a new run.", file=sys.stderr)
            return 2
        pairs.append("resume=true")
    # One --run-config string on purpose: Flower 1.41 merges separate --run-config items with
    # dict.update, so a second "model.x=..." item would drop an earlier "model.y=...".
    cmd = [require_executable("flwr"), "run", str(app), args.connection, "--stream", "--run-config", " ".join(pairs)]
    print(f"[rmm-server] consortium '{consortium.name}': sites {', '.join(consortium.sites)}; app {app}", flush=True)
    print(f"[rmm-server] run config: {' '.join(pairs)}", flush=True)
    run_ids: list[str] = []
    t0 = time.time()
    console = StreamConsole(out / "flower.log", verbose=args.verbose)
    print(f"[rmm-server] Flower's log lines go to {out / 'flower.log'}" + (" and the console" if args.verbose else
                                                                         " (--verbose shows them)"), flush=True)

    def on_line(line: str) -> None:
        console.line(line)
        if not run_ids and (m := _RUN_ID.search(line)):
            run_ids.append(m.group(1))
            if not args.verbose:
                print(f"[rmm-server] run {run_ids[0]} submitted; following it", flush=True)

    try:
        code = run_supervised(cmd, flower_env(), on_line=on_line, grace=5.0)
    finally:
        console.close()
    wall = time.time() - t0
    if not run_ids:
        print(f"rmm-server run: error: the run was not submitted (flwr run exit code {code}). Fix: see the "
              "message above; is the server up (rmm-server start) and the connection right?", file=sys.stderr)
        return EXIT_FAILED
    run_id = run_ids[0]
    if code >= 128:
        print(f"rmm-server run: stopped following run {run_id}; it goes on on the server. Stop it with: "
              f"flwr stop {run_id} {args.connection}", file=sys.stderr)
        return code
    status, details = run_status(args.connection, run_id)
    shown = f" ({details})" if details and details != "N/A" else ""
    print(f"[rmm-server] run {run_id}: {status}{shown}; {wall:.1f} s", flush=True)
    if status != "finished:completed":
        print(f"rmm-server run: error: run {run_id} did not complete ({status}). Logs: flwr log {run_id} "
              f"{args.connection}", file=sys.stderr)
        return EXIT_FAILED
    missing = outputs_ok(out, t0)
    if missing:
        print(f"rmm-server run: error: run {run_id} finished but {', '.join(missing)} missing or stale in {out}. "
              "Fix: run rmm-server on the machine that runs the SuperLink (the ServerApp writes there)",
              file=sys.stderr)
        return EXIT_FAILED
    try:
        metrics = json.loads((out / "metrics.json").read_text())
        print("\n".join(summary_lines(metrics, out, sorted(p.name for p in out.glob("*.png")))))
    except (OSError, ValueError, KeyError) as err:
        print(f"rmm-server run: error: {out / 'metrics.json'} cannot be summarised ({type(err).__name__}: {err})",
              file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


# ---- argument parsing ----------------------------------------------------------------------------
def _connection_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--connection", required=True, help="name of the SuperLink connection in $FLWR_HOME/config.toml")
    p.add_argument("--superlink", help=f"address HOST:PORT to (re)write into that connection (default when new: "
                                       f"{DEFAULT_ADDRESS})")
    p.add_argument("--dir", type=Path, help="consortium folder (its ca.crt verifies the server)")
    p.add_argument("--root-cert", help="CA certificate instead of <dir>/ca.crt")
    p.add_argument("--insecure", action="store_true", help="connection without TLS (local trials only)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rmm-server", description="The coordinator's commands: CA and certificates, node registration, the server, the run.",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("init-ca", help="create the consortium CA and the SuperLink TLS certificate")
    s.add_argument("--dir", type=Path, required=True, help="folder for ca.crt, ca.key, server.crt, server.key")
    s.add_argument("--san", action="append", metavar="DNS:NAME|IP:ADDR",
                   help="extra subjectAltName of the server (repeatable); localhost and 127.0.0.1 are always in")
    s.add_argument("--days", type=int, default=365, help="validity in days (default 365)")
    s.add_argument("--force", action="store_true", help="replace an existing CA (every hospital needs the new ca.crt)")
    s.set_defaults(func=cmd_init_ca)

    s = sub.add_parser("register", help="register a hospital's public key (flwr supernode register)")
    s.add_argument("--key", required=True, help="the site's public key file (site-A.pub)")
    _connection_args(s)
    s.set_defaults(func=cmd_register)

    s = sub.add_parser("start", help="run the SuperLink (TLS + SuperNode authentication) in the foreground")
    s.add_argument("--dir", type=Path, default=Path("consortium"), help="consortium folder from init-ca")
    s.add_argument("--db", help="state database (runs, registered nodes); default <dir>/state.db")
    s.add_argument("--host", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")
    s.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port for Fleet/Control/Runtime APIs (default {DEFAULT_PORT})")
    s.add_argument("--insecure", action="store_true", help="no TLS, no node authentication: local trials ONLY")
    s.set_defaults(func=cmd_start)

    s = sub.add_parser("run", help="submit the consortium's run and follow it to the end")
    s.add_argument("--config", required=True, type=Path, help="consortium TOML (sites, rounds, strategy, [run] ...)")
    s.add_argument("--out", required=True, type=Path, help="output folder on the SuperLink's machine")
    s.add_argument("--app", type=Path, help="rmm project folder to ship (default: the installed checkout)")
    s.add_argument("--resume", action="store_true",
                   help="continue an interrupted run from OUT/checkpoint.pt (same consortium config)")
    s.add_argument("--verbose", action="store_true",
                   help="print every line Flower streams (default: OUT/flower.log; the console gets phases and bars)")
    _connection_args(s)
    s.set_defaults(func=cmd_run)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(None if argv is None else list(argv))
    try:
        return int(args.func(args))
    except (RmmError, PkiError) as err:
        print(f"rmm-server {args.command}: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except subprocess.TimeoutExpired as err:
        print(f"rmm-server {args.command}: error: {err.cmd[0]} did not answer in {err.timeout:.0f} s. "
              "Fix: check that the server runs and the connection address is right", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    raise SystemExit(main())
