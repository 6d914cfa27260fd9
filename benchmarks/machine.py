"""What a benchmark ran on, recorded beside its results."""
import os
import platform


def machine() -> dict:
    import torch

    info = {"platform": platform.platform(), "cpu_cores": os.cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info
