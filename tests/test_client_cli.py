"""rmm-client / rmm-server without a network: site checks, refusals, keys, certificates, consortium file.

No test here starts a Flower process: ``subprocess.Popen`` is replaced by a tripwire where a
command must not connect, and ``run_supervised`` by a recorder where the command line is checked.
"""

from __future__ import annotations

import json

import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_ssh_public_key

from rmmfed.client import cli as client_cli
from rmmfed.client import keys
from rmmfed.flower import config_args, processes
from rmmfed.core.errors import UsageError
from rmmfed.server import cli as server_cli
from rmmfed.server.consortium import Consortium, ConsortiumError, load_consortium
from rmmfed.server.pki import PkiError, init_ca, parse_san


@pytest.fixture
def no_process(monkeypatch):
    """Fail the test if anything tries to start a process."""
    def tripwire(*args, **kwargs):
        raise AssertionError(f"a process was started: {args[0] if args else kwargs}")
    monkeypatch.setattr(subprocess, "Popen", tripwire)
    monkeypatch.setattr(subprocess, "run", tripwire)


@pytest.fixture
def recorded(monkeypatch):
    """Replace run_supervised: record (cmd, env) and pretend the child exited 0."""
    calls: list[tuple[list[str], dict]] = []

    def fake(cmd, env, **kwargs):
        calls.append((list(cmd), dict(env)))
        return 0
    # patched on the cli module: rmm-client's main and supernode_command look these names up there
    monkeypatch.setattr(client_cli, "run_supervised", fake)
    monkeypatch.setattr(client_cli, "require_executable", lambda name: f"/opt/flower/{name}")
    return calls


def _duplicate_site(root: Path) -> Path:
    site = root / "site-bad"
    site.mkdir()
    (site / "patients.csv").write_text("patient_id,time,event\np1,10,1\np2,12,0\np1,15,1\n")
    return site


# ---- rmm-client --check and the site folder refusal --------------------------------------------
def test_check_prints_summary_and_never_connects(site_factory, capsys, no_process):
    site = site_factory(n=40, n_empty=3)
    code = client_cli.main(["--site", "A", "--data", str(site), "--check", "--device", "cpu"])
    out = capsys.readouterr().out
    assert code == 0
    assert "patients     40" in out
    assert "splits       train 24, val 8, test 8" in out
    for modality, dim in {"a": 5, "b": 4, "c": 3}.items():
        row = next(line for line in out.splitlines() if line.startswith(f"{modality} "))
        assert row.split()[1] == str(dim)
    assert "patients with no modality  3" in out
    assert "Nothing was sent anywhere" in out


def test_check_shows_the_lifetime_budget_the_site_would_keep(site_factory, tmp_path, capsys, no_process):
    from rmmfed.core.privacy.privacy_budget import PrivacyBudget

    site = site_factory(n=40)
    state = tmp_path / "state"
    assert client_cli.main(["--site", "A", "--data", str(site), "--check", "--device", "cpu",
                            "--state-dir", str(state)]) == 0
    assert f"budget       {state.resolve()}/privacy-budget.json: no run yet; lifetime caps epsilon 50, exact test evaluations 5" in capsys.readouterr().out
    budget = PrivacyBudget(state, 50.0)
    budget.reserve("7", 8.0, 1e-5, "tier1+tier2 DP-SGD")
    budget.count_evaluation("7", 5)
    assert client_cli.main(["--site", "A", "--data", str(site), "--check", "--device", "cpu",
                            "--state-dir", str(state)]) == 0
    out = capsys.readouterr().out
    assert "epsilon spent 8 of 50 over 1 run(s), exact test evaluations 1 of 5" in out


def test_bad_folder_exits_2_with_file_and_field_before_any_process(tmp_path, capsys, no_process):
    site = _duplicate_site(tmp_path)
    key = tmp_path / "k"
    key.write_text("x")
    code = client_cli.main(["--site", "A", "--data", str(site), "--superlink", "127.0.0.1:9092",
                            "--root-cert", str(key), "--key", str(key)])
    err = capsys.readouterr().err
    assert code == 2
    assert "patients.csv" in err and "patient_id" in err and "duplicate" in err and "Fix:" in err
    assert client_cli.main(["--site", "A", "--data", str(site), "--check"]) == 2


def test_missing_folder_exits_2(tmp_path, capsys, no_process):
    assert client_cli.main(["--site", "A", "--data", str(tmp_path / "nope"), "--check"]) == 2
    assert "does not exist" in capsys.readouterr().err


