"""Detector architectures, registered by name (as in timm's registry).

    from models import create_model, list_models
    model = create_model("small_cnn", num_classes=2, width=32)

Every model returns logits of shape (batch, 2): class 0 = real, class 1 = fake. Each one
names its classifier layer `head`, which CWR* consolidates.
"""
from models.registry import create_model, list_models, register_model  # noqa: F401

# Importing the families registers them.
from models import frequency, small_cnn, timm_backbones  # noqa: F401,E402
