"""The same config on a GPU: one key, one results folder, and DeepFool distances that match
the CPU's. Runs only where CUDA exists (skipped on the CPU machines of CI)."""

import pytest
import torch

from burn.config import load_preset
from burn.distances import boundary_distances
from burn.experiment import attacked_model
from burn.keys import attack_key
from burn.runtime import Runtime

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")


def test_gpu_run_shares_the_cpu_key_and_distances(tmp_path):
    cfg = load_preset("smoke")
    cpu = attacked_model(cfg, Runtime(device="cpu", results_root=tmp_path, progress=False))
    gpu = attacked_model(cfg, Runtime(device="cuda", results_root=tmp_path, progress=False))
    assert gpu.key == cpu.key == attack_key(cfg, cpu.poisoned.name) and not gpu.trained_now
    assert next(gpu.model.parameters()).is_cuda
    d_cpu = boundary_distances(cpu)
    (cpu.results_dir / "deepfool.npz").unlink()  # computed again, on the GPU
    d_gpu = boundary_distances(gpu)
    assert d_gpu["key"] == d_cpu["key"]
    agree = (d_gpu["adv_labels"] == d_cpu["adv_labels"]).float().mean()
    assert agree > 0.99
    torch.testing.assert_close(d_gpu["norms"], d_cpu["norms"], rtol=1e-3, atol=1e-5)
