"""Operations: one run at a time, services checked before any work, the champion's history
and rollback, the new-dataset trigger, the gate against a deliberately bad challenger, and
resuming after a crash."""
import random
import shutil
import signal
import subprocess
import sys
import time

import mlflow
import pytest
from mlflow import MlflowClient

from dfcl.learning.learner import Learner
from dfcl.ops.guards import (
    Busy,
    OpsError,
    ServiceUnavailable,
    check_services,
    one_retraining,
    retrain_lock,
)
from dfcl.ops.registry import alias_events, rollback_champion
from dfcl.ops.triggers import Ledger, dataset_folders, due_datasets, fingerprint
from flows.retrain import retrain_detector
from tests.conftest import small_params

REGISTERED = "deepfake-detector"


def test_one_retraining_at_a_time_and_a_killed_holder_frees_the_lock(tmp_path):
    lock = tmp_path / "retrain.lock"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pathlib import Path; from dfcl.ops.guards import retrain_lock\n"
        f"with retrain_lock(Path({str(lock)!r}), 0, 'run A'):\n"
        "    print('locked', flush=True); time.sleep(600)")], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(Busy, match="another retraining run is in progress.*run A"):
        with retrain_lock(lock, 0, "run B"):
            pass
    start = time.monotonic()
    with pytest.raises(Busy):
        with retrain_lock(lock, 1.5, "run B", log=lambda m: None):  # queues, then gives up
            pass
    assert time.monotonic() - start >= 1.4
    holder.send_signal(signal.SIGKILL)  # a crash: the kernel drops the lock with the process
    holder.wait()
    with retrain_lock(lock, 5, "run B"):
        assert "run B" in lock.read_text()


def test_on_a_prefect_server_one_retraining_at_a_time_is_its_concurrency_limit(tmp_path, prefect_api_url):
    """With a Prefect server (workers on several hosts share no flock) the slot of its global
    concurrency limit `dfcl-retrain` is what a run holds; no flock is taken then."""
    from prefect import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: prefect_api_url}):
        with one_retraining(tmp_path, 0, "run A"):
            with get_client(sync_client=True) as client:
                limit = client.read_global_concurrency_limit_by_name("dfcl-retrain")
            assert (limit.limit, limit.active_slots) == (1, 1)
            with pytest.raises(Busy, match="concurrency limit dfcl-retrain"):
                with one_retraining(tmp_path, 0, "run B"):
                    pass
            assert not (tmp_path / "data" / "retrain.lock").exists()
        with one_retraining(tmp_path, 0, "run B"):  # freed when run A's block ended
            pass


def test_unreachable_mlflow_or_dvc_remote_stops_the_run_before_anything_moves(workspace, demo_data, monkeypatch):
    params = small_params("dvc.remote_url=/proc/no-such-remote")
    with pytest.raises(ServiceUnavailable, match="DVC remote 'local' is unreachable.*dvc remote modify"):
        retrain_detector(str(demo_data / "BlendSwap"), params, auto_approve=True)
    assert not (workspace.root / "data" / "raw").exists(), "data was copied before the check"
    with pytest.raises(mlflow.exceptions.MlflowException):
        MlflowClient().get_registered_model(REGISTERED)

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # nothing listens on port 9
    mlflow.set_tracking_uri("http://127.0.0.1:9")
    with pytest.raises(ServiceUnavailable, match="MLflow tracking at http://127.0.0.1:9 is unreachable"):
        check_services(small_params("dvc.push=false").dvc, workspace.root)


def register_dummy(n: int) -> list[str]:
    import torch

    versions = []
    for _ in range(n):
        with mlflow.start_run():
            # Requirements given: inferring them loads the model again in a subprocess.
            info = mlflow.pytorch.log_model(torch.nn.Linear(2, 2), name="model", serialization_format="pickle",
                                            registered_model_name=REGISTERED, pip_requirements=["torch"])
        versions.append(str(info.registered_model_version))
    return versions


