"""mpirun launches: plain SPMD through launch/mpirun.sh, and MPMD with two node groups."""

from __future__ import annotations

import pytest
from launchers import require, run
from slurm_jobs import assert_two_groups_ran, two_group_config

pytestmark = pytest.mark.mpi


def test_mpirun_sh_sizes_the_world_from_the_placement():
    require("mpirun")
    p = run(["bash", "launch/mpirun.sh", "--config", "check_4rank.yaml"], timeout=180)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "[mpirun.sh] mpirun -n 4 --map-by ppr:4:node --bind-to none" in p.stderr
    assert "check passed: 4 ranks" in p.stderr


def test_mpmd_two_node_groups_start_under_their_own_interpreters_and_env(tmp_path):
    """One mpirun, two app contexts: node 0's ranks under venv a, node 1's under venv b."""
    require("mpirun")
    cfg, py_a, py_b = two_group_config(tmp_path)
    p = run(
        ["python", "launch/hetero.py", "--launcher", "mpirun", "--config", str(cfg),
         "--launcher-args", "--oversubscribe --bind-to none"],
        timeout=180,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr[-4000:]
    assert "-x RLINF_NODE_RANK=0" in p.stderr and " : -n 2 -x RLINF_NODE_RANK=1" in p.stderr
    assert_two_groups_ran(p.stderr, py_a, py_b)
    assert "re-executing under" not in p.stderr


def test_mpirun_sh_hands_heterogeneous_placements_to_the_mpmd_launcher(tmp_path):
    require("mpirun")
    cfg, py_a, py_b = two_group_config(tmp_path)
    p = run(["bash", "launch/mpirun.sh", "--dry-run", "--config", str(cfg)], timeout=120)
    assert p.returncode == 0, p.stderr
    assert "starting one MPMD context per node" in p.stderr
    assert f"-x 'RLINF_GROUP_MARK=train side' {py_a} -m rlinf.launch" in p.stdout
    assert f"-x RLINF_GROUP_MARK=sim {py_b} -m rlinf.launch" in p.stdout
    assert "mpirun --bind-to none --oversubscribe -n 2" in p.stdout
