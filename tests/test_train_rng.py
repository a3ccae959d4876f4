"""A resumed run draws the same dropout masks as one that never stopped, on a CPU worker and on a GPU one.

No GPU here: the GPU worker's CUDA generator is stood in for from the test (torch.cuda's two RNG calls).
That the states come back to the CPU after a load with map_location=<the GPU> is checked on a GPU, by
benchmarks/gpu_check.py's resume step.
"""

import io

import pytest
import torch

from s2s.train import restore_rng, rng_state


def test_cpu_rng_round_trips_through_a_saved_checkpoint():
    torch.manual_seed(7)
    kept = rng_state(torch.device("cpu"))
    expected = torch.rand(5)
    buffer = io.BytesIO()
    torch.save(kept, buffer)
    buffer.seek(0)
    torch.rand(100)  # the generator moves on
    restore_rng(torch.load(buffer, weights_only=False), torch.device("cpu"))
    assert torch.equal(torch.rand(5), expected)
    assert set(kept) == {"rng"}  # a CPU worker keeps no CUDA state


@pytest.fixture
def fake_cuda(monkeypatch):
    """torch.cuda's generator calls, recorded: what a GPU worker would save and set."""
    calls = {"set": []}

    def get_rng_state(device):
        return torch.full((16,), 3, dtype=torch.uint8)

    def set_rng_state(state, device):
        calls["set"].append((state, device))

    monkeypatch.setattr(torch.cuda, "get_rng_state", get_rng_state)
    monkeypatch.setattr(torch.cuda, "set_rng_state", set_rng_state)
    return calls


def test_gpu_worker_saves_and_restores_both_generators(fake_cuda):
    gpu = torch.device("cuda", 0)
    torch.manual_seed(11)
    kept = rng_state(gpu)
    assert set(kept) == {"rng", "cuda_rng"}
    expected = torch.rand(3)
    loaded = {k: v.clone() for k, v in kept.items()}
    torch.rand(10)
    restore_rng(loaded, gpu)
    assert torch.equal(torch.rand(3), expected)
    (state, device), = fake_cuda["set"]
    assert device == gpu and state.device.type == "cpu" and torch.equal(state, kept["cuda_rng"])


def test_a_checkpoint_from_a_gpu_run_resumes_on_a_cpu_worker(fake_cuda):
    kept = rng_state(torch.device("cuda", 0))
    restore_rng(kept, torch.device("cpu"))  # the CUDA state is kept but not needed here
    assert fake_cuda["set"] == []
