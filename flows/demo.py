"""`dfcl demo`: the synthetic sequence (the DVC stage `demo_data`), then one retraining run per
forgery method as it "arrives", each auto-approved."""
from __future__ import annotations

from dvc.repo import Repo

from dfcl.config import ConfigError, Params, apply_overrides
from dfcl.workspace import Workspace, ensure_workspace, put_this_python_on_path
from flows.retrain import retrain_detector


def run_demo(params: Params, overrides: list[str], log=print) -> list[dict]:
    """The outcome of each method's run, in order. `overrides` are the user's `-S`, applied
    again over the demo's own training settings (`demo.overrides`)."""
    if any(item.startswith("demo.") for item in overrides):
        raise ConfigError("the demo data is a DVC stage that reads params.yaml; "
                          "edit its `demo:` section instead of -S demo.*")
    ws = Workspace.here()
    ensure_workspace(ws, params.dvc, files=("params.yaml", "dvc.yaml"))
    params = apply_overrides(apply_overrides(params, params.demo.overrides), overrides)
    put_this_python_on_path()
    with Repo(str(ws.root)) as repo:
        repo.reproduce("demo_data")
    outcomes = []
    for method in params.demo.methods:
        log(f"\n=== a new forgery method arrives: {method} (synthetic) ===")
        outcomes.append(retrain_detector(str(ws.incoming / "demo" / method), params, auto_approve=True))
    return outcomes