def test_rollback_walks_back_through_champions_and_history_keeps_who_when_why(workspace):
    from tasks.promote_champion import promote_champion, record_rejection

    v1, v2, v3 = register_dummy(3)
    with mlflow.start_run():
        promote_champion(REGISTERED, v1, "alice", "first", None)
        promote_champion(REGISTERED, v2, "bob", "better", v1)
        record_rejection(REGISTERED, v3, "carol", "not convinced")
    client = MlflowClient()
    assert client.get_model_version_by_alias(REGISTERED, "champion").version == int(v2)

    assert rollback_champion(REGISTERED, "dave", "false alarms") == (v2, v1)
    assert client.get_model_version_by_alias(REGISTERED, "champion").version == int(v1)
    assert client.get_model_version(REGISTERED, v2).tags["rollback_reason"] == "false alarms"
    with pytest.raises(OpsError, match="no earlier champion"):
        rollback_champion(REGISTERED, "dave", "again")
    events = alias_events(REGISTERED)
    assert [(e["action"], e["version"], e["by"]) for e in events] == [
        ("promote", v1, "alice"), ("promote", v2, "bob"), ("reject", v3, "carol"), ("rollback", v1, "dave")]
    assert events[1]["previous"] == v1 and events[3]["reason"] == "false alarms" and events[0]["at"]


def test_ops_rejecting_the_first_challenger_leaves_no_champion_and_says_who_and_why(workspace):
    from tasks.promote_champion import record_rejection

    v1, = register_dummy(1)
    with mlflow.start_run():
        record_rejection(REGISTERED, v1, "alice", "not today")
    client = MlflowClient()
    with pytest.raises(mlflow.exceptions.MlflowException):
        client.get_model_version_by_alias(REGISTERED, "champion")
    tags = client.get_model_version(REGISTERED, v1).tags
    assert (tags["rejected_by"], tags["rejection_reason"]) == ("alice", "not today")
    assert [(e["action"], e["version"], e["by"]) for e in alias_events(REGISTERED)] == [("reject", v1, "alice")]


