"""``rmm-simulate``: the four-center FUSCC-style study (or any cohort folder) through Flower's
simulation engine on one machine, plus simulation-only references (pooled model, oracle).

    rmm-simulate                       # generate the default cohort, run it, write runs/default/
    rmm-simulate --data DIR --out OUT  # DIR's sub-folders are sites (their split column is honoured)
    rmm-simulate --preset wsi --patients 200  # whole-slide-scale bags (simulations/cohort_presets.py)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

# No phoning home: set before Flower is imported anywhere in this process (Ray workers inherit it).
os.environ["FLWR_TELEMETRY_ENABLED"] = "0"
os.environ["FLWR_DISABLE_UPDATE_CHECK"] = "1"

from ..core.config import RunConfig  # noqa: E402
from ..core.errors import RmmError  # noqa: E402
from ..core.data.schema import merge_schemas  # noqa: E402
from ..core.privacy.site_policy import PHASES  # noqa: E402
from ..core.data.site_data import discover_sites, load_site  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="rmm-simulate", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, help="cohort folder whose sub-folders are sites (default: generate the FUSCC-style cohort)")
    p.add_argument("--out", type=Path, default=Path("runs/default"), help="output folder (default: runs/default)")
    p.add_argument("--seed", type=int, default=0, help="seeds the cohort, the split, the model and training")
    p.add_argument("--rounds", type=int, help="Tier 1 federated rounds")
    p.add_argument("--strategy", choices=["fedavg", "fedprox", "fedadam", "fedmedian", "fedtrimmedavg", "krum", "multikrum"])
    p.add_argument("--quantile", type=float, help="theta quantile (default 0.95)")
    p.add_argument("--patients", type=int, default=1679, help="cohort size when generating (default 1679)")
    p.add_argument("--preset", default="default", choices=["default", "wsi"],
                   help="synthetic cohort to generate: default (compact widths) or wsi (pathology 1,024-d x "
                        "500-4,000 patches, radiology 512-d, report 768-d; about 9 MB per patient on disk)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any run-config key, e.g. --set model.modality-dropout=0 (repeatable)")
    p.add_argument("--no-pooled", action="store_true", help="skip the pooled (centralised) reference")
    p.add_argument("--faulty-site", metavar="SITE", help="simulate a broken/hostile site (folder name, e.g. site-B)")
    p.add_argument("--fault", choices=["nan", "scale"], default="scale",
                   help="what the faulty site sends: NaN weights, or its update scaled by 1e6 (default)")
    p.add_argument("--resume", action="store_true",
                   help="continue from OUT/checkpoint.pt (same config and --data) after an interrupted run")
    p.add_argument("--device", default="cpu", help="auto | cpu | cuda (default cpu: reproducible)")
    p.add_argument("--verbose", action="store_true",
                   help="show Flower's and Ray's own log lines on the console (default: OUT/flower.log)")
    p.add_argument("--seeded-noise", action="store_true",
                   help="draw DP noise from --seed (reproducible figures; noise a coordinator could replay): sets "
                   "dp.seeded-noise and lets every simulated site accept it. Never in a deployment; the default "
                   "site policy refuses it")
    p.add_argument("--policy", type=Path, help="site policy file (TOML/JSON) for every site without its own "
                   "policy.toml in its folder (default: the safe defaults; docs/privacy.md)")
    return p.parse_args(argv)


def _parse_value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def build_config(args: argparse.Namespace) -> RunConfig:
    over: dict = {"seed": args.seed, "device": args.device}
    if getattr(args, "seeded_noise", False):
        over["dp.seeded-noise"] = True
    for key, val in (("rounds", args.rounds), ("strategy", args.strategy), ("quantile", args.quantile)):
        if val is not None:
            over[key] = val
    for item in args.set:
        key, sep, val = item.partition("=")
        if not sep:
            raise RmmError(f"--set {item!r} is not KEY=VALUE. Fix: write e.g. --set rounds=10")
        over[key.strip()] = _parse_value(val.strip())
    return RunConfig().with_overrides(over)


def validate_cohort(cohort: Path):
    """Load and validate every site before anything runs (errors name file, field and fix)."""
    paths = discover_sites(cohort)
    first = [load_site(p) for p in paths]
    dims = merge_schemas([s.schema() for s in first])
    return paths, [load_site(p, expected=dims, scan_values=False) for p in paths], dims  # values scanned above


def _warn(text: str) -> None:
    print(f"[rmm] warning: {text}", file=sys.stderr, flush=True)


def check_policies(paths: list[Path], default: Path | None) -> dict:
    """Each site's policy (its folder's policy.toml, else ``default``, else the defaults), loaded now so
    that a bad file stops the run before anything starts (PolicyFileError names file, key and fix)."""
    from ..client.policy_mod import SITE_POLICY_FILE
    from ..core.privacy.site_policy import load_policy

    out = {}
    for p in paths:
        source = p / SITE_POLICY_FILE if (p / SITE_POLICY_FILE).is_file() else default
        out[p.name] = (str(source) if source else "defaults", load_policy(source))
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t0 = time.perf_counter()
    try:
        cfg = build_config(args)
        if args.data is not None and args.preset != "default":
            raise RmmError("--preset chooses the cohort to generate, but --data gives one. Fix: drop --preset, "
                           "or drop --data to generate the preset cohort")
        cohort = args.data
        if cohort is None and args.resume and (args.out / "cohort").is_dir():
            cohort = args.out / "cohort"  # resume on the cohort the interrupted run generated
        if cohort is None:
            from .cohort import generate_cohort
            from .cohort_presets import preset_config

            cohort = args.out / "cohort"
            shutil.rmtree(cohort, ignore_errors=True)
            shutil.rmtree(args.out / "site-state", ignore_errors=True)  # new hospitals: new privacy budgets
            preset = "" if args.preset == "default" else f", preset {args.preset}"
            print(f"[rmm] generating the FUSCC-style cohort ({args.patients} patients, seed {args.seed}{preset}) "
                  f"in {cohort}")
            generate_cohort(preset_config(args.preset, n_patients=args.patients, seed=args.seed), cohort)
        paths, sites, dims = validate_cohort(cohort)
        if args.seeded_noise:
            _warn("--seeded-noise: DP noise comes from the run's seed, so these figures are reproducible, but such "
                  "noise is replayable by whoever knows the seed; every simulated site accepts it for this run. "
                  "Never deploy this (the default site policy refuses dp.seeded-noise).")
        policies = check_policies(paths, args.policy)
        from .optional_inputs import check_optional_inputs

        optional = check_optional_inputs(cohort, sites, cfg.high_risk, args.out)
    except (RmmError, FileNotFoundError) as err:
        print(f"rmm-simulate: error: {err}", file=sys.stderr)
        return 2
    for s in sites:
        sm = s.summary()
        mods = ", ".join(f"{m} {v['present']}/{sm['patients']}" for m, v in sm["modalities"].items())
        print(f"[rmm] {s.site}: {sm['patients']} patients, {sm['events']} events; present: {mods}; "
              f"no modality: {sm['no_modality']}")
    for site, (source, policy) in policies.items():
        cox = " (with the opt-in cox)" if "cox" in policy.phases else ""
        print(f"[rmm] {site}: site policy {source}: min-patients {policy.min_patients}, max-bins {policy.max_bins}, "
              f"phases {len(policy.phases)}/{len(PHASES)}{cox}, dp.required {str(policy.dp.required).lower()}")
    for text in optional.warnings:
        _warn(text)
    from ..server.flower_log import QuietRun
    from ..server.progress import BarProgress, Progress
    from ..server.summary import summary_lines
    from .run import StudyStepError, run_study

    log = args.out / "flower.log"
    if not args.resume:
        log.unlink(missing_ok=True)
    print(f"[rmm] federating {len(sites)} sites on Flower's simulation engine "
          f"({cfg.rounds} Tier 1 + {cfg.tier2.rounds} Tier 2 rounds); Flower and Ray logs: "
          f"{'console (--verbose)' if args.verbose else log}", flush=True)
    code, study, failure = 0, None, None
    with QuietRun(log, verbose=args.verbose) as quiet:
        progress = Progress() if args.verbose else BarProgress(stream=quiet.err, out=quiet.out)
        try:
            study = run_study(cfg, cohort, paths, sites, dims, args.out, pooled=not args.no_pooled, t0=t0,
                              resume=args.resume, fault=(args.faulty_site, args.fault) if args.faulty_site else None,
                              truth=optional.truth, progress=progress, quiet=quiet, policy=args.policy)
        except StudyStepError as err:
            code, failure = 1, err
        except RmmError as err:  # the federation refused to go on (no site accepted, ...): nothing written
            code, failure = 1, err
    if study is None and isinstance(failure, StudyStepError):
        metrics = json.loads((args.out / "metrics.json").read_text())
        print("\n".join(summary_lines(metrics, args.out)))
    elif study is not None:
        print("\n".join(summary_lines(study.metrics, args.out, [f.file for f in study.figures])))
    if failure is not None:
        print(f"rmm-simulate: error: {failure}", file=sys.stderr)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
