"""Training on two processes (torchrun, gloo on CPU) equals training on one with the same global batch.

One ``torchrun --nproc_per_node 2`` launch of tests/distributed_train.py runs HierMambaTrainer (DDP
through accelerate) and an FSDP2 loop (``fully_shard`` per ``_no_split_modules`` block, with depth-wise
checkpointing); the same functions run here in one process as the reference. accelerate 1.15 does
not shard on CPU: ``TrainingArguments(fsdp=...)`` falls back to DDP there (README, multi-GPU section),
so FSDP is tested through torch's ``fully_shard`` directly.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import distributed_train

GLOBAL_BATCH = 8
SCRIPT = Path(__file__).with_name("distributed_train.py")


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """Both ranks' results of one two-process launch."""
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    out = tmp_path_factory.mktemp("two_ranks")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(SCRIPT), "--out", str(out), "--global-batch", str(GLOBAL_BATCH)]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    finished = subprocess.run(command, capture_output=True, text=True, timeout=300, env=environment)
    assert finished.returncode == 0, finished.stderr[-4000:]
    return [torch.load(out / f"rank{rank}.pt") for rank in range(2)]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """The same two engines in this process, world size 1, the whole batch at once."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return {"trainer": distributed_train.run_trainer(tmp_path_factory.mktemp("one"), GLOBAL_BATCH, 1),
                "fsdp2": distributed_train.run_fsdp2(GLOBAL_BATCH, rank=0, world_size=1)}
    finally:
        torch.set_num_threads(threads)


def assert_states_close(actual: dict, expected: dict, tolerance: float) -> None:
    assert actual.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=tolerance, atol=tolerance, msg=name)


@pytest.mark.parametrize("engine", ["trainer", "fsdp2"])
def test_both_ranks_end_with_identical_weights(two_ranks, engine):
    first, second = (ranks[engine] for ranks in two_ranks)
    assert two_ranks[0]["world_size"] == 2
    assert first["state"].keys() == second["state"].keys()
    for name, tensor in first["state"].items():
        assert torch.equal(tensor, second["state"][name]), name


@pytest.mark.parametrize("engine", ["trainer", "fsdp2"])
def test_two_ranks_match_one_process_with_the_same_global_batch(two_ranks, one_process, engine):
    distributed, single = two_ranks[0][engine], one_process[engine]
    assert len(distributed["losses"]) == distributed_train.STEPS
    assert distributed["losses"][-1] < distributed["losses"][0] - 0.2, "the steps really train"
    torch.testing.assert_close(torch.tensor(distributed["losses"]), torch.tensor(single["losses"]),
                               rtol=1e-5, atol=1e-5)
    assert_states_close(distributed["state"], single["state"], tolerance=1e-4)
    initial = distributed_train.tiny_model().state_dict()
    assert not torch.allclose(distributed["state"]["model.embeddings.weight"], initial["model.embeddings.weight"])


def test_trainer_runs_ddp_and_fsdp2_shards_each_block(two_ranks, one_process):
    assert two_ranks[0]["trainer"]["wrapper"] == "DistributedDataParallel"
    assert one_process["trainer"]["wrapper"] == "HierMambaForCausalLM"
    assert two_ranks[0]["fsdp2"]["wrapper"].startswith("FSDP")  # fully_shard swaps in an FSDP subclass
    assert all(two_ranks[0]["fsdp2"]["checkpointed"]) and len(two_ranks[0]["fsdp2"]["checkpointed"]) == 3
    full = one_process["fsdp2"]["local_elements"]
    local = [ranks["fsdp2"]["local_elements"] for ranks in two_ranks]
    assert sum(local) == full and max(local) < full, (local, full)  # each rank holds its half of every tensor