def test_a_promotion_and_a_rollback_at_once_get_events_of_their_own(workspace, monkeypatch):
    import threading

    from dfcl.ops import registry

    v1, v2, v3 = register_dummy(3)
    registry.promote(REGISTERED, v1, "alice", "first", None)
    registry.promote(REGISTERED, v2, "bob", "second", v1)
    # Widen the window between reading the history and writing the next event, as a slow
    # registry does: unlocked, both would write the same number and one event would be lost.
    read = MlflowClient.get_registered_model

    def slow(self, name):
        model = read(self, name)
        time.sleep(0.3)
        return model

    monkeypatch.setattr(MlflowClient, "get_registered_model", slow)
    errors = []

    def run(fn, *args):
        try:
            fn(*args)
        except Exception as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(registry.promote, REGISTERED, v3, "carol", "third", v2)),
               threading.Thread(target=run, args=(rollback_champion, REGISTERED, "dave", "false alarms"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    monkeypatch.setattr(MlflowClient, "get_registered_model", read)
    events = alias_events(REGISTERED)
    # Whichever went first, the history and the alias agree, and no number is lost. Promotion
    # first: the rollback undoes it (4 events). Rollback first: the promotion was decided against
    # v2, which is no longer champion, so it is refused as stale and nothing moves (3 events).
    assert [e["n"] for e in events] == list(range(1, len(events) + 1)), events
    assert registry.champion_stack(events)[-1] == str(MlflowClient().get_model_version_by_alias(REGISTERED, "champion").version)
    assert (len(events), [type(e) for e in errors]) in ((4, []), (3, [registry.StaleDecision])), (events, errors)


def test_approval_over_a_champion_the_gate_never_saw_moves_nothing(workspace):
    from dfcl.ops import registry
    from flows.retrain import ApprovalDecision, move_aliases

    v1, v2, v3 = register_dummy(3)
    registry.promote(REGISTERED, v1, "alice", "first", None)
    registry.promote(REGISTERED, v2, "bob", "second", v1)
    # the gate scored v3 against v2 ...
    rollback_champion(REGISTERED, "dave", "false alarms")  # ... and ops rolled back while it waited
    with mlflow.start_run() as run:
        outcome = move_aliases(REGISTERED, v3, ApprovalDecision(approve=True, approver="erin"), True, v2)
    assert outcome == "stale decision, re-run the gate"
    assert MlflowClient().get_model_version_by_alias(REGISTERED, "champion").version == int(v1)
    assert [e["action"] for e in alias_events(REGISTERED)] == ["promote", "promote", "rollback"]
    assert "promoted_by" not in MlflowClient().get_model_version(REGISTERED, v3).tags
    assert MlflowClient().get_run(run.info.run_id).data.tags["outcome"] == outcome
    with pytest.raises(registry.StaleDecision, match="compared version 3 with no champion, but champion is now version 1"):
        registry.promote(REGISTERED, v3, "erin", "first ever?", None)


def test_a_registry_error_never_overwrites_an_event(workspace, monkeypatch):
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INTERNAL_ERROR

    from dfcl.ops import registry

    v1, v2 = register_dummy(2)
    registry.promote(REGISTERED, v1, "alice", "first", None)
    monkeypatch.setattr(MlflowClient, "get_registered_model",
                        lambda self, name: (_ for _ in ()).throw(MlflowException("timed out", error_code=INTERNAL_ERROR)))
    with pytest.raises(MlflowException, match="timed out"):
        registry.record_rejection(REGISTERED, v2, "bob", "no")
    monkeypatch.undo()
    assert [(e["n"], e["action"], e["by"]) for e in alias_events(REGISTERED)] == [(1, "promote", "alice")]


def test_rollback_refuses_when_the_alias_was_moved_outside_dfcl(workspace):
    from dfcl.ops import registry

    v1, v2, v3 = register_dummy(3)
    registry.promote(REGISTERED, v1, "alice", "first", None)
    registry.promote(REGISTERED, v2, "bob", "second", v1)
    MlflowClient().set_registered_model_alias(REGISTERED, "champion", v3)  # by hand, in the MLflow UI
    with pytest.raises(OpsError, match=f"champion points at version {v3}, but its history's last champion is version {v2}"):
        rollback_champion(REGISTERED, "dave", "false alarms")
    assert MlflowClient().get_model_version_by_alias(REGISTERED, "champion").version == int(v3)
    assert len(alias_events(REGISTERED)) == 2


SERVE = small_params().flow.serve.model_copy(update={"quiet_s": 600, "max_attempts": 3, "retry_backoff_s": 100})


class Clock:
    def __init__(self):
        self.t = 1_000_000.0

    def __call__(self):
        return self.t


def names(due):
    return [d.folder.name for d in due]


def test_trigger_sees_new_folders_and_new_versions_but_not_trained_ones(tmp_path, demo_data):
    incoming = tmp_path / "incoming"
    shutil.copytree(demo_data / "BlendSwap", incoming / "BlendSwap")
    shutil.copytree(demo_data / "MouthWarp", incoming / "grouped" / "MouthWarp")
    (incoming / "notes").mkdir()  # not a dataset: ignored
    for folder in (incoming / "BlendSwap", incoming / "grouped" / "MouthWarp"):
        (folder / "READY").touch()
    ledger = Ledger(tmp_path / "triggers.json")
    real = ["real"]
    assert [p.name for p in dataset_folders(incoming, real)] == ["BlendSwap", "MouthWarp"]
    assert names(due_datasets(incoming, ledger, real, SERVE)) == ["BlendSwap", "MouthWarp"]
    ledger.mark(incoming / "BlendSwap", "trained")
    ledger.mark(incoming / "grouped" / "MouthWarp", "queued", flow_run="x")
    assert due_datasets(incoming, ledger, real, SERVE, run_state=lambda e: "alive") == []
    # a queued run that was cancelled gives its dataset back; a changed dataset is a new version
    assert names(due_datasets(incoming, ledger, real, SERVE, run_state=lambda e: "cancelled")) == ["MouthWarp"]
    shutil.copy(incoming / "BlendSwap" / "train" / "real" / "0000.jpg", incoming / "BlendSwap" / "train" / "real" / "new.jpg")
    assert names(due_datasets(incoming, Ledger(tmp_path / "triggers.json"), real, SERVE, lambda e: "alive")) == ["BlendSwap"]


LEDGER_WRITER = """
import sys
from pathlib import Path
from dfcl.ops.triggers import Ledger
ledger, who, n = Ledger(Path(sys.argv[1])), sys.argv[2], int(sys.argv[3])
for i in range(n):
    ledger.mark(Path(f"/incoming/{who}-{i}"), "queued", f"fp-{i}", flow_run=who)
"""


def test_concurrent_ledger_writers_lose_nothing_and_never_corrupt_it(tmp_path):
    path, n = tmp_path / "triggers.json", 150
    writers = [subprocess.Popen([sys.executable, "-c", LEDGER_WRITER, str(path), who, str(n)], stderr=subprocess.PIPE,
                                text=True) for who in ("a", "b")]
    errors = [w.communicate(timeout=120)[1] for w in writers]
    assert [w.returncode for w in writers] == [0, 0], errors
    entries = Ledger(path).entries
    assert len(entries) == 2 * n, "a mark was lost: a writer rewrote the file from an older read"
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".triggers*")), "temporary files left"