# ---- rmm-client joining: the flower-supernode command line -------------------------------------
def test_secure_join_builds_supernode_command(site_factory, tmp_path, recorded, capsys):
    site = site_factory(n=20)
    ca, key = tmp_path / "ca.crt", tmp_path / "key-A"
    ca.write_text("pem")
    key.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    key.chmod(0o600)
    code = client_cli.main(["--site", "A", "--data", str(site), "--superlink", "fl.example.org:9092",
                            "--root-cert", str(ca), "--key", str(key), "--device", "cpu", "--runtime-port", "9555"])
    assert code == 0
    (cmd, env), = recorded
    assert cmd[0] == "/opt/flower/flower-supernode"
    assert cmd[cmd.index("--superlink") + 1] == "fl.example.org:9092"
    assert cmd[cmd.index("--root-certificates") + 1] == str(ca.resolve())
    assert cmd[cmd.index("--auth-supernode-private-key") + 1] == str(key.resolve())
    assert cmd[cmd.index("--port") + 1] == "9555"
    assert "--insecure" not in cmd and "--max-retries" in cmd and "--max-wait-time" in cmd
    from flwr.common.config import parse_config_args  # Flower's own parser reads what we wrote
    node = parse_config_args([cmd[cmd.index("--node-config") + 1]])
    assert node == {"data-dir": str(site.resolve()), "device": "cpu", "site": "A"}
    assert env["FLWR_TELEMETRY_ENABLED"] == "0" and env["FLWR_DISABLE_UPDATE_CHECK"] == "1"
    assert "WARNING" not in capsys.readouterr().err


