"""Training on two processes (torchrun, gloo on CPU) equals training on one with the same global batch.

One ``torchrun --nproc_per_node 2`` launch of tests/distributed_train.py runs HierMambaTrainer (DDP
through accelerate) and an FSDP2 loop (``fully_shard`` per ``_no_split_modules`` block, with depth-wise
checkpointing); a second launch runs HierMambaTrainer under DeepSpeed ZeRO-2 with
configs/deepspeed_zero2.json when the deepspeed package is installed (it is not a project dependency:
those tests skip without it). The same functions run here in one process as the reference.
accelerate 1.15 does not shard on CPU: ``TrainingArguments(fsdp=...)`` falls back to DDP there
(docs/distributed.md), so FSDP is tested through torch's ``fully_shard`` directly.
"""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import distributed_train

GLOBAL_BATCH = 8
SCRIPT = Path(__file__).with_name("distributed_train.py")
ENGINES = ["trainer", "fsdp2", "deepspeed"]


def launch(out: Path, engines: list[str]) -> list[dict]:
    """Both ranks' results of one two-process torchrun launch running ``engines``."""
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(SCRIPT), "--out", str(out), "--global-batch", str(GLOBAL_BATCH), "--engines", *engines]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    finished = subprocess.run(command, capture_output=True, text=True, timeout=600, env=environment)
    assert finished.returncode == 0, finished.stderr[-4000:]
    return [torch.load(out / f"rank{rank}.pt") for rank in range(2)]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    return launch(tmp_path_factory.mktemp("two_ranks"), ["trainer", "fsdp2"])


@pytest.fixture(scope="module")
def two_ranks_deepspeed(tmp_path_factory):
    if importlib.util.find_spec("deepspeed") is None:
        pytest.skip("deepspeed is not installed (pip install deepspeed)")
    return launch(tmp_path_factory.mktemp("two_ranks_deepspeed"), ["deepspeed"])


@pytest.fixture
def ranks_of(request):
    """engine -> both ranks' results for that engine."""
    def get(engine: str) -> list[dict]:
        ranks = request.getfixturevalue("two_ranks_deepspeed" if engine == "deepspeed" else "two_ranks")
        assert ranks[0]["world_size"] == 2
        return [rank[engine] for rank in ranks]
    return get


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """The Trainer and the plain loop in this process, world size 1, the whole batch at once."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return {"trainer": distributed_train.run_trainer(tmp_path_factory.mktemp("one"), GLOBAL_BATCH, 1),
                "fsdp2": distributed_train.run_fsdp2(GLOBAL_BATCH, rank=0, world_size=1)}
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("engine", ENGINES)
def test_both_ranks_end_with_identical_weights(ranks_of, engine):
    first, second = ranks_of(engine)
    assert first["state"].keys() == second["state"].keys()
    for name, tensor in first["state"].items():
        assert torch.equal(tensor, second["state"][name]), name


@pytest.mark.parametrize("engine", ENGINES)
def test_two_ranks_match_one_process_with_the_same_global_batch(ranks_of, one_process, engine):
    distributed = ranks_of(engine)[0]
    single = one_process["fsdp2" if engine == "fsdp2" else "trainer"]  # DeepSpeed: the same Trainer settings
    assert len(distributed["losses"]) == distributed_train.STEPS
    assert distributed["losses"][-1] < distributed["losses"][0] - 0.2, "the steps really train"
    torch.testing.assert_close(torch.tensor(distributed["losses"]), torch.tensor(single["losses"]),
                               rtol=1e-5, atol=1e-5)
    assert distributed["state"].keys() == single["state"].keys()
    for name, tensor in single["state"].items():
        torch.testing.assert_close(distributed["state"][name], tensor, rtol=1e-4, atol=1e-4, msg=name)
    initial = distributed_train.tiny_model().state_dict()
    assert not torch.allclose(distributed["state"]["model.embeddings.weight"], initial["model.embeddings.weight"])


def test_each_engine_wraps_the_model_as_expected(ranks_of, one_process):
    assert ranks_of("trainer")[0]["wrapper"] == "DistributedDataParallel"
    assert one_process["trainer"]["wrapper"] == "HierMambaForCausalLM"
    fsdp2 = ranks_of("fsdp2")
    assert fsdp2[0]["wrapper"].startswith("FSDP")  # fully_shard swaps in an FSDP subclass
    assert all(fsdp2[0]["checkpointed"]) and len(fsdp2[0]["checkpointed"]) == 3
    full, local = one_process["fsdp2"]["local_elements"], [rank["local_elements"] for rank in fsdp2]
    assert sum(local) == full and max(local) < full, (local, full)  # each rank holds its half of every tensor


def test_deepspeed_runs_the_deepspeed_engine(ranks_of):
    assert ranks_of("deepspeed")[0]["wrapper"] == "DeepSpeedEngine"
