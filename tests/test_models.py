import pytest
import torch

from models import create_model, list_models


def test_registry_lists_the_cpu_cnn_and_timm_backbones():
    expected = {"small_cnn", "efficientnet_b0", "efficientnet_b4", "xception", "resnet50", "densenet121"}
    assert expected <= set(list_models())


@pytest.mark.parametrize("name", ["small_cnn", "efficientnet_b0", "resnet18"])
def test_models_output_two_logits_and_have_a_head(name):
    model = create_model(name).eval()
    assert model(torch.zeros(2, 3, 64, 64)).shape == (2, 2)
    assert isinstance(model.head, torch.nn.Linear)


def test_unknown_model_lists_the_known_ones():
    with pytest.raises(KeyError, match="registered models: .*small_cnn"):
        create_model("resnet9000")


def test_local_weights_file_is_loaded(tmp_path):
    import timm

    reference = timm.create_model("resnet18")
    torch.save(reference.state_dict(), tmp_path / "r18.pth")
    model = create_model("resnet18", weights=str(tmp_path / "r18.pth"))
    assert torch.equal(model.backbone.conv1.weight, reference.conv1.weight)
    with pytest.raises(FileNotFoundError):
        create_model("resnet18", weights=str(tmp_path / "missing.pth"))