def test_insecure_warns_loudly_and_drops_tls(site_factory, recorded, capsys):
    site = site_factory(n=20)
    code = client_cli.main(["--site", "A", "--data", str(site), "--superlink", "127.0.0.1:9092",
                            "--insecure", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 0
    assert "WARNING" in err and "--insecure" in err and "NO TLS" in err and "!!!!" in err
    (cmd, _), = recorded
    assert "--insecure" in cmd
    assert "--root-certificates" not in cmd and "--auth-supernode-private-key" not in cmd


def test_threads_caps_the_clientapps_torch_and_blas_threads_and_the_default_leaves_them(site_factory, recorded,
                                                                                        monkeypatch, capsys):
    site = site_factory(n=20)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    base = ["--site", "A", "--data", str(site), "--superlink", "127.0.0.1:9092", "--insecure", "--device", "cpu"]
    assert client_cli.main(base + ["--threads", "1"]) == 0
    assert client_cli.main(base) == 0
    (_, capped), (_, default) = recorded
    assert capped["OMP_NUM_THREADS"] == capped["MKL_NUM_THREADS"] == "1"
    assert "OMP_NUM_THREADS" not in default
    with pytest.raises(SystemExit):
        client_cli.main(base + ["--threads", "-1"])
    assert "--threads must be >= 1" in capsys.readouterr().err


@pytest.mark.parametrize("missing", ["--key", "--root-cert", "--superlink"])
def test_secure_by_default_refuses_missing_settings(site_factory, tmp_path, recorded, capsys, missing):
    site = site_factory(n=20)
    ca, key = tmp_path / "ca.crt", tmp_path / "key-A"
    ca.write_text("pem")
    key.write_text("private")
    key.chmod(0o600)
    argv = {"--superlink": "127.0.0.1:9092", "--root-cert": str(ca), "--key": str(key)}
    argv.pop(missing)
    code = client_cli.main(["--site", "A", "--data", str(site), "--device", "cpu",
                            *[x for kv in argv.items() for x in kv]])
    assert code == 2
    assert missing in capsys.readouterr().err
    assert recorded == []


def test_public_key_passed_as_private_key_is_refused(site_factory, tmp_path, recorded, capsys):
    site = site_factory(n=20)
    ca, pub = tmp_path / "ca.crt", tmp_path / "site-A.pub"
    ca.write_text("pem")
    pub.write_text("ecdsa-sha2-nistp384 AAAA rmm\n")
    code = client_cli.main(["--site", "A", "--data", str(site), "--superlink", "h:1", "--root-cert", str(ca),
                            "--key", str(pub), "--device", "cpu"])
    assert code == 2 and "PUBLIC key" in capsys.readouterr().err and recorded == []


# ---- keys ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("with_ssh_keygen", [True, False])
def test_keygen_writes_ecdsa_p384_pair(tmp_path, capsys, monkeypatch, with_ssh_keygen):
    if with_ssh_keygen and not keys.shutil.which("ssh-keygen"):
        pytest.skip("ssh-keygen is not installed here (the cryptography fallback is tested)")
    if not with_ssh_keygen:
        real = keys.shutil.which
        monkeypatch.setattr(keys.shutil, "which", lambda n: None if n == "ssh-keygen" else real(n))
    assert client_cli.main(["keygen", "--site", "A", "--dir", str(tmp_path / "keys")]) == 0
    out = capsys.readouterr().out
    private, public = tmp_path / "keys" / "site-A", tmp_path / "keys" / "site-A.pub"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    key = load_ssh_public_key(public.read_bytes())
    assert key.curve.name == "secp384r1"
    assert f"ONLY {public}" in out and "SHA256:" in out
    assert server_cli.check_public_key(public).startswith("SHA256:")
    with pytest.raises(server_cli.ServerCliError, match="PRIVATE key"):
        server_cli.check_public_key(private)
    assert client_cli.main(["keygen", "--site", "A", "--dir", str(tmp_path / "keys")]) == 2  # no overwrite


# ---- certificates --------------------------------------------------------------------------------
def test_init_ca_server_cert_has_sans_and_verifies_against_ca(tmp_path, capsys):
    folder = tmp_path / "consortium"
    assert server_cli.main(["init-ca", "--dir", str(folder), "--san", "DNS:fl.example.org",
                            "--san", "IP:10.0.0.5"]) == 0
    ca = x509.load_pem_x509_certificate((folder / "ca.crt").read_bytes())
    srv = x509.load_pem_x509_certificate((folder / "server.crt").read_bytes())
    srv.verify_directly_issued_by(ca)  # raises if the signature or issuer is wrong
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    sans = srv.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {str(a) for a in sans.get_values_for_type(x509.IPAddress)} == {"127.0.0.1", "10.0.0.5"}
    assert set(sans.get_values_for_type(x509.DNSName)) == {"localhost", "fl.example.org"}
    days = (srv.not_valid_after_utc - srv.not_valid_before_utc).days
    assert 364 <= days <= 366
    for key in ("ca.key", "server.key"):
        assert stat.S_IMODE((folder / key).stat().st_mode) == 0o600
    assert "SANs: DNS:localhost" in capsys.readouterr().out
    assert server_cli.main(["init-ca", "--dir", str(folder)]) == 2  # never overwrites silently
    assert "already exist" in capsys.readouterr().err


def test_san_parsing():
    assert parse_san("10.1.2.3") == x509.IPAddress(__import__("ipaddress").ip_address("10.1.2.3"))
    assert parse_san("fl.example.org") == x509.DNSName("fl.example.org")
    with pytest.raises(PkiError, match="not an IP address"):
        parse_san("IP:fl.example.org")
    with pytest.raises(PkiError):
        init_ca(Path("/nonexistent-but-unused"), ["DNS:"])


# ---- consortium file -> flwr run overrides -----------------------------------------------------
CONSORTIUM = """
name = "crc"
sites = ["A", "B", "C"]
rounds = 12
strategy = "fedprox"
quantile = 0.9
min-sites = 2
high-risk-contexts = ["oncology-staging", "palliative"]

[run]
seed = 7
"dp.enabled" = false
"model.mc-samples" = 4
proximal-mu = 0.05
[run.model]
gated-attention = false
"""


def test_consortium_toml_to_run_config_overrides(tmp_path):
    from flwr.common.config import parse_config_args

    (tmp_path / "c.toml").write_text(CONSORTIUM)
    c = load_consortium(tmp_path / "c.toml")
    out = tmp_path / "out dir"  # a space: must survive Flower's key=value parser
    expected = {"rounds": 12, "strategy": "fedprox", "quantile": 0.9, "min-sites": 2,
                "high-risk-contexts": "oncology-staging,palliative", "seed": 7, "dp.enabled": False, "model.mc-samples": 4,
                "proximal-mu": 0.05, "model.gated-attention": False, "num-sites": 3, "out-dir": str(out.resolve()),
                    "expected-sites": "A,B,C"}
    assert c.overrides(out) == expected
    args = c.run_config_args(out)
    assert "strategy='fedprox'" in args and "model.gated-attention=false" in args and "num-sites=3" in args
    # rmm-server passes ONE --run-config string: exactly what flwr run will hand the ServerApp
    assert parse_config_args([" ".join(args)]) == expected
    # (not one item per key: Flower 1.41 merges separate items with dict.update on the nested
    # form, so model.mc-samples would be lost behind model.gated-attention)


@pytest.mark.parametrize("text, words", [
    ('sites = ["A"]\n[run]\n"model.embed-dimm" = 3\n', ["model.embed-dimm"]),
    ('sites = ["A"]\nrounds = 2\n[run]\nrounds = 3\n', ["rounds", "both"]),
    ('sites = ["A"]\n[run]\nout-dir = "/x"\n', ["out-dir", "--out"]),
    ('sites = ["A"]\n[run]\nledger-dir = "/x"\n', ["ledger-dir", "for simulations"]),
    ('sites = ["A", "B"]\nmin-sites = 3\n', ["min-sites"]),
    ('sites = ["A", "A"]\n', ["listed twice"]),
    ('sites = []\n', ["sites"]),
    ('sites = ["A"]\nroundz = 3\n', ["roundz"]),
    ('sites = ["A"]\nstrategy = "fedsgd"\n', ["strategy"]),
    ('sites = ["A"]\n[run]\nmodality = ["a", "b"]\n', ["modality"]),
    ('sites = ["A"\n', ["not valid TOML"]),
])
def test_consortium_errors_name_the_key_and_fix(tmp_path, text, words):
    (tmp_path / "c.toml").write_text(text)
    with pytest.raises(ConsortiumError) as err:
        load_consortium(tmp_path / "c.toml")
    message = str(err.value)
    assert str(tmp_path / "c.toml") in message and "Fix" in message
    for word in words:
        assert word in message


def test_flower_value_quoting():
    from flwr.common.config import parse_config_args

    for value in ["plain", "with space", "it's", "/a/b c/d", "", 3, 0.5, 1e-8, True]:
        assert parse_config_args([f"k={config_args.flower_value(value)}"]) == {"k": value}
    with pytest.raises(UsageError):
        config_args.flower_value("both ' and \"")


# ---- rmm-server run: connection entry, app folder, failure detection ------------------------------
def test_connection_entry_written_once(tmp_path, monkeypatch, capsys):
    import tomllib

    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "home"))
    init_ca(tmp_path / "c")
    entry = server_cli.ensure_connection("rmm", address="127.0.0.1:9300", root_cert=tmp_path / "c" / "ca.crt",
                                         insecure=False)
    conf = tomllib.loads((tmp_path / "home" / "config.toml").read_text())
    assert conf["superlink"]["rmm"] == entry == {"address": "127.0.0.1:9300",
                                                  "root-certificates": str((tmp_path / "c" / "ca.crt").resolve())}
    assert server_cli.ensure_connection("rmm", address=None, root_cert=None, insecure=False) == entry
    with pytest.raises(server_cli.ServerCliError, match="--dir"):
        server_cli.ensure_connection("other", address=None, root_cert=None, insecure=False)
    assert server_cli.ensure_connection("trial", address="127.0.0.1:1", root_cert=None, insecure=True)["insecure"]


