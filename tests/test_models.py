import pytest
import torch

from models import create_model, list_models


def test_registry_lists_the_cpu_cnn_and_timm_backbones():
    expected = {"small_cnn", "small_cnn_fft", "efficientnet_b0", "efficientnet_b4", "xception", "resnet50", "densenet121"}
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


def test_spectrum_ignores_where_an_artefact_sits_and_sees_a_checkerboard():
    from models.frequency import log_spectrum

    torch.manual_seed(0)
    image = torch.rand(1, 3, 32, 32)
    shifted = torch.roll(image, shifts=(5, 11), dims=(-2, -1))
    assert torch.allclose(log_spectrum(image), log_spectrum(shifted), atol=1e-4)
    # A faint 2x2 checkerboard (upsampling's trace) lights up the corner (Nyquist) bin.
    checker = image + 0.1 * ((torch.arange(32)[:, None] + torch.arange(32)[None, :]) % 2)
    # After fftshift the highest (Nyquist) frequency sits at index (0, 0): the checkerboard's
    # bin outshines every bin of the clean image's spectrum.
    assert log_spectrum(checker)[0, :, 0, 0].min() > log_spectrum(image).max()


def test_two_stream_model_trains_under_autocast():
    model = create_model("small_cnn_fft", width=8)
    assert isinstance(model.head, torch.nn.Linear)
    x = torch.rand(4, 3, 32, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = torch.nn.functional.cross_entropy(model(x), torch.tensor([0, 1, 0, 1]))
    loss.backward()
    assert all(p.grad is not None for p in model.spectrum.parameters() if p.requires_grad)