def test_a_corrupt_ledger_is_moved_aside_with_a_warning(tmp_path):
    path, said = tmp_path / "triggers.json", []
    path.write_text('{"/incoming/a": {"state": "queu')
    ledger = Ledger(path, log=said.append)
    assert ledger.entries == {} and len(said) == 1 and "moved aside" in said[0]
    assert [p.read_text() for p in tmp_path.glob("triggers.json.corrupt-*")] == ['{"/incoming/a": {"state": "queu']
    ledger.mark(tmp_path, "pending", "fp")
    assert Ledger(path).entries[str(tmp_path.resolve())]["state"] == "pending"


def test_a_dataset_is_taken_only_once_complete(tmp_path, demo_data):
    incoming, clock = tmp_path / "incoming", Clock()
    ledger = Ledger(tmp_path / "triggers.json")
    shutil.copytree(demo_data / "BlendSwap", incoming / "BlendSwap")
    assert due_datasets(incoming, ledger, ["real"], SERVE, clock=clock) == [], "taken while it may still be copied"
    clock.t += 500
    (incoming / "BlendSwap" / "test" / "real" / "late.jpg").write_bytes(b"more")  # the copy goes on
    assert due_datasets(incoming, ledger, ["real"], SERVE, clock=clock) == []
    clock.t += 599
    assert due_datasets(incoming, ledger, ["real"], SERVE, clock=clock) == [], "a change restarts the quiet period"
    clock.t += 1
    assert names(due_datasets(incoming, ledger, ["real"], SERVE, clock=clock)) == ["BlendSwap"]

    shutil.copytree(demo_data / "MouthWarp", incoming / "MouthWarp")
    marker_only = SERVE.model_copy(update={"quiet_s": 0})
    clock.t += 10_000
    assert "MouthWarp" not in names(due_datasets(incoming, ledger, ["real"], marker_only, clock=clock))
    before = ledger.entries[str((incoming / "MouthWarp").resolve())]["fingerprint"]
    (incoming / "MouthWarp" / "READY").touch()
    assert "MouthWarp" in names(due_datasets(incoming, ledger, ["real"], marker_only, clock=clock))
    assert fingerprint(incoming / "MouthWarp") == before, "the marker is not part of the dataset's version"