def test_app_dir_is_the_project_with_pyproject(tmp_path):
    root = server_cli.app_dir()
    assert (root / "pyproject.toml").is_file()
    with pytest.raises(server_cli.ServerCliError, match="--app"):
        server_cli.app_dir(tmp_path)


@pytest.mark.parametrize("status, outputs, expected", [
    ("finished:completed", True, 0),
    ("finished:failed", False, 1),   # flwr run itself exits 0 here: the status decides
    ("finished:completed", False, 1),
])
def test_run_exit_code_follows_run_status(tmp_path, monkeypatch, capsys, status, outputs, expected):
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "home"))
    init_ca(tmp_path / "c")
    (tmp_path / "c.toml").write_text('sites = ["A", "B"]\nrounds = 2\n')
    out = tmp_path / "out"
    seen = {}

    def fake_run(cmd, env, on_line=None, **kwargs):
        seen["cmd"] = cmd
        on_line("Successfully started run 123")
        if outputs:
            out.mkdir(exist_ok=True)
            for name in server_cli.OUTPUT_FILES:
                (out / name).write_text("x")
            (out / "metrics.json").write_text(json.dumps(
                {"federated": {"c_index": 0.75, "per_site": {"A": {"n_test": 4, "c_index": 0.7}}}}))
        return 0
    monkeypatch.setattr(server_cli, "run_supervised", fake_run)
    monkeypatch.setattr(server_cli, "require_executable", lambda name: name)
    monkeypatch.setattr(server_cli, "run_status", lambda conn, run_id: (status, "" if outputs else "boom"))
    code = server_cli.main(["run", "--config", str(tmp_path / "c.toml"), "--connection", "rmm",
                            "--dir", str(tmp_path / "c"), "--out", str(out)])
    assert code == expected
    if expected == 0:  # the end summary, read from metrics.json
        assert "federated 0.750" in capsys.readouterr().out
    cmd = seen["cmd"]
    assert cmd[:2] == ["flwr", "run"] and cmd[3] == "rmm" and "--stream" in cmd
    assert cmd.count("--run-config") == 1
    pairs = cmd[cmd.index("--run-config") + 1].split(" ")
    assert "num-sites=2" in pairs and f"out-dir='{out.resolve()}'" in pairs and "rounds=2" in pairs


