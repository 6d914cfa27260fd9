"""What users see when something goes wrong: one clear line (exit code 2 for a mistake in what
they asked for, 1 for anything else), the traceback in the workspace's log file."""
import json
import os
from pathlib import Path

import pytest

from dfcl.cli import main
from tests.conftest import SMALL, run_dfcl


@pytest.mark.parametrize("argv, message", [
    (["retrain", "DATA", "-S", "train.epoch=1"], "unknown parameter 'train.epoch'"),
    (["retrain", "DATA", "-S", "strategy.name=magic"], "unknown strategy.name 'magic'"),
    (["retrain", "DATA", "-S", "model.name=resnet9000"], "unknown model.name 'resnet9000'"),
    (["compare", "--data", "DATA", "--strategies", "naive,magic"], "unknown strategy.name 'magic'"),
    (["demo", "-S", "demo.size=16"], "edit its `demo:` section instead of -S demo.*"),
])
def test_bad_names_fail_before_any_work(argv, message, capsys, workspace):
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not (workspace.root / ".dvc").exists(), "no DVC repository made"


@pytest.mark.parametrize("folders, message", [
    (None, "nowhere is not a folder"),
    (["clips", "misc"], "unknown dataset layout (sub-folders: ['clips', 'misc'])"),
])
def test_a_dataset_no_layout_fits_is_one_line_before_any_work(folders, message, workspace, capsys):
    data = workspace.root / "nowhere"
    for name in folders or []:
        (data / name).mkdir(parents=True)
    assert main(["retrain", str(data)]) == 2
    out = capsys.readouterr()
    assert out.err.startswith("dfcl: ") and message in out.err
    assert "Traceback" not in out.out + out.err
    assert not (workspace.root / "data" / "raw").exists(), "nothing is copied or versioned"


def test_models_lists_the_registry(capsys, workspace):
    assert main(["models"]) == 0
    assert "small_cnn" in capsys.readouterr().out.split()


def test_verbose_goes_before_or_after_the_subcommand():
    from dfcl.cli import build_parser

    parse = build_parser().parse_args
    assert parse(["-v", "models"]).verbose and parse(["models", "--verbose"]).verbose
    assert not parse(["models"]).verbose


def corrupt_dataset(root: Path) -> Path:
    """real/ + fake/ images that are all unreadable: the layout is recognised, no face is found."""
    for label in ("real", "fake"):
        (root / label).mkdir(parents=True)
        for i in range(3):
            (root / label / f"{i}.png").write_text(f"not an image: {label} {i}\n")
    return root


def test_ingest_shows_no_git_hints_and_a_flow_failing_inside_is_one_line(tmp_path, prefect_api_url):
    """`dfcl ingest` drives DVC without its "git add ..." hints. `dfcl retrain` of the same data
    fails inside the flow (nothing can be learned): one `dfcl:` line for the user, Prefect's
    traceback in the workspace's log file only."""
    data, ws = corrupt_dataset(tmp_path / "corrupt"), tmp_path / "ws"
    ws.mkdir()
    ingest = run_dfcl(["ingest", str(data), "-S", "data.image_size=32"], ws, prefect_api_url)
    out, _ = ingest.communicate(timeout=600)
    assert ingest.returncode == 0, out[-3000:]
    assert "left out corrupt: no train real faces" in out
    for hint in ("To track the changes with git", "git add", "You can now commit"):
        assert hint not in out

    retrain = run_dfcl(["retrain", str(data), "-S", "data.image_size=32"], ws, prefect_api_url)
    out, _ = retrain.communicate(timeout=600)
    assert retrain.returncode == 2, out[-3000:]
    assert [line for line in out.splitlines() if line.startswith("dfcl:")] == [
        "dfcl: corrupt: no method can be learned: corrupt: no train real faces; no train fake faces; "
        "no test real faces; no test fake faces"]
    assert "Traceback" not in out
    log = (ws / ".dfcl" / "logs" / "dfcl.log").read_text()
    assert "Traceback" in log and "LayoutError: corrupt: no method can be learned" in log


def test_an_unexpected_error_is_one_line_and_verbose_prints_its_traceback(tmp_path):
    (tmp_path / "mlflow.db").write_text("not a database\n")  # a broken service, not a mistake in the command
    log = tmp_path / ".dfcl" / "logs" / "dfcl.log"
    quiet = run_dfcl(["history"], tmp_path)
    out, _ = quiet.communicate(timeout=300)
    assert quiet.returncode == 1, out[-3000:]
    assert out.strip().splitlines() == [f"dfcl: DatabaseError: (sqlite3.DatabaseError) file is not a database "
                                        f"(traceback in {log})"]
    assert log.read_text().count("ERROR dfcl: dfcl history failed\nTraceback") == 1

    verbose = run_dfcl(["history", "--verbose"], tmp_path)
    out, _ = verbose.communicate(timeout=300)
    assert verbose.returncode == 1 and "Traceback" in out and out.strip().endswith(f"(traceback in {log})")
    assert log.read_text().count("ERROR dfcl: dfcl history failed\nTraceback") == 2