def test_a_dataset_that_always_fails_is_retried_with_backoff_then_left_alone(tmp_path, demo_data):
    incoming, clock, said = tmp_path / "incoming", Clock(), []
    ledger = Ledger(tmp_path / "triggers.json")
    shutil.copytree(demo_data / "BlendSwap", incoming / "BlendSwap")
    (incoming / "BlendSwap" / "READY").touch()

    def poll():
        due = due_datasets(incoming, ledger, ["real"], SERVE, run_state=lambda e: "failed", clock=clock, log=said.append)
        for d in due:  # as flows.incoming.queue_new_datasets does
            ledger.mark(d.folder, "queued", d.fingerprint, flow_run=f"run-{d.attempt}", attempts=d.attempt)
        return [d.attempt for d in due]

    assert poll() == [1]
    assert poll() == [], "the failed run is noticed; the next waits"
    clock.t += 99
    assert poll() == []
    clock.t += 1
    assert poll() == [2]
    poll()
    clock.t += 199
    assert poll() == [], "the wait doubles"
    clock.t += 1
    assert poll() == [3]
    for _ in range(3):
        clock.t += 10_000
        assert poll() == [], "three failures: left alone"
    assert ledger.entries[str((incoming / "BlendSwap").resolve())]["state"] == "gave up"
    assert len(said) == 1 and "3 retraining runs failed" in said[0]
    (incoming / "BlendSwap" / "train" / "real" / "0000.jpg").write_bytes(b"fixed")  # a new version starts over
    clock.t += 600
    assert poll() == [1]


def test_the_trained_fingerprint_is_the_one_ingest_took(workspace, demo_data, monkeypatch):
    import flows.retrain

    data = workspace.root / "data" / "incoming" / "BlendSwap"
    shutil.copytree(demo_data / "BlendSwap", data)
    taken = fingerprint(data)

    def a_run_during_which_a_file_arrives(*args, **kwargs):
        (data / "test" / "real" / "late.jpg").write_bytes((data / "test" / "real" / "0000.jpg").read_bytes())
        return {"outcome": "promoted"}

    monkeypatch.setattr(flows.retrain, "_retrain", a_run_during_which_a_file_arrives)
    retrain_detector(str(data), small_params("dvc.push=false"))
    ledger = Ledger(workspace.root / "data" / "triggers.json")
    assert ledger.entries[str(data.resolve())] == {"fingerprint": taken, "state": "trained", "outcome": "promoted"}
    (data / "READY").touch()
    assert names(due_datasets(data.parent, ledger, ["real"], SERVE)) == ["BlendSwap"], "the late file is not trained"


def shuffled_copy(src, dst, seed=0):
    """The same images with their real/fake labels shuffled: a challenger trained on it is
    deliberately worse."""
    rng = random.Random(seed)
    for split in ("train", "test"):
        files = [(f, cls) for cls in ("real", dst.name) for f in sorted((src / split / (cls if cls == "real" else src.name)).glob("*.jpg"))]
        labels = [cls for _, cls in files]
        rng.shuffle(labels)
        for (f, _), cls in zip(files, labels):
            (dst / split / cls).mkdir(parents=True, exist_ok=True)
            shutil.copy(f, dst / split / cls / f"{f.parent.name}-{f.name}")


@pytest.fixture(scope="module")
def learnable_data(tmp_path_factory):
    """Enough synthetic faces (96 per class) for the small CNN to learn a method well."""
    from dfcl.data.demo_data import generate

    out = tmp_path_factory.mktemp("learnable")
    generate(out, ["BlendSwap", "GANUpsample"], train_per_class=96, test_per_class=24, size=32, seed=1)
    return out


def test_gate_rejects_a_challenger_trained_on_shuffled_labels_without_asking_ops(workspace, learnable_data):
    params = small_params("strategy.name=naive", "train.epochs=6", "model.width=16", "approval.timeout_s=1")
    first = retrain_detector(str(learnable_data / "BlendSwap"), params, auto_approve=True)
    assert first["outcome"] == "promoted" and first["results"]["avg_accuracy"] > 0.8, first["results"]
    bad = workspace.root / "incoming" / "Shuffled"
    shuffled_copy(learnable_data / "GANUpsample", bad)
    outcome = retrain_detector(str(bad), params)  # no auto-approve: a pass would wait for ops (1 s) and say so
    assert outcome["outcome"] == "rejected by gate", outcome
    assert outcome["gate"]["reasons"]
    client = MlflowClient()
    assert client.get_model_version_by_alias(REGISTERED, "champion").version == int(first["version"])
    assert client.get_model_version(REGISTERED, outcome["version"]).tags["rejected_by"] == "promotion gate"


