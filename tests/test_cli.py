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


@pytest.mark.parametrize("folders, message", [
    (None, "nowhere is not a folder"),
    (["clips", "misc"], "unknown dataset layout (sub-folders: ['clips', 'misc'])"),
])
def test_a_dataset_no_layout_fits_is_one_line_before_any_work(folders, message, tmp_path):
    data = tmp_path / "nowhere"
    for name in folders or []:
        (data / name).mkdir(parents=True)
    proc = run_dfcl(["retrain", str(data)], tmp_path)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 2, out[-3000:]
    assert "dfcl: " in out and message in out
    assert "Traceback" not in out
    assert not (tmp_path / "data" / "raw").exists(), "nothing is copied or versioned"


def test_models_lists_the_registry(capsys, workspace):
    assert main(["models"]) == 0
    assert "small_cnn" in capsys.readouterr().out.split()