def test_start_refuses_without_certificates_and_warns_when_insecure(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(server_cli, "require_executable", lambda name: name)
    assert server_cli.main(["start", "--dir", str(tmp_path / "none"), "--db", str(tmp_path / "s.db")]) == 2
    assert "init-ca" in capsys.readouterr().err
    seen = []
    monkeypatch.setattr(server_cli, "run_supervised", lambda cmd, env, **kw: seen.append(cmd) or 0)
    init_ca(tmp_path / "c")
    assert server_cli.main(["start", "--dir", str(tmp_path / "c"), "--db", str(tmp_path / "s.db"),
                            "--host", "127.0.0.1"]) == 0
    secure = seen[-1]
    for flag in ("--ssl-ca-certfile", "--ssl-certfile", "--ssl-keyfile", "--enable-supernode-auth",
                 "--disable-runtime-dependency-installation", "--database"):
        assert flag in secure
    assert "--insecure" not in secure and "WARNING" not in capsys.readouterr().err
    assert server_cli.main(["start", "--dir", str(tmp_path / "c"), "--insecure", "--host", "127.0.0.1"]) == 0
    assert "--insecure" in seen[-1] and "--enable-supernode-auth" not in seen[-1]
    assert "WARNING" in capsys.readouterr().err


# ---- child process groups ------------------------------------------------------------------------
def test_end_group_kills_children_that_ignore_sigterm(tmp_path):
    """Like flower-superexec lingering after its parent: a grandchild that ignores SIGTERM."""
    script = "trap '' TERM; (trap '' TERM; sleep 60) & sleep 60"
    proc = subprocess.Popen(["sh", "-c", script], start_new_session=True)
    time.sleep(0.3)
    assert len(processes._group_members(proc.pid)) >= 2 or sys.platform != "linux"
    t0 = time.monotonic()
    processes.end_group(proc, grace=0.5)
    assert time.monotonic() - t0 < 10
    assert processes._group_members(proc.pid) == []


def test_run_supervised_ends_children_in_other_sessions():
    """Like the SuperLink's superexec (own session): still ended when the child exits."""
    lines: list[str] = []
    env = processes.flower_env()
    code = processes.run_supervised(["sh", "-c", "setsid sleep 60 & echo $!; sleep 1.6"], env, on_line=lines.append,
                                    grace=1.0)
    assert code == 0 and env["FLWR_TELEMETRY_ENABLED"] == "0"
    orphan = int(lines[0])
    state = Path(f"/proc/{orphan}/stat")
    assert not state.exists() or state.read_text().rsplit(")", 1)[1].split()[0] == "Z"


def test_the_state_folder_and_ledger_reach_the_clientapp_through_the_node_config(site_factory, tmp_path, recorded):
    """The privacy budget's folder is the hospital's choice (node config), never the coordinator's."""
    from flwr.common.config import parse_config_args

    site = site_factory(n=20)
    code = client_cli.main(["--site", "A", "--data", str(site), "--superlink", "127.0.0.1:9092", "--insecure",
                            "--device", "cpu", "--state-dir", str(tmp_path / "state"),
                            "--ledger", str(tmp_path / "egress.jsonl")])
    assert code == 0
    (cmd, _), = recorded
    node = parse_config_args([cmd[cmd.index("--node-config") + 1]])
    assert node["state-dir"] == str((tmp_path / "state").resolve())
    assert node["ledger"] == str((tmp_path / "egress.jsonl").resolve())