def test_a_crash_mid_training_resumes_from_the_last_finished_experience(workspace, demo_data, monkeypatch):
    data = workspace.root / "incoming" / "two"
    for method in ("BlendSwap", "MouthWarp"):
        for split in ("train", "test"):
            shutil.copytree(demo_data / method / split / method, data / split / method)
            shutil.copytree(demo_data / method / split / "real", data / split / "real", dirs_exist_ok=True)
    params = small_params("gate.max_forgetting=1")  # one-epoch models forget noisily; the gate is not what this tests
    learn = Learner.learn

    def crash_on_second(self, spec, *args, **kwargs):
        if self.history.experiences:
            raise KeyboardInterrupt("power cut")  # not an Exception: nothing may catch and go on
        return learn(self, spec, *args, **kwargs)

    monkeypatch.setattr(Learner, "learn", crash_on_second)
    with pytest.raises(BaseException, match="power cut"):
        retrain_detector(str(data), params, auto_approve=True)
    monkeypatch.setattr(Learner, "learn", learn)
    assert [e.key for e in Learner.load(workspace.learner, params, workspace.root).history.experiences] == ["two/BlendSwap"]
    with pytest.raises(mlflow.exceptions.MlflowException):  # nothing registered, so no challenger
        MlflowClient().get_model_version_by_alias(REGISTERED, "challenger")

    outcome = retrain_detector(str(data), params, auto_approve=True)
    assert outcome["outcome"] == "promoted"
    assert outcome["results"]["methods"] == ["two/BlendSwap", "two/MouthWarp"]
    steps = [m.step for m in MlflowClient().get_metric_history(outcome["run_id"], "acc/two/MouthWarp")]
    assert steps == [1] and not MlflowClient().get_metric_history(outcome["run_id"], "acc/two/BlendSwap")[:-1]


def test_a_crash_after_learning_registers_on_the_next_run_without_training_again(workspace, demo_data, monkeypatch):
    import flows.retrain

    params = small_params()
    register = flows.retrain.register_challenger
    monkeypatch.setattr(flows.retrain, "register_challenger", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("MLflow went away")))
    with pytest.raises(RuntimeError, match="MLflow went away"):
        retrain_detector(str(demo_data / "BlendSwap"), params, auto_approve=True)
    monkeypatch.setattr(flows.retrain, "register_challenger", register)
    learned = Learner.load(workspace.learner, params, workspace.root).history
    outcome = retrain_detector(str(demo_data / "BlendSwap"), params, auto_approve=True)
    assert outcome["outcome"] == "promoted" and outcome["results"]["methods"] == ["BlendSwap"]
    assert Learner.load(workspace.learner, params, workspace.root).history.accuracy_matrix == learned.accuracy_matrix
    again = retrain_detector(str(demo_data / "BlendSwap"), params, auto_approve=True)
    assert again["outcome"] == "nothing new"


def test_a_half_written_state_is_ignored(workspace, demo_data, tmp_path):
    from tests.test_learner import specs_for

    specs = specs_for(demo_data, tmp_path, ["BlendSwap"])
    learner = Learner(workspace.learner, small_params(), tmp_path)
    learner.learn(specs[0])
    learner.save()
    (workspace.learner / "state-0002-999").mkdir()  # a save killed before CURRENT moved
    (workspace.learner / "state-0002-999" / "history.json").write_text("{trunc")
    again = Learner.load(workspace.learner, small_params(), tmp_path)
    assert [e.key for e in again.history.experiences] == ["BlendSwap"]


