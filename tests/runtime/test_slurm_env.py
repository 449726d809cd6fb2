"""SLURM's task variables mapped to torchrun's, for ranks that srun starts itself (the submitit launcher
with tasks_per_node = GPUs). Only the mapping is tested: no process group is initialised."""

import pytest

from lrm_fast.runtime.distributed import first_host, slurm_rank_env

# Rank 11 of 16: two nodes of 8 tasks, its third task on the second node (what srun sets for it).
SRUN_TASK = {
    "SLURM_JOB_ID": "4242",
    "SLURM_PROCID": "11",
    "SLURM_LOCALID": "3",
    "SLURM_STEP_NUM_TASKS": "16",
    "SLURM_NTASKS": "16",
    "SLURM_STEP_NODELIST": "gpu[07-08]",
    "SLURM_JOB_NODELIST": "gpu[07-08]",
}


def test_srun_task_gets_torchrun_variables():
    assert slurm_rank_env(SRUN_TASK) == {
        "RANK": "11",
        "WORLD_SIZE": "16",
        "LOCAL_RANK": "3",
        "MASTER_ADDR": "gpu07",  # task 0 runs on the step's first node
        "MASTER_PORT": str(15000 + 4242),
    }


def test_variables_already_set_are_kept():
    env = slurm_rank_env({**SRUN_TASK, "MASTER_ADDR": "gpu07-ib", "MASTER_PORT": "29500"})
    assert set(env) == {"RANK", "WORLD_SIZE", "LOCAL_RANK"}


@pytest.mark.parametrize(
    "environ",
    [
        pytest.param({**SRUN_TASK, "RANK": "0", "WORLD_SIZE": "2"}, id="torchrun-inside-srun"),
        pytest.param({**SRUN_TASK, "SLURM_STEP_NUM_TASKS": "1"}, id="one-task-step"),
        # A batch script or salloc shell: job-wide task count, but no step, so no peers were started.
        pytest.param(
            {k: v for k, v in SRUN_TASK.items() if not k.startswith("SLURM_STEP_")}, id="outside-a-step"
        ),
        pytest.param({}, id="no-slurm"),
    ],
)
def test_nothing_to_map(environ):
    assert slurm_rank_env(environ) == {}


def test_job_nodelist_when_the_step_has_none():
    environ = {k: v for k, v in SRUN_TASK.items() if k != "SLURM_STEP_NODELIST"}
    assert slurm_rank_env(environ)["MASTER_ADDR"] == "gpu07"


@pytest.mark.parametrize(
    ("nodelist", "host"),
    [
        ("node01", "node01"),
        ("n1,n2", "n1"),
        ("gpu[07-09,12],cpu3", "gpu07"),  # leading zeros kept
        ("rack-1-node[003-004]", "rack-1-node003"),  # hyphens outside brackets are part of the name
        ("r[1-2]n[05-06]", "r1n05"),  # several brackets
    ],
)
def test_first_host(nodelist, host):
    assert first_host(nodelist) == host
