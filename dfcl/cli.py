"""`dfcl`: the one command of deepfake-cl. Every subcommand takes `-S key=value` overrides of
params.yaml. Run `dfcl SUBCOMMAND --help` for details.

Over 300 lines: one small function per subcommand and the one parser; each imports its stack
lazily so `dfcl --help` and a mistyped command answer in a second."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from pathlib import Path

from dfcl.config import ConfigError, Params, check_names, load_params
from dfcl.data.layouts import LayoutError, known_layouts
from dfcl.learning.pinning import PinnedDataError
from dfcl.logs import configure_logging
from dfcl.ops.guards import OpsError, workspace_lock
from dfcl.workspace import Workspace, configure_environment


def _csv(text: str | None) -> list[str] | None:
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


def cmd_demo(args, params):
    from dfcl.measure.tables import outcome_summary
    from flows.demo import run_demo

    print(outcome_summary(run_demo(params, args.set)[-1]))
    return 0


def require_folder(path: str) -> None:
    if not Path(path).is_dir():
        raise LayoutError(f"{path} is not a folder")


def require_dataset(path: str, params: Params, method: str | None = None, methods: list[str] | None = None) -> None:
    """Fail on a folder no known layout fits before any work, Prefect's start-up included. (The
    flow checks again, for callers that do not come through the CLI; listing a folder is cheap.)"""
    from dfcl.data.layouts import dataset_name, recognise, split_rule

    dp, name = params.data, dataset_name(path, method)
    recognise(path, dp.real_names, name, methods=methods, compression=dp.compression,
              method=method, real_only=name == params.sbi.method, splits=split_rule(dp), max_per_set=params.sbi.max_per_set)


def _one_or_many(data: list[str]) -> str | list[str]:
    return data[0] if len(data) == 1 else data


def cmd_ingest(args, params):
    import pandas as pd

    data = _one_or_many(args.data)
    require_dataset(data, params, args.method, _csv(args.methods))
    from flows.ingest import ingest_dataset
    with workspace_lock(Workspace.here().root, params.flow.lock_wait_s, f"dfcl ingest {data}"):
        ingested = ingest_dataset(data, params, method=args.method, methods=_csv(args.methods))
    st = ingested.stats
    print(f"\n{ingested.name}: layout {ingested.layout}; raw version {ingested.raw_version}, "
          f"faces version {ingested.version}")
    if st.get("frames"):
        print(f"last face extraction: {st['frames']} frames of {st['videos']} video(s) in {st['video_seconds']} s "
              f"= {st['frames_per_s']} frames/s on {st['device']} ({st['videos_detected']} video(s) detected, "
              f"{st['videos_from_cache']} unchanged and taken from the detection cache)")
    for spec in ingested.specs:
        print(f"  experience {spec.key}: {spec.train_x.rsplit('/', 1)[0]}/")
    for m, why in ingested.left_out.items():
        print(f"  left out {m}: {why}")
    skipped = pd.read_csv(Workspace.here().processed / ingested.name / "skipped.csv", keep_default_na=False)
    if len(skipped):
        print(f"\nskipped ({len(skipped)}):\n{skipped.to_string(index=False)}")
    return 0


def cmd_extract_faces(args, params):
    from dfcl.data.extraction import extract_dataset

    stats = extract_dataset(args.raw, args.out, params, args.name)
    if args.stats:
        Path(args.stats).write_text(json.dumps(stats, indent=1) + "\n")
    return 0


def cmd_retrain(args, params):
    data = _one_or_many(args.data)
    require_dataset(data, params, args.method, _csv(args.methods))
    from dfcl.measure.tables import outcome_summary
    from flows.retrain import (
        retrain_detector,  # after the check: importing the stack takes seconds
    )
    outcome = retrain_detector(data, params, method=args.method, methods=_csv(args.methods),
                               auto_approve=args.auto_approve, fresh=args.fresh,
                               from_challenger=args.from_challenger)
    print(outcome_summary(outcome))
    return 0


def cmd_compare(args, params):
    from dfcl.measure.tables import compare_table

    strategies = _csv(args.strategies) or params.strategy.names()
    for name in strategies:
        if name not in params.strategy.names():
            raise ConfigError(f"unknown strategy.name {name!r}; choose one of {', '.join(params.strategy.names())}")
    for i, data in enumerate(args.data):
        require_dataset(data, params, methods=_csv(args.methods) if i == 0 else None)
    seeds = [_seed(s) for s in _csv(args.seeds)] if args.seeds else None
    from flows.compare import (
        compare,  # after the checks: importing the stack takes seconds
    )
    with workspace_lock(Workspace.here().root, params.flow.lock_wait_s, f"dfcl compare {' '.join(args.data)}"):
        report = compare(args.data, params, strategies=strategies, methods=_csv(args.methods), seeds=seeds,
                         json_out=args.json, artifacts_dir=args.plots)
    print(compare_table(report))
    return 0


def _seed(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"--seeds {text!r}: seeds are whole numbers, e.g. --seeds 0,1,2") from None


def cmd_decide(args, params, approve: bool):
    from dfcl.ops.approvals import answer_paused_run

    approver = args.by or os.environ.get("USER", "ops")
    run = answer_paused_run(args.flow_run, approve, approver, args.reason or "", params.mlflow.registered_model)
    print(f"{'approved' if approve else 'rejected'} flow run {run.name} ({run.id}) as {approver}")
    return 0


def cmd_serve(args, params):
    from flows.serve import serve_retraining

    sys.stdout.reconfigure(line_buffering=True)  # a service's log: each line as it happens
    print(f"dfcl serve: stopped ({serve_retraining(params)})")
    return 0


def cmd_deploy(args, params):
    from flows.deploy import deploy_to_pool

    names = deploy_to_pool(params, args.pool)
    print(f"deployed {' and '.join(names)} on work pool {args.pool!r}; start a worker: prefect worker start --pool {args.pool}")
    return 0


def cmd_rollback(args, params):
    from dfcl.ops.registry import rollback_champion

    name = params.mlflow.registered_model
    current, previous = rollback_champion(name, args.by or os.environ.get("USER", "ops"), args.reason)
    print(f"{name}: champion rolled back from version {current} to version {previous}")
    return 0


def cmd_history(args, params):
    import pandas as pd

    from dfcl.logs import text_table
    from dfcl.ops.registry import alias_history, inconsistencies

    name = params.mlflow.registered_model
    aliases, events = alias_history(name)
    print(f"{name}: " + ", ".join(f"{a} = version {v}" for a, v in sorted(aliases.items())))
    if events:
        table = pd.DataFrame(events)[["at", "action", "version", "previous", "by", "reason"]].fillna("")
        print(text_table(table, ["by", "reason"]))
    for line in inconsistencies(name):
        print(f"inconsistent: {line}")
    return 0


def cmd_repair(args, params):
    from dfcl.ops.registry import repair

    name = params.mlflow.registered_model
    done = repair(name, args.by or os.environ.get("USER", "ops"))
    print(f"{name}: " + ("; ".join(done) if done else "history, aliases and tags agree; nothing to repair"))
    return 0


def cmd_evaluate(args, params):
    from dfcl.serving.detector import load_detector
    from dfcl.serving.evaluate import evaluate, table

    require_folder(args.data)
    ws = Workspace.here()
    detector = load_detector(args.model or f"models:/{params.mlflow.registered_model}@champion",
                             params, ws.root, args.trust_pickle)
    roc = Path(args.roc) if args.roc else (Path(args.json).with_suffix(".roc.png") if args.json else None)
    with tempfile.TemporaryDirectory() as tmp:
        # MLflow gets the plots even where no file was asked for: drawn in a temporary folder then.
        drawn = roc or (Path(tmp) / f"{Path(args.data).resolve().name}.roc.png" if args.log_mlflow else None)
        report = evaluate(detector, args.data, params, roc_png=drawn)
        plots = [drawn, report.get("reliability_plot")] if drawn else []
        if args.log_mlflow:
            from dfcl.ops.tracking import log_evaluation
            from dfcl.workspace import use_mlflow_experiment

            url = log_evaluation(report, detector.info, use_mlflow_experiment(ws, params.mlflow.experiment),
                                 [Path(p) for p in plots if p])
    print(f"decision threshold {detector.shown_threshold:.3f} (P(fake) at or above it = fake"
          + (", calibrated)" if detector.trust is not None else "; this model is not calibrated)"))
    print(table(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    written = ([args.json] if args.json else []) + ([p for p in plots if p] if roc else [])
    if written:
        print("wrote " + " and ".join(map(str, written)))
    if args.log_mlflow:
        print(f"logged to MLflow: {url}")
    return 0


def cmd_detect(args, params):
    import pandas as pd

    from dfcl.serving.detect import detect_with_model
    from dfcl.serving.verdicts import csv_rows, table

    rows = detect_with_model(args.model or f"models:/{params.mlflow.registered_model}@champion", args.paths,
                             params, Workspace.here().root, args.crop, Path(args.explain) if args.explain else None,
                             args.trust_pickle)
    card = rows[0]["model"]
    print(f"model {card['uri']}" + (f" ({card['name']} version {card['version']}, alias {card['alias']})" if card["version"] else "")
          + f"; threshold {card['threshold']:.3f} (P(fake) at or above it = fake)")
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps({"model": card, "detections": rows}, indent=1))
        print(f"wrote {args.json}")
    if args.csv:
        pd.DataFrame(csv_rows(rows)).to_csv(args.csv, index=False)
        print(f"wrote {args.csv}")
    if args.explain:
        print(f"heatmaps in {args.explain}")
    return 1 if any(r["verdict"] == "error" for r in rows) else 0


def cmd_api(args, params):
    from dfcl.serving.api import serve

    serve(params, args.host, args.port, insecure=args.insecure)
    return 0


def cmd_models(args, params):
    from models import list_models, pretrained_tags

    for name in list_models():
        tags = pretrained_tags(name)
        print(f"{name:<20} {'pretrained: ' + ', '.join(tags) if tags else 'from scratch'}")
    return 0


def version() -> str:
    """`deepfake-cl 0.1.0 (/path/to/dfcl)`: the installed distribution's version (its metadata) and
    the dfcl package this process imported, so a stray copy on the path shows."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        number = installed("deepfake-cl")
    except PackageNotFoundError:
        number = "(not installed)"
    return f"deepfake-cl {number} ({Path(__file__).resolve().parent})"


