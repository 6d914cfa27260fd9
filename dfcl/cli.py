"""`dfcl`: the one command of deepfake-cl. Every subcommand takes `-S key=value` overrides of
params.yaml. Run `dfcl SUBCOMMAND --help` for details."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import warnings
from pathlib import Path

from dfcl.config import ConfigError, apply_overrides, load_params
from dfcl.layouts import LayoutError, known_layouts
from dfcl.ops import OpsError
from dfcl.pinning import PinnedDataError
from dfcl.workspace import Workspace, configure_environment, ensure_workspace, put_this_python_on_path


def _csv(text: str | None) -> list[str] | None:
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


def cmd_demo(args, params):
    from dvc.repo import Repo

    from flows.retrain import retrain_detector

    if any(item.startswith("demo.") for item in args.set):
        raise SystemExit("dfcl demo: the demo data is a DVC stage that reads params.yaml; "
                         "edit its `demo:` section instead of -S demo.*")
    ws = Workspace.here()
    ensure_workspace(ws, params, files=("params.yaml", "dvc.yaml"))
    # The demo's training settings (demo.overrides) go under the user's own -S.
    params = apply_overrides(apply_overrides(params, params["demo"]["overrides"]), args.set)
    put_this_python_on_path()
    with Repo(str(ws.root)) as repo:
        repo.reproduce("demo_data")
    outcomes = []
    for method in params["demo"]["methods"]:
        print(f"\n=== a new forgery method arrives: {method} (synthetic) ===")
        outcomes.append(retrain_detector(str(ws.incoming / "demo" / method), params, auto_approve=True))
    print_summary(outcomes[-1])
    return 0


def print_summary(outcome: dict) -> None:
    if "results" not in outcome:
        print(f"outcome: {outcome['outcome']}")
        return
    r = outcome["results"]
    print(f"\noutcome: {outcome['outcome']} (model version {outcome['version']}, MLflow run {outcome['run_id']})")
    bal = r.get("balanced_accuracy", {})
    for key in r["methods"]:
        print(f"  {key:<40} accuracy {r['accuracy'][key]:.3f}  balanced {bal.get(key, float('nan')):.3f}  "
              f"AUC {r['auc'][key]:.3f}")
    print(f"  average accuracy {r['avg_accuracy']:.3f}, balanced {r.get('avg_balanced_accuracy', float('nan')):.3f} "
          f"(threshold {r.get('threshold', 0.5):.3f}), average AUC {r['avg_auc']:.3f}, "
          f"forgetting {r['forgetting']:.3f}, BWT {r['bwt']:.3f}")
    print(f"MLflow UI: mlflow ui --backend-store-uri {os.environ['MLFLOW_TRACKING_URI']}")


def require_folder(path: str) -> None:
    if not Path(path).is_dir():
        raise LayoutError(f"{path} is not a folder")


def require_dataset(path: str, params: dict, method: str | None = None, methods: list[str] | None = None) -> None:
    """Fail before any work on a folder no known layout fits: one clear line here, rather than
    the same error after Prefect has logged the failed task's traceback. (The flow checks again,
    for callers that do not come through the CLI; listing a folder is cheap.)"""
    from dfcl.layouts import dataset_name, recognise

    dp = params["data"]
    recognise(path, dp["real_names"], dataset_name(path, method), methods=methods, compression=dp["compression"])


def cmd_ingest(args, params):
    import pandas as pd

    require_dataset(args.data, params, args.method, _csv(args.methods))
    from flows.ingest import ingest_dataset
    ensure_workspace(Workspace.here(), params)
    ingested = ingest_dataset(args.data, params, method=args.method, methods=_csv(args.methods))
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
    import json

    from dfcl.extraction import extract_dataset

    stats = extract_dataset(args.raw, args.out, params, args.name)
    if args.stats:
        Path(args.stats).write_text(json.dumps(stats, indent=1) + "\n")
    return 0


def cmd_retrain(args, params):
    require_dataset(args.data, params, args.method, _csv(args.methods))
    from flows.retrain import retrain_detector  # after the check: importing the stack takes seconds
    ensure_workspace(Workspace.here(), params)
    outcome = retrain_detector(args.data, params, method=args.method, methods=_csv(args.methods),
                               auto_approve=args.auto_approve, fresh=args.fresh)
    print_summary(outcome)
    return 0


def cmd_compare(args, params):
    from flows.compare import compare_strategies, table

    strategies = _csv(args.strategies)
    for name in strategies:
        check_names({**params, "strategy": {**params["strategy"], "name": name}})
    for i, data in enumerate(args.data):
        require_dataset(data, params, methods=_csv(args.methods) if i == 0 else None)
    ensure_workspace(Workspace.here(), params)
    report = compare_strategies(args.data, params, strategies, methods=_csv(args.methods),
                                json_out=args.json)
    print(table(report))
    return 0


def _paused_run(flow_run: str | None):
    from prefect import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateName,
    )
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        if flow_run:
            try:
                return client.read_flow_run(flow_run)
            except Exception:
                runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(name={"any_": [flow_run]}))
                if runs:
                    return runs[0]
                raise SystemExit(f"no flow run with id or name {flow_run!r}")
        paused = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(state=FlowRunFilterState(name=FlowRunFilterStateName(any_=["Paused"]))),
            sort=FlowRunSort.START_TIME_DESC)
        if not paused:
            raise SystemExit("no paused retraining run is waiting for approval")
        return paused[0]


def cmd_decide(args, params, approve: bool):
    from prefect.flow_runs import resume_flow_run

    run = _paused_run(args.flow_run)
    if run.state is None or not run.state.is_paused():
        raise SystemExit(f"flow run {run.name} ({run.id}) is {run.state.name if run.state else 'unknown'}, not paused")
    approver = args.by or os.environ.get("USER", "ops")
    resume_flow_run(run.id, run_input={"approve": approve, "approver": approver, "reason": args.reason or ""})
    print(f"{'approved' if approve else 'rejected'} flow run {run.name} ({run.id}) as {approver}")
    return 0


def cmd_serve(args, params):
    import threading
    import time

    from prefect import serve
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
    from prefect.schedules import Cron

    from flows.incoming import queue_new_datasets, retrain_incoming
    from flows.retrain import retrain_detector

    ws = Workspace.here()
    ensure_workspace(ws, params)
    ws.incoming.mkdir(parents=True, exist_ok=True)
    os.environ["DFCL_WORKSPACE"] = str(ws.root)  # the served runs are subprocesses
    sp = params["flow"]["serve"]
    triggered = retrain_detector.to_deployment(
        "triggered", description="retrain on one dataset; one run at a time, the others wait in line",
        concurrency_limit=ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE))
    scheduled = retrain_incoming.to_deployment(
        "scheduled", schedules=[Cron(sp["cron"], timezone=sp["timezone"])], parameters={"params": params},
        description="queue a retraining run for every new dataset in data/incoming/")

    def watch():  # the trigger: a new dataset starts a run without waiting for the cron
        while True:
            time.sleep(sp["poll_s"])
            try:
                queue_new_datasets(params)
            except Exception as e:  # e.g. the deployments are not registered yet; try again next poll
                logging.getLogger("dfcl.serve").warning("watching %s: %s", ws.incoming, e)

    if sp["poll_s"]:
        threading.Thread(target=watch, daemon=True, name="watch-incoming").start()
    print(f"serving retrain-detector/triggered and retrain-incoming/scheduled (cron {sp['cron']!r} {sp['timezone']})"
          + (f"; watching {ws.incoming} every {sp['poll_s']} s" if sp["poll_s"] else ""))
    serve(triggered, scheduled)
    return 0


def cmd_rollback(args, params):
    from dfcl.ops import rollback_champion

    name = params["mlflow"]["registered_model"]
    current, previous = rollback_champion(name, args.by or os.environ.get("USER", "ops"), args.reason)
    print(f"{name}: champion rolled back from version {current} to version {previous}")
    return 0


def cmd_history(args, params):
    import pandas as pd
    from mlflow import MlflowClient

    from dfcl.ops import alias_events

    name = params["mlflow"]["registered_model"]
    try:
        events = alias_events(name)
    except Exception:
        raise ConfigError(f"no registered model {name!r} yet: nothing has been trained here") from None
    aliases = MlflowClient().get_registered_model(name).aliases
    print(f"{name}: " + ", ".join(f"{a} = version {v}" for a, v in sorted(aliases.items())))
    if events:
        table = pd.DataFrame(events)[["at", "action", "version", "previous", "by", "reason"]].fillna("")
        print(table.to_string(index=False))
    return 0


def cmd_evaluate(args, params):
    from dfcl.evaluate import evaluate, load_detector

    require_folder(args.data)
    try:
        detector = load_detector(args.model or f"models:/{params['mlflow']['registered_model']}@champion",
                                 params, Workspace.here().root)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    roc = Path(args.roc) if args.roc else (Path(args.json).with_suffix(".roc.png") if args.json else None)
    report = evaluate(detector, args.data, params, roc_png=roc)
    print(f"decision threshold {detector.threshold:.3f} (P(fake) at or above it = fake)")
    lines = [f"{'method':<28} {'faces':>6} {'accuracy':>8} {'bal acc':>7} {'AUC':>6} {'AP':>6} {'EER':>6} {'video AUC':>9}"]
    for name, r in [*report["methods"].items(), ("overall", report["overall"])]:
        video = f"{r['video_auc']:>9.3f}" if "video_auc" in r else f"{'-':>9}"  # one face per video: = AUC
        lines.append(f"{name:<28} {r['faces']:>6} {r['accuracy']:>8.3f} {r['balanced_accuracy']:>7.3f} "
                     f"{r['auc']:>6.3f} {r['ap']:>6.3f} {r['eer']:>6.3f} {video}")
    print("\n".join(lines))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
        print(f"wrote {args.json}" + (f" and {roc}" if roc else ""))
    return 0


def cmd_detect(args, params):
    import pandas as pd

    from dfcl.detect import FaceScorer, csv_rows, detect_files
    from dfcl.evaluate import load_detector

    uri = args.model or f"models:/{params['mlflow']['registered_model']}@champion"
    try:
        # Face size and decision threshold travel with the model (register_challenger's metadata).
        detector = load_detector(uri, params, Workspace.here().root)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    rows = detect_files(FaceScorer(detector, params), args.paths, crop="always" if args.crop else None,
                        explain_dir=Path(args.explain) if args.explain else None)
    if not rows:
        raise ConfigError(f"no photo or video in {', '.join(args.paths)} "
                          f"(known types: {', '.join(params['detect']['image_types'] + params['detect']['video_types'])})")
    card = rows[0]["model"]
    print(f"model {card['uri']}" + (f" ({card['name']} version {card['version']}, alias {card['alias']})" if card["version"] else "")
          + f"; threshold {detector.threshold:.3f} (P(fake) at or above it = fake)")
    table = pd.DataFrame([{"file": r["file"], "kind": r["kind"], "verdict": r["verdict"],
                           "P(fake)": "" if r["p_fake"] is None else f"{r['p_fake']:.3f}",
                           "faces": len(r.get("faces", [])), "note": r.get("error", "")} for r in rows])
    print(table.to_string(index=False))
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
    from dfcl.api import serve

    serve(params, args.host, args.port)
    return 0


def cmd_make_sbi(args, params):
    import tempfile

    import numpy as np

    from dfcl.data import first_of_each_face
    from dfcl.extraction import extract_dataset
    from dfcl.sbi import write_sbi_dataset

    require_folder(args.data)
    if Path(args.out).exists() and any(Path(args.out).iterdir()):
        raise ConfigError(f"{args.out} exists and is not empty: nothing is overwritten")
    with tempfile.TemporaryDirectory() as tmp:
        faces = Path(tmp) / "faces"
        extract_dataset(args.data, faces, params, Path(args.data).resolve().name,
                        cache_dir=Workspace.here().root / "data" / "cache" / "faces")
        # Training faces only: an SBI experience must not be made of another dataset's test faces.
        reals = [x[y == 0] for x, y in ((np.load(m / "train-x.npy"), np.load(m / "train-y.npy"))
                                        for m in sorted(faces.iterdir()) if (m / "train-x.npy").is_file())]
        if not sum(map(len, reals)):
            raise ConfigError(f"{args.data} holds no real training faces to blend")
        reals = np.concatenate(reals)
        reals = reals[first_of_each_face(reals)]
        counts = write_sbi_dataset(reals, Path(args.out), seed=params["data"]["seed"], per_real=args.per_real)
    print(f"wrote {counts['real']} real and {counts['fake']} self-blended faces to {args.out}; "
          f"learn it as an experience with: dfcl retrain {args.out} --method SBI")
    return 0


def cmd_models(args, params):
    from models import list_models, pretrained_tags

    for name in list_models():
        tags = pretrained_tags(name)
        print(f"{name:<20} {'pretrained: ' + ', '.join(tags) if tags else 'from scratch'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-S", "--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a params.yaml entry, e.g. -S train.epochs=1 (repeatable)")
    parser = argparse.ArgumentParser(prog="dfcl", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("demo", parents=[common], help="generate the synthetic sequence and run the whole pipeline on it")

    p = sub.add_parser("ingest", parents=[common], formatter_class=argparse.RawDescriptionHelpFormatter,
                       help="recognise a dataset (FF++, Celeb-DF, DFDC, image folders), version it, extract faces",
                       epilog="layouts it recognises:\n  " + "\n  ".join(known_layouts()))
    p.add_argument("data", help="dataset folder; `dfcl ingest --help` lists the layouts")
    p.add_argument("--method", help="name of a one-method dataset (default: the folder name)")
    p.add_argument("--methods", help="comma-separated subset (and order) of a multi-method dataset's methods")

    p = sub.add_parser("extract-faces", parents=[common],
                       help="face extraction of one raw dataset (what the DVC stage extract_faces_<name> runs)")
    p.add_argument("raw")
    p.add_argument("out")
    p.add_argument("--name", required=True, help="dataset name (names a one-method dataset's method)")
    p.add_argument("--stats", help="write extraction statistics (frames/s, counts) to this JSON file")

    p = sub.add_parser("retrain", parents=[common], help="ingest a dataset and continue training on its new methods")
    p.add_argument("data", help="dataset folder (any layout `dfcl ingest` knows, videos or images)")
    p.add_argument("--method", help="name of a one-method dataset (default: the folder name)")
    p.add_argument("--methods", help="comma-separated subset and order of methods to learn")
    p.add_argument("--auto-approve", action="store_true", help="promote without waiting for ops (demo, tests)")
    p.add_argument("--fresh", action="store_true", help="start a new learner instead of continuing the saved one")

    p = sub.add_parser("compare", parents=[common], help="train several strategies over the same sequence")
    p.add_argument("--data", required=True, action="append",
                   help="dataset folder; repeat it to append more datasets to the sequence, in order")
    p.add_argument("--methods", help="comma-separated methods of the first --data, in learning order (default: all, sorted)")
    p.add_argument("--strategies", default="naive,cwr,replay,gem,lwf,ewc,cumulative")
    p.add_argument("--json", help="write the report here")

    for name, text in (("approve", "approve the paused challenger: `champion` moves to it"),
                       ("reject", "reject the paused challenger: `champion` stays")):
        p = sub.add_parser(name, parents=[common], help=text)
        p.add_argument("flow_run", nargs="?", help="flow run id or name (default: the latest paused run)")
        p.add_argument("--by", help="who decides (default: $USER)")
        p.add_argument("--reason", default="", help="why (kept as an MLflow tag)")

    sub.add_parser("serve", parents=[common],
                   help="serve the retraining deployments: cron schedule + trigger on new data/incoming/ datasets")

    p = sub.add_parser("rollback", parents=[common], help="move `champion` back to the version before the current one")
    p.add_argument("--by", help="who decides (default: $USER)")
    p.add_argument("--reason", required=True, help="why (kept as MLflow tags)")

    sub.add_parser("history", parents=[common], help="where the aliases point, and every promotion, rejection and rollback")

    p = sub.add_parser("evaluate", parents=[common],
                       help="accuracy, AUC, AP and EER (per method and overall) of a model on a labelled folder, with a ROC plot")
    p.add_argument("--model", help="MLflow URI (default: models:/<registered_model>@champion), MLflow model folder, "
                                   "learner folder (data/learner) or torch file")
    p.add_argument("--data", required=True, help="a labelled folder in any layout `dfcl ingest` knows")
    p.add_argument("--json", help="write the report here (and the ROC plot beside it, .roc.png)")
    p.add_argument("--roc", help="where to draw the ROC plot (PNG)")

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
    p = sub.add_parser("api", parents=[common], help="REST API and web page for detection, on the champion")
    p.add_argument("--host", help="default: api.host (127.0.0.1)")
    p.add_argument("--port", type=int, help="default: api.port (8000)")
    p = sub.add_parser("make-sbi", parents=[common],
                       help="self-blended pseudo-fakes (SBI) from a dataset's real faces, as a dataset of their own")
    p.add_argument("data", help="any dataset folder `dfcl ingest` knows; its real training faces are used")
    p.add_argument("out", help="new folder: real/ and fake/ PNG faces")
    p.add_argument("--per-real", type=int, default=1, help="self-blended fakes per real face")
    sub.add_parser("models", parents=[common], help="list the registered detector architectures")
    return parser


COMMANDS = {"demo": cmd_demo, "ingest": cmd_ingest, "extract-faces": cmd_extract_faces, "retrain": cmd_retrain, "compare": cmd_compare,
            "approve": lambda a, p: cmd_decide(a, p, True), "reject": lambda a, p: cmd_decide(a, p, False),
            "serve": cmd_serve, "rollback": cmd_rollback, "history": cmd_history,
            "evaluate": cmd_evaluate, "detect": cmd_detect, "api": cmd_api, "make-sbi": cmd_make_sbi, "models": cmd_models}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    ws = Workspace.here()
    configure_environment(ws)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("dvc").propagate = False  # DVC prints its own messages; once is enough
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per Prefect API call otherwise
    # Library deprecation chatter (DVC, Avalanche) that users cannot act on.
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message="No loggers specified")
    warnings.filterwarnings("ignore", message=".*Add type hints to the `predict` method")  # our pyfunc validates itself
    try:
        params = load_params(ws.params_file, args.set)
        if args.command in ("demo", "retrain", "compare"):
            check_names(params)
        return COMMANDS[args.command](args, params)
    except (ConfigError, LayoutError, OpsError, PinnedDataError) as e:
        # Mistakes in what the user asked for: one clear line, no traceback.
        print(f"dfcl: {e}", file=sys.stderr)
        return 2


def check_names(params: dict) -> None:
    """Fail before any work on an unknown strategy or model name."""
    from dfcl.strategies import STRATEGIES
    from models import list_models, pretrained_tags

    if params["strategy"]["name"] not in STRATEGIES:
        raise ConfigError(f"unknown strategy.name {params['strategy']['name']!r}; choose one of {', '.join(STRATEGIES)}")
    mp = params["model"]
    if mp["name"] not in list_models():
        raise ConfigError(f"unknown model.name {mp['name']!r}; registered: {', '.join(list_models())}")
    if mp["pretrained"] not in ("none", None, *pretrained_tags(mp["name"])):
        raise ConfigError(f"model {mp['name']!r} has no {mp['pretrained']!r} weights; it has: "
                          f"{', '.join(pretrained_tags(mp['name'])) or 'none (use model.pretrained=none)'}")


if __name__ == "__main__":
    sys.exit(main())
