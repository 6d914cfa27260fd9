"""The promotion gate's cases, each with its verdict: the table under `## Gate cases` in
benchmarks/results/robustness_cpu.md (only that section is rewritten; the rest of the file is
left as it is).

Real models and a real registry: a small CNN trained on the synthetic BlendSwap method is
registered (weights only) as the champion in a scratch workspace with its own sqlite MLflow;
each case builds a challenger and runs the gate task itself (tasks/promotion_gate.py) against
it (challenger_verdict, what the gate task decides with; its rules in dfcl/measure/gate.py), or makes the
registry misbehave around it.

    .venv/bin/python benchmarks/gate_cases.py [--out benchmarks/results/robustness_cpu.md]
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# Small and quick, as the tests train: 32 px synthetic faces, the small CNN from scratch.
SETTINGS = ["data.image_size=32", "train.batch_size=32", "model.name=small_cnn", "model.width=8",
            "model.pretrained=none", "train.schedule=constant", "train.warmup_epochs=0", "train.backbone_lr_scale=1.0",
            "strategy.replay.mem_size=40", "faces.detect_in_images=false", "augment.enabled=false",
            "train.epochs=8", "train.lr=0.005"]
NAME = "deepfake-detector"


def setup(work: Path) -> None:
    """A scratch workspace: this folder, with its own MLflow database."""
    os.environ.update(DFCL_WORKSPACE=str(work), MLFLOW_TRACKING_URI=f"sqlite:///{work / 'mlflow.db'}")
    os.chdir(work)


def make_specs(work: Path, params: dict) -> dict:
    from dfcl.data.arrays import ExperienceSpec
    from dfcl.data.demo_data import generate
    from dfcl.data.extraction import extract_dataset

    generate(work / "demo", ["BlendSwap", "GANUpsample"], train_per_class=48, test_per_class=24, size=32, seed=0)
    specs = {}
    for name in ("BlendSwap", "GANUpsample"):
        extract_dataset(work / "demo" / name, work / name, params, name, cache_dir=work / "cache")
        paths = {f"{s}_{a}": f"{name}/{name}/{s}-{a}.npy" for s in ("train", "val", "test") for a in "xy"}
        specs[name] = ExperienceSpec(key=name, dataset=name, method=name, version="demo", **paths)
    return specs


def register(learner, methods: list[str]) -> str:
    import mlflow

    from dfcl.ops.tracking import log_detector

    sets = {e.key: {"test_x": e.test_x, "test_y": e.test_y, "digest": e.digest} for e in learner.history.experiences}
    with mlflow.start_run():
        info = log_detector(learner.strategy.model, 32, learner.history.threshold,
                            {"methods": methods, "test_sets": sets}, NAME)
    version = str(info.registered_model_version)
    mlflow.MlflowClient().set_model_version_tag(NAME, version, "methods", ",".join(methods))
    return version


class Noisy(torch.nn.Module):
    """The same detector with a little fixed noise on its logits: slightly worse, within noise."""

    def __init__(self, model, scale):
        super().__init__()
        self.model, self.scale = model, scale

    def forward(self, x):
        g = torch.Generator().manual_seed(int(x.sum().item() * 1000) % 2**31)
        return self.model(x) + self.scale * torch.randn(x.shape[0], 2, generator=g)


def run_cases(work: Path) -> list[dict]:
    import mlflow
    import numpy as np
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INTERNAL_ERROR

    from dfcl.config import ConfigError, apply_overrides, load_params
    from dfcl.learning.learner import Learner
    from tasks.promotion_gate import challenger_verdict

    params = load_params(REPO / "params.yaml", SETTINGS)
    specs = make_specs(work, params)
    champion = Learner(work / "champion", params, work)
    champion.learn(specs["BlendSwap"])
    champion.save()
    champion_version = register(champion, ["BlendSwap"])
    MlflowClient().set_registered_model_alias(NAME, "champion", champion_version)
    counter = iter(range(1000))

    def copy_of_champion(root: Path = work) -> Learner:
        folder = work / f"challenger-{next(counter)}"
        shutil.copytree(work / "champion", folder)
        return Learner.load(folder, params, root)

    def fresh(spec, root: Path = work, labels=None) -> Learner:
        learner = Learner(work / f"challenger-{next(counter)}", params, root)
        learner.learn(dataclasses.replace(spec, train_y=labels) if labels else spec)
        return learner

    def same():
        return copy_of_champion()

    def noisy(scale: float, *overrides: str):
        # Noise on the logits at `scale`: the champion's logits are large, so it takes a lot to move its AUC.
        def build():
            learner = copy_of_champion()
            learner.strategy.model = Noisy(learner.strategy.model, scale)
            learner.params = apply_overrides(params, list(overrides))
            return learner
        return build

    def new_method():
        learner = copy_of_champion()
        learner.learn(specs["GANUpsample"])
        return learner

    def shuffled():
        y = np.load(work / specs["BlendSwap"].train_y)
        np.save(work / "shuffled-y.npy", np.random.default_rng(0).permutation(y))
        return fresh(specs["BlendSwap"], labels=str(work / "shuffled-y.npy"))

    def forgot():
        learner = copy_of_champion()
        learner.history.auc_matrix = [[0.9], [0.5, 0.9]]  # BlendSwap: 0.9 right after learning it, 0.5 now
        return learner

    def fresh_other_method():
        return fresh(specs["GANUpsample"])

    def fresh_faces_gone():
        elsewhere = work / "elsewhere"  # a workspace root without the champion's pinned faces
        shutil.copytree(work / "GANUpsample", elsewhere / "GANUpsample", dirs_exist_ok=True)
        return fresh(specs["GANUpsample"], root=elsewhere)

    def one_class():
        learner = copy_of_champion()
        e = learner.history.experiences[0]
        y, x = np.load(work / e.test_y), np.load(work / e.test_x)
        np.save(work / "real-only-x.npy", x[y == 0])
        np.save(work / "real-only-y.npy", y[y == 0])
        learner.history.experiences[0] = dataclasses.replace(e, test_x="real-only-x.npy", test_y="real-only-y.npy")
        return learner

    undo = []  # what a case changed in the registry, put back after its gate

    def registry_down():
        read = MlflowClient.get_registered_model

        def down(self, name):
            raise MlflowException("database is locked", error_code=INTERNAL_ERROR)

        MlflowClient.get_registered_model = down
        undo.append(lambda: setattr(MlflowClient, "get_registered_model", read))
        return copy_of_champion()

    def pickled_champion(trust: bool):
        def build():
            with mlflow.start_run():  # as versions were registered before weights-only registration
                info = mlflow.pytorch.log_model(copy.deepcopy(champion.strategy.model), name="model",
                                                serialization_format="pickle", registered_model_name=NAME,
                                                pip_requirements=["torch"], metadata={"threshold": champion.history.threshold})
            client = MlflowClient()
            client.set_model_version_tag(NAME, info.registered_model_version, "methods", "BlendSwap")
            client.set_registered_model_alias(NAME, "champion", info.registered_model_version)
            undo.append(lambda: client.set_registered_model_alias(NAME, "champion", champion_version))
            learner = copy_of_champion()
            learner.params = apply_overrides(params, [f"gate.trust_pickle={str(trust).lower()}"])
            return learner
        return build

    cases = [
        ("the champion itself", same),
        ("the champion with noise on its logits (slightly worse)", noisy(4.0)),
        ("the champion with much more noise on its logits", noisy(10.0)),
        ("the same, with gate.max_drop_per_method=0.3 and gate.max_drop_average=0.3", noisy(
            10.0, "gate.max_drop_per_method=0.3", "gate.max_drop_average=0.3")),
        ("the champion, then GANUpsample learned", new_method),
        ("BlendSwap learned from shuffled labels", shuffled),
        ("AUC forgetting 0.4 on BlendSwap", forgot),
        ("started over on GANUpsample only; BlendSwap's pinned test faces here", fresh_other_method),
        ("started over on GANUpsample only; BlendSwap's test faces gone", fresh_faces_gone),
        ("BlendSwap's test split holds only real faces", one_class),
        ("the registry fails (database locked) while the gate looks for the champion", registry_down),
        ("the champion is a version registered as a pickle", pickled_champion(False)),
        ("the same, with gate.trust_pickle=true", pickled_champion(True)),
    ]
    rows = []
    for name, build in cases:
        learner = build()
        start = time.perf_counter()
        try:
            verdict = challenger_verdict(learner, learner.params)
            rows.append({"case": name, "verdict": verdict, "seconds": time.perf_counter() - start})
        except (MlflowException, ConfigError) as e:  # the cases where the gate must stop the run
            rows.append({"case": name, "error": f"{type(e).__name__}: {str(e).splitlines()[0]}",
                         "seconds": time.perf_counter() - start})
        finally:
            while undo:
                undo.pop()()
        print(f"{name}: {outcome(rows[-1])}", flush=True)
    return rows


def methods_cell(row: dict) -> str:
    champion = (row.get("verdict") or {}).get("champion")
    if not champion:
        return ""
    parts = []
    for key, r in champion["methods"].items():
        d = r["auc"]
        learned = "" if r.get("challenger_learned", True) else " (not learned by the challenger)"
        parts.append(f"{key}{learned}: **{r['verdict']}**, AUC {d['new']:.3f} vs {d['old']:.3f}, "
                     f"{d['difference']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]")
    for key in champion.get("unscored", {}):
        parts.append(f"{key}: **no score**")
    avg = champion.get("average")
    if avg:
        parts.append(f"average: **{avg['verdict']}**")
    return "<br>".join(parts)


def outcome(row: dict) -> str:
    if "error" in row:
        return "**stops the run**: " + row["error"]
    v = row["verdict"]
    return "**to ops**" if v["passed"] else "**rejected**: " + "; ".join(v["reasons"])


def section(rows: list[dict], seconds: float) -> str:
    from benchmarks.common import machine

    m = machine()
    lines = ["## Gate cases", "",
             "Each case of the promotion gate (issue 28, items 8 and 9) against a real champion: a small CNN "
             "trained on the synthetic BlendSwap method (32 px, 48 faces per class and split), registered weights-only "
             "in a scratch workspace's MLflow; each challenger goes through what the gate task decides with "
             "(`challenger_verdict` in `tasks/promotion_gate.py`, its rules in `dfcl/measure/gate.py`; gate metric AUC, 1000 paired bootstrap resamples, "
             "95 % intervals). "
             "\"To ops\" means the challenger would wait for `dfcl approve`; \"rejected\" never reaches ops; "
             "\"stops the run\" means the retraining run fails before any decision, so no alias moves "
             "(with `--auto-approve` too).", "",
             "```", ".venv/bin/python benchmarks/gate_cases.py", "```", "",
             "| case | per method: verdict, challenger vs champion AUC, difference [95 % interval] | gate |",
             "| --- | --- | --- |"]
    for row in rows:
        lines.append(f"| {row['case']} | {methods_cell(row)} | {outcome(row)} |")
    lines += ["", f"Whole run {seconds:.0f} s on {m['cpu_cores']} CPU cores (torch {m['torch']}), training included.", ""]
    return "\n".join(lines)


def write_section(path: Path, text: str) -> None:
    """Replace `## Gate cases` (up to the next `## ` heading) in `path`, or append it."""
    old = path.read_text() if path.exists() else "# Robustness on CPU\n"
    pattern = re.compile(r"^## Gate cases\n.*?(?=^## |\Z)", re.S | re.M)
    new = pattern.sub(lambda _: text + "\n", old, count=1) if pattern.search(old) else old.rstrip("\n") + "\n\n" + text
    path.write_text(new.rstrip("\n") + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "robustness_cpu.md"))
    args = parser.parse_args()
    out = Path(args.out).resolve()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="dfcl-gate-cases-") as tmp:
        setup(Path(tmp))
        rows = run_cases(Path(tmp))
        os.chdir(REPO)
    text = section(rows, time.perf_counter() - start)
    write_section(out, text)
    print(text)


if __name__ == "__main__":
    main()