class PrintVersion(argparse.Action):
    """`--version`, printed as it is (argparse's own version action wraps a long path)."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        print(version())
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    verbose = dict(action="store_true", help="tracebacks on the console too (they always go to the workspace's .dfcl/logs/dfcl.log)")
    trust_pickle = dict(action="store_true", help="also load a model stored as a pickle (a version registered before "
                        "weights-only registration, a torch.save of a whole module): only if you trust whoever wrote it")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-S", "--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a params.yaml entry, e.g. -S train.epochs=1 (repeatable)")
    # Before or after the subcommand; SUPPRESS: a subcommand without it keeps `dfcl -v`'s value.
    common.add_argument("-v", "--verbose", default=argparse.SUPPRESS, **verbose)
    parser = argparse.ArgumentParser(prog="dfcl", description=__doc__)
    parser.add_argument("-v", "--verbose", **verbose)
    parser.add_argument("--version", action=PrintVersion, help="the installed deepfake-cl's version and where its dfcl package is")
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("demo", parents=[common], help="generate the synthetic sequence and run the whole pipeline on it")

    p = sub.add_parser("ingest", parents=[common], formatter_class=argparse.RawDescriptionHelpFormatter,
                       help="recognise a dataset (FF++, Celeb-DF, DFDC, image folders), version it, extract faces",
                       epilog="layouts it recognises:\n  " + "\n  ".join(known_layouts()))
    p.add_argument("data", nargs="+", help="dataset folder; `dfcl ingest --help` lists the layouts (several: the "
                   "real faces of each, as one self-blended experience, with --method self-blended)")
    p.add_argument("--method", help="name of a one-method dataset, e.g. real/ + fake/ (default: the folder name)")
    p.add_argument("--methods", help="comma-separated subset (and order) of a multi-method dataset's methods")

    p = sub.add_parser("extract-faces", parents=[common],
                       help="face extraction of one raw dataset (what the DVC stage extract_faces_<name> runs)")
    p.add_argument("raw")
    p.add_argument("out")
    p.add_argument("--name", required=True, help="dataset name (names a one-method dataset's method)")
    p.add_argument("--stats", help="write extraction statistics (frames/s, counts) to this JSON file")

    p = sub.add_parser("retrain", parents=[common], help="ingest a dataset and continue training on its new methods")
    p.add_argument("data", nargs="+", help="dataset folder (any layout `dfcl ingest` knows, videos or images); several: "
                   "the real faces of each, as one self-blended experience, with --method self-blended")
    p.add_argument("--method", help="name of a one-method dataset, e.g. real/ + fake/ (default: the folder name)")
    p.add_argument("--methods", help="comma-separated subset and order of methods to learn")
    p.add_argument("--auto-approve", action="store_true", help="promote without waiting for ops (demo, tests)")
    p.add_argument("--fresh", action="store_true", help="start a new learner instead of continuing the saved one")
    p.add_argument("--from-challenger", action="store_true",
                   help="continue from the latest registered learner even when it is not champion (rejected, rolled back)")

    p = sub.add_parser("compare", parents=[common], help="train several strategies over the same sequence")
    p.add_argument("--data", required=True, action="append",
                   help="dataset folder; repeat it to append more datasets to the sequence, in order")
    p.add_argument("--methods", help="comma-separated methods of the first --data, in learning order (default: all, sorted)")
    p.add_argument("--strategies", help="comma-separated (default: every strategy, see `strategy:` in params.yaml)")
    p.add_argument("--seeds", help="comma-separated training seeds (default: compare.seeds); figures are mean ± std")
    p.add_argument("--json", help="write the report here")
    p.add_argument("--plots", metavar="DIR", help="write heatmaps and forgetting curves (with their spread) here")

    for name, text in (("approve", "approve the paused challenger: `champion` moves to it"),
                       ("reject", "reject the paused challenger: `champion` stays")):
        p = sub.add_parser(name, parents=[common], help=text)
        p.add_argument("flow_run", nargs="?", help="flow run id or name (default: the latest paused run)")
        p.add_argument("--by", help="who decides (default: $USER)")
        p.add_argument("--reason", default="", help="why (kept as an MLflow tag)")

    sub.add_parser("serve", parents=[common],
                   help="serve the retraining deployments: cron schedule + trigger on new data/incoming/ datasets")

    p = sub.add_parser("deploy", parents=[common],
                       help="register the retraining deployments on a Prefect server's process work pool, for workers")
    p.add_argument("--pool", default="dfcl", help="the work pool (type process; made if missing; default: dfcl)")

    p = sub.add_parser("rollback", parents=[common], help="move `champion` back to the version before the current one")
    p.add_argument("--by", help="who decides (default: $USER)")
    p.add_argument("--reason", required=True, help="why (kept as MLflow tags)")

    sub.add_parser("history", parents=[common], help="where the aliases point, and every promotion, rejection and rollback")
    p = sub.add_parser("repair", parents=[common],
                       help="after a crash mid-move: record the alias move the history lacks, and its missing tags")
    p.add_argument("--by", help="who repairs (default: $USER)")

    p = sub.add_parser("evaluate", parents=[common],
                       help="accuracy, AUC, AP and EER (per method and overall) of a model on a labelled folder, with a ROC plot")
    p.add_argument("--model", help="MLflow URI (default: models:/<registered_model>@champion), MLflow model folder, "
                                   "learner folder (data/learner) or torch file")
    p.add_argument("--data", required=True, help="a labelled folder in any layout `dfcl ingest` knows")
    p.add_argument("--json", help="write the report here (and the ROC plot beside it, .roc.png)")
    p.add_argument("--roc", help="where to draw the ROC plot (PNG)")
    p.add_argument("--log-mlflow", action="store_true",
                   help="also log the figures, the report and the plots as an MLflow run (a registered version's: "
                        "a child of the run that trained it, its metrics linked to the version)")
    p.add_argument("--trust-pickle", **trust_pickle)

    p = sub.add_parser("detect", parents=[common], formatter_class=argparse.RawDescriptionHelpFormatter,
                       help="is this photo or video forged? the champion's verdict with its evidence",
                       description="Photos (every face found is scored), face crops, videos (a per-frame timeline "
                                   "and a verdict) and folders of them, scored by the champion (or --model). "
                                   "Exit status 1 when a file could not be scored (its row says why).")
    p.add_argument("paths", nargs="+", metavar="PATH", help="photos, videos or folders")
    p.add_argument("--model", help="instead of the champion: models:/NAME@ALIAS or /VERSION, runs:/ID/model, "
                                   "a learner folder or a torch file")
    p.add_argument("--crop", action="store_true", help="the images are face crops already: score them whole")
    p.add_argument("--json", metavar="OUT", help="write every result (faces, boxes, timeline, model) as JSON")
    p.add_argument("--csv", metavar="OUT", help="write one row per file as CSV")
    p.add_argument("--explain", metavar="DIR", help="write Grad-CAM heatmaps per face (a video: its top frames) here")
    p.add_argument("--trust-pickle", **trust_pickle)
    p = sub.add_parser("api", parents=[common], help="REST API and web page for detection, on the champion")
    p.add_argument("--host", help="default: api.host (127.0.0.1)")
    p.add_argument("--port", type=int, help="default: api.port (8000)")
    p.add_argument("--insecure", action="store_true",
                   help="listen beyond loopback without an access token (refused otherwise)")
    sub.add_parser("models", parents=[common], help="list the registered detector architectures")
    p = sub.add_parser("migrate", parents=[common],
                       help="once, after an upgrade: rename moved params.yaml keys and convert an old pickled learner")
    p.add_argument("--learner", help="learner folder (default: the workspace's data/learner)")
    return parser


# The commands that run Prefect flows or talk to Prefect's API in this process.
FLOW_COMMANDS = ("demo", "ingest", "retrain", "compare", "approve", "reject", "serve")
COMMANDS = {"demo": cmd_demo, "ingest": cmd_ingest, "extract-faces": cmd_extract_faces, "retrain": cmd_retrain, "compare": cmd_compare,
            "approve": lambda a, p: cmd_decide(a, p, True), "reject": lambda a, p: cmd_decide(a, p, False),
            "serve": cmd_serve, "deploy": cmd_deploy, "rollback": cmd_rollback, "history": cmd_history,
            "repair": cmd_repair,            "evaluate": cmd_evaluate, "detect": cmd_detect, "api": cmd_api, "models": cmd_models}


def cmd_migrate(args, ws: Workspace) -> int:
    """Before params are loaded: an old params.yaml may not load until its keys are renamed."""
    from dfcl.migrate import migrate_learner, migrate_params

    for rename in migrate_params(ws.params_file):
        print(f"{ws.params_file}: renamed {rename}")
    params = load_params(ws.params_file, args.set)
    folder = Path(args.learner) if args.learner else ws.learner
    print(migrate_learner(folder, params, ws.root))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    ws = Workspace.here()
    configure_environment(ws)
    configure_logging(ws.log_file, args.verbose)
    try:
        if args.command == "migrate":
            return cmd_migrate(args, ws)
        params = load_params(ws.params_file, args.set)
        if args.command in ("demo", "retrain", "compare"):
            check_names(params.model)
        if args.command in FLOW_COMMANDS:
            from dfcl.ops.runners import prefect_api_url

            prefect_api_url()  # the temporary API, if no server is named: one that outlives a Ctrl-C
        return COMMANDS[args.command](args, params)
    except (ConfigError, LayoutError, OpsError, PinnedDataError) as e:
        # Mistakes in what the user asked for: one clear line, no traceback.
        print(f"dfcl: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dfcl: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a bug or a broken service: one line here, the traceback in the log file
        logging.getLogger("dfcl").error("dfcl %s failed", args.command, exc_info=e)
        first_line = str(e).split("\n", 1)[0]
        print(f"dfcl: {type(e).__name__}: {first_line} (traceback in {ws.log_file})", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
