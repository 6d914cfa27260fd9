"""What users see when they ask for something wrong: one clear line and exit code 2."""
import pytest

from dfcl.cli import main
from tests.conftest import run_dfcl


@pytest.mark.parametrize("argv, message", [
    (["retrain", "DATA", "-S", "train.epoch=1"], "unknown parameter 'train.epoch'"),
    (["retrain", "DATA", "-S", "strategy.name=magic"], "unknown strategy.name 'magic'"),
    (["retrain", "DATA", "-S", "model.name=resnet9000"], "unknown model.name 'resnet9000'"),
    (["compare", "--data", "DATA", "--strategies", "naive,magic"], "unknown strategy.name 'magic'"),
])
def test_bad_names_fail_before_any_work(argv, message, capsys, workspace):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_missing_dataset_folder_is_one_line(tmp_path):
    proc = run_dfcl(["retrain", str(tmp_path / "nowhere")], tmp_path)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 2, out[-3000:]
    assert "dfcl: " in out and "nowhere is not a folder" in out
    assert "Traceback" not in out


def test_models_lists_the_registry(capsys, workspace):
    assert main(["models"]) == 0
    assert "small_cnn" in capsys.readouterr().out.split()
