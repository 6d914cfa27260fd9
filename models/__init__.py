"""Detector architectures, registered by name (as in timm's registry).

    from models import create_model, list_models
    model = create_model("small_cnn", num_classes=2, width=32)

Every model takes images in [0, 1] and normalises them itself, returns logits of shape
(batch, 2): class 0 = real, class 1 = fake, and names its classifier layer `head`, which CWR*
consolidates. `create_model(name, pretrained="imagenet")` starts from packaged weights.
"""
# Importing the families registers them.
from models import efficientnet_lite, frequency, small_cnn, timm_backbones  # noqa: F401,E402
from models.registry import (  # noqa: F401
                             cam_layer,
                             create_model,
                             list_models,
                             mask_head_models,
                             pretrained_tags,
                             register_model,
)
