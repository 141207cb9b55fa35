"""Heterogeneous launch: per-node-group interpreters and env vars through srun --multi-prog."""

from __future__ import annotations

import re
import shlex

import pytest
from slurm_jobs import assert_two_groups_ran, require_slurm, submit, two_group_config, wait

from rlinf.config.cluster import ClusterConfig, NodeEnvConfig, NodeGroupConfig
from rlinf.dist import hetero
from rlinf.dist.placement import resolve


def _cluster(env_b: dict | None = None, placement: dict | None = None) -> ClusterConfig:
    return ClusterConfig(
        num_nodes=3,
        accelerator_type="cpu",
        accelerators_per_node=2,
        component_placement=placement or {"actor": "0-3", "env": "4-5"},
        node_groups=[
            NodeGroupConfig(
                label="gpu",
                node_ranks="0-1",
                env_configs=[
                    NodeEnvConfig(
                        python_interpreter_path="/opt/venv/a/bin/python",
                        env_vars=[{"NCCL_IB_HCA": "mlx5"}, {"NOTE": "two words"}],
                    )
                ],
            ),
            NodeGroupConfig(
                label="sim",
                node_ranks=2,
                env_configs=[NodeEnvConfig(env_vars=env_b or {"MUJOCO_GL": "egl"})],
            ),
        ],
    )


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if not line.startswith("#")]


def test_multi_prog_file_starts_each_group_under_its_interpreter_and_env():
    plan = resolve(_cluster())
    text = hetero.multi_prog_text(plan, "x.yaml", ["runner.seed=3"], python="/usr/bin/python3")
    assert _lines(text) == [
        "0-3 /usr/bin/env NCCL_IB_HCA=mlx5 'NOTE=two words' RLINF_REEXECUTED=1 "
        "/opt/venv/a/bin/python -m rlinf.launch --config x.yaml runner.seed=3",
        "4-5 /usr/bin/env MUJOCO_GL=egl RLINF_REEXECUTED=1 "
        "/usr/bin/python3 -m rlinf.launch --config x.yaml runner.seed=3",
    ]
    assert hetero.srun_argv(plan, "/tmp/mp.conf") == [
        "srun", "--nodes=3", "--ntasks-per-node=2", "--kill-on-bad-exit=1",
        "--multi-prog", "/tmp/mp.conf",
    ]  # fmt: skip


def test_uneven_nodes_get_an_arbitrary_distribution_and_a_hostfile():
    plan = resolve(
        _cluster(placement={"actor": "0-3", "env": {"node_group": "node", "placement": "2:0-2"}})
    )
    assert plan.procs_per_node == [2, 2, 3]
    argv = hetero.srun_argv(plan, "mp.conf", ["--mpi=pmix"])
    assert argv[1:5] == [
        "--nodes=3",
        "--ntasks=7",
        "--distribution=arbitrary",
        "--kill-on-bad-exit=1",
    ]
    assert "--mpi=pmix" in argv
    assert hetero.slurm_hostfile(plan, list("abc")).split() == list("aabbccc")
    with pytest.raises(ValueError, match="2 host\\(s\\) given for cluster.num_nodes=3"):
        hetero.slurm_hostfile(plan, ["a", "b"])


def test_mpirun_mpmd_has_one_context_per_node_with_its_node_rank():
    plan = resolve(_cluster())
    argv = hetero.mpirun_argv(plan, "x.yaml", [], "python", hosts=["h0", "h1", "h2"])
    contexts = " ".join(argv[1:]).split(" : ")
    assert len(contexts) == 3
    for node, ctx in enumerate(contexts):
        assert ctx.startswith(
            f"-n 2 --host h{node}:2 -x RLINF_NODE_RANK={node} -x RLINF_REEXECUTED=1"
        )
    assert "-x NOTE=two words /opt/venv/a/bin/python -m rlinf.launch" in contexts[1]
    assert contexts[2].endswith("-x MUJOCO_GL=egl python -m rlinf.launch --config x.yaml")
    # a copy-pasteable line that the shell splits back into the same argv
    assert shlex.split(hetero.render_argv(argv).replace("\\\n", " ")) == argv


def test_what_multi_prog_cannot_carry_is_refused_with_the_way_out():
    plan = resolve(_cluster(env_b={"QUOTE": "it's"}))
    with pytest.raises(ValueError, match="single quote.*--launcher mpirun"):
        hetero.multi_prog_text(plan, "x.yaml")
    hetero.mpirun_argv(plan, "x.yaml")  # fine there: argv, no quoting
    idle = resolve(_cluster(placement={"actor": "0-3"}))
    with pytest.raises(ValueError, match=r"nodes \[2\] run no process"):
        hetero.multi_prog_text(idle, "x.yaml")
    contexts = " ".join(hetero.mpirun_argv(idle, "x.yaml")).split(" : ")
    assert len(contexts) == 2  # mpirun numbers nodes itself: the idle node is simply left out


def test_hetero_plan_prints_the_files_and_the_command(tmp_path):
    from launchers import run

    cfg, py_a, py_b = two_group_config(tmp_path)
    p = run(["python", "launch/hetero.py", "--launcher", "srun", "--plan", "--config", str(cfg)])
    assert p.returncode == 0, p.stderr
    assert re.search(
        rf"0-1 /usr/bin/env 'RLINF_GROUP_MARK=train side' RLINF_REEXECUTED=1 {py_a} ", p.stdout
    )
    assert re.search(rf"2-3 /usr/bin/env RLINF_GROUP_MARK=sim RLINF_REEXECUTED=1 {py_b} ", p.stdout)
    assert "[srun] srun --nodes=2 --ntasks-per-node=2" in p.stdout
    assert not (tmp_path / "run" / "launch").exists()  # --plan writes nothing


@pytest.mark.slurm
def test_hetero_sbatch_job_runs_two_groups_under_two_venvs(tmp_path):
    require_slurm()
    cfg, py_a, py_b = two_group_config(tmp_path)
    log = tmp_path / "slurm.out"
    job = submit(
        ["--nodes=2", "--ntasks-per-node=2", "--exclusive", f"--output={log}",
         "slurm/train_embodied_hetero.sh"],
        {"CONFIG": str(cfg)},
    )  # fmt: skip
    info = wait(job, timeout=180)
    text = log.read_text()
    assert info["JobState"] == "COMPLETED", text[-4000:]
    assert "--multi-prog" in text
    assert_two_groups_ran(text, py_a, py_b)
    assert "re-executing under" not in text  # started under the right interpreter directly
    mp = (tmp_path / "run" / "launch" / "multi_prog.conf").read_text()
    assert str(py_a) in mp and str(py_b) in mp
