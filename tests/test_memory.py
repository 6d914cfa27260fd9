"""train.heap_allocations: a training step's large tensors reuse glibc's heap instead of having
the kernel fault in fresh pages every step (dfcl/learning/memory.py)."""
import subprocess
import sys
from pathlib import Path

import pytest

PROBE = """
import resource, sys, torch
from types import SimpleNamespace
from dfcl.learning.memory import apply_heap_allocations
assert apply_heap_allocations(SimpleNamespace(heap_allocations=sys.argv[1] == "heap")) == (sys.argv[1] == "heap")
torch.set_num_threads(1)
net = torch.nn.Sequential(torch.nn.Conv2d(3, 32, 3, padding=1), torch.nn.BatchNorm2d(32), torch.nn.ReLU(),
                          torch.nn.Conv2d(32, 96, 3, padding=1), torch.nn.BatchNorm2d(96), torch.nn.ReLU(),
                          torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(96, 2))
x = torch.rand(32, 3, 64, 64)  # activations of 50 MB, like Lite0's first blocks at 160 px
def step():
    net.zero_grad()
    net(x).sum().backward()
step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_training_steps_stop_faulting_in_fresh_pages():
    def page_faults(mode: str) -> int:
        env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(Path(__file__).parents[1])}
        out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True, env=env)
        return int(out.stdout.split()[-1])

    mapped, heap = page_faults("mmap"), page_faults("heap")
    assert mapped > 100_000  # glibc's default: every step's large tensors are fresh pages
    assert heap < mapped / 5