def test_a_move_killed_between_alias_event_and_tags_is_reported_and_repaired(workspace, capsys):
    from dfcl.cli import main
    from dfcl.ops import registry

    v1, v2, v3 = register_dummy(3)
    registry.promote(REGISTERED, v1, "alice", "first", None)
    client = MlflowClient()
    client.set_registered_model_alias(REGISTERED, "champion", v2)  # a promotion killed after the alias moved
    assert registry.inconsistencies(REGISTERED)[0].startswith(f"champion points at version {v2}, but the history's last "
                                                         f"champion is version {v1}")
    assert main(["history"]) == 0 and "inconsistent: champion points at" in capsys.readouterr().out
    assert main(["repair", "--by", "erin"]) == 0
    out = capsys.readouterr().out
    assert f"recorded the promote to version {v2} (from version {v1}); tagged version {v2} with promoted_by" in out
    assert registry.inconsistencies(REGISTERED) == [] and registry.repair(REGISTERED, "erin") == []
    # killed after the alias and the event, before the tags (promote_champion tags after registry.promote)
    registry.promote(REGISTERED, v3, "bob", "third", v2)
    assert registry.inconsistencies(REGISTERED) == [f"event 3 (promote by bob) has no promoted_by tag on version {v3}: "
                                               "interrupted before its tags; `dfcl repair` writes them"]
    assert registry.repair(REGISTERED, "erin") == [f"tagged version {v3} with promoted_by, promoted_at, promotion_reason "
                                              "from event 3"]
    assert client.get_model_version(REGISTERED, v3).tags["promoted_by"] == "bob"
    # a rollback killed after the alias moved back: repaired as the rollback it was
    client.set_registered_model_alias(REGISTERED, "champion", v2)
    assert registry.repair(REGISTERED, "erin")[0] == f"recorded the rollback to version {v2} (from version {v3})"
    assert rollback_champion(REGISTERED, "dave", "now it works") == (v2, v1)


def test_ingest_and_compare_take_the_workspace_lock(workspace, demo_data, capsys):
    from dfcl.cli import main
    from dfcl.ops.guards import workspace_lock

    with workspace_lock(workspace.root, 0, "a retraining run"):
        assert main(["ingest", str(demo_data / "BlendSwap")]) == 2
        assert "another retraining run is in progress" in capsys.readouterr().err
        assert main(["compare", "--data", str(demo_data / "BlendSwap"), "--strategies", "naive"]) == 2
        assert "another retraining run is in progress" in capsys.readouterr().err
    assert not (workspace.root / "data" / "raw").exists(), "ingest wrote while the lock was held"


def test_a_learner_trained_with_other_settings_is_refused_before_any_mlflow_run_or_copy(workspace, demo_data):
    """A refusal is not a training that failed: no MLflow run records it, and nothing is copied."""
    from dfcl.config import ConfigError

    Learner(workspace.learner, small_params(), workspace.root).save()
    with pytest.raises(ConfigError, match="data.image_size=32 where params ask for data.image_size=48"):
        retrain_detector(str(demo_data / "BlendSwap"), small_params("data.image_size=48"), auto_approve=True)
    assert mlflow.search_runs(search_all_experiments=True).empty, "the refusal left an MLflow run"
    assert not (workspace.root / "data" / "raw").exists(), "data was copied before the refusal"


def test_approve_with_no_run_waiting_says_the_newest_decision(workspace):
    """A challenger the gate rejected never waits for ops: `dfcl approve` says so instead of only
    "nothing is waiting"."""
    from dfcl.ops.approvals import answer_paused_run, newest_decision
    from tasks.promote_champion import record_rejection

    assert newest_decision(REGISTERED) == ""  # nothing registered yet
    v1, = register_dummy(1)
    with mlflow.start_run():
        record_rejection(REGISTERED, v1, "promotion gate", "ffpp-crops/Deepfakes: auc 0.869 vs the champion's 0.907")
    with pytest.raises(OpsError, match=r"no paused retraining run is waiting for approval; the newest decision: "
                                       r"version 1 rejected by promotion gate at .*: ffpp-crops/Deepfakes: auc 0\.869 "
                                       r"vs the champion's 0\.907 \(dfcl history\)"):
        answer_paused_run(None, True, "alice", "", REGISTERED)