def fake_learner(folder: Path, identity: dict) -> Path:
    """A learner folder whose saved state says it was trained with `identity`."""
    state = folder / "state-0001"
    state.mkdir(parents=True)
    (state / "history.json").write_text(json.dumps({"identity": identity, "experiences": []}))
    (folder / "CURRENT").write_text(state.name)
    return folder


@pytest.mark.parametrize("overrides, message", [
    ([], "was trained with model=another, "),
    (["strategy.name=magic"], "unknown strategy.name 'magic'"),
])
def test_a_learner_that_cannot_be_loaded_is_one_line(overrides, message, workspace, capsys):
    learner = fake_learner(workspace.root / "learner", {"model": "another"})
    (workspace.root / "face.png").write_bytes(b"")  # never read: the model fails to load first
    options = [arg for item in [*SMALL, *overrides] for arg in ("-S", item)]
    assert main(["detect", "--model", str(learner), str(workspace.root / "face.png"), *options]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("dfcl: ") and message in err


def test_a_learner_trained_with_other_settings_names_the_overrides_that_continue_it():
    """After `dfcl demo` (a small CNN at 64 px), `dfcl retrain` on params.yaml's defaults is refused
    with the `-S` flags that continue the demo's learner, and those flags do."""
    import re

    from dfcl.config import load_params
    from dfcl.learning.learner import identity_mismatch, identity_of

    defaults = load_params(Path(__file__).parents[1] / "params.yaml")
    demo = load_params(Path(__file__).parents[1] / "params.yaml", [*defaults.demo.overrides, "strategy.name=gem"])
    message = identity_mismatch(Path("data/learner"), identity_of(demo), identity_of(defaults))

    assert "was trained with model.name=small_cnn" in message and message.endswith("or start over with --fresh")
    flags = re.findall(r"-S ([^\s`]+)", message)
    assert "data.image_size=64" in flags and "strategy.name=gem" in flags
    assert identity_of(load_params(Path(__file__).parents[1] / "params.yaml", flags)) == identity_of(demo)


def test_a_public_bind_without_a_token_is_refused_unless_insecure(workspace, capsys, monkeypatch):
    from dfcl.serving.api_guards import open_bind

    monkeypatch.delenv("DFCL_API_TOKEN", raising=False)
    assert main(["api", "--host", "0.0.0.0", "--port", "9"]) == 2  # refused before anything listens or loads
    err = capsys.readouterr().err
    assert err.startswith("dfcl: refusing to listen on 0.0.0.0 without an access token") and "--insecure" in err
    for host in ("127.0.0.1", "127.0.0.2", "localhost", "::1", "[::1]"):
        assert open_bind(host, None, False) is None, host
    for host in ("0.0.0.0", "", "::", "192.168.1.10"):
        assert open_bind(host, None, False), host
    assert open_bind("0.0.0.0", "s3cret", False) is None and open_bind("0.0.0.0", None, True) is None


def test_an_empty_tracking_variable_is_the_workspace_default_not_mlflows(tmp_path, monkeypatch):
    """`MLFLOW_TRACKING_URI=` (set, empty) would let MLflow pick its own store in the current folder:
    runs started elsewhere would miss the workspace's registry."""
    from dfcl.workspace import Workspace, configure_environment

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "")
    configure_environment(Workspace(tmp_path))
    assert os.environ["MLFLOW_TRACKING_URI"] == f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    configure_environment(Workspace(tmp_path))
    assert os.environ["MLFLOW_TRACKING_URI"] == "http://mlflow.example:5000", "a server the user named wins"


def test_history_and_detect_tables_left_align_their_sentences():
    """A short reason under a long one starts where the long one starts (pandas right-aligns text)."""
    import pandas as pd

    from dfcl.logs import text_table

    frame = pd.DataFrame([{"action": "promote", "by": "alice", "reason": "numbers look right"},
                          {"action": "reject", "by": "promotion gate", "reason": "ffpp-crops/Deepfakes: auc 0.869 vs 0.907"}])
    header, *rows = text_table(frame, ["by", "reason"]).splitlines()
    assert {row.index(r) for row, r in zip(rows, frame.reason)} == {header.index("reason")}
    assert {row.index(b) for row, b in zip(rows, frame.by)} == {header.index("by")}
