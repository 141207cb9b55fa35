"""World discovery from each launcher's environment, including the traps seen on real Slurm."""

from rlinf.dist.world import discover, expand_hostlist, slurm_port


def test_no_launcher_is_a_world_of_one():
    w = discover({})
    assert (w.rank, w.world_size, w.launcher) == (0, 1, "single")


def test_torchrun():
    w = discover(
        {
            "TORCHELASTIC_RUN_ID": "x",
            "RANK": "5",
            "WORLD_SIZE": "8",
            "LOCAL_RANK": "1",
            "LOCAL_WORLD_SIZE": "4",
            "GROUP_RANK": "1",
            "MASTER_ADDR": "h0",
            "MASTER_PORT": "29500",
            "SLURM_PROCID": "1",
            "SLURM_STEP_ID": "0",
        }
    )
    assert (w.rank, w.world_size, w.local_rank, w.node_rank, w.launcher) == (5, 8, 1, 1, "torchrun")
    assert (w.master_addr, w.master_port) == ("h0", 29500)


def test_slurm_step():
    env = {
        "SLURM_PROCID": "3",
        "SLURM_NTASKS": "4",
        "SLURM_LOCALID": "1",
        "SLURM_NODEID": "1",
        "SLURM_STEP_ID": "0",
        "SLURM_JOB_ID": "77",
        "SLURM_STEP_NODELIST": "n[1-2]",
        "SLURM_STEP_TASKS_PER_NODE": "2(x2)",
    }
    w = discover(env)
    assert (w.rank, w.world_size, w.local_rank, w.local_world_size, w.node_rank) == (3, 4, 1, 2, 1)
    assert w.master_addr == "n1" and w.launcher == "slurm"
    assert w.master_port == slurm_port("77", "0") == discover(env).master_port
    assert 20000 <= w.master_port < 60000
    assert slurm_port("77", "1") != slurm_port("77", "0")


def test_slurm_batch_script_is_not_a_world():
    # Inside the batch script SLURM_PROCID is 0 but there is no step.
    w = discover(
        {
            "SLURM_PROCID": "0",
            "SLURM_NTASKS": "4",
            "SLURM_JOB_ID": "9",
            "SLURM_JOB_NODELIST": "n[1-2]",
        }
    )
    assert w.launcher == "single" and w.world_size == 1


def test_mpirun_inside_an_allocation_uses_mpi_ranks():
    env = {
        "SLURM_PROCID": "0",
        "SLURM_STEP_ID": "4294967290",
        "SLURM_NTASKS": "1",
        "OMPI_COMM_WORLD_RANK": "2",
        "OMPI_COMM_WORLD_SIZE": "4",
        "OMPI_COMM_WORLD_LOCAL_RANK": "2",
        "OMPI_COMM_WORLD_LOCAL_SIZE": "4",
    }
    w = discover(env)
    assert (w.rank, w.world_size, w.local_rank, w.launcher) == (2, 4, 2, "mpi")
    assert w.node_rank is None  # derived from host names after start-up


def test_mpich_and_pmix():
    w = discover({"PMI_RANK": "1", "PMI_SIZE": "3", "MPI_LOCALRANKID": "1", "MPI_LOCALNRANKS": "3"})
    assert (w.rank, w.world_size, w.local_rank, w.launcher) == (1, 3, 1, "mpi")
    w = discover({"PMIX_RANK": "2", "SLURM_NTASKS": "4", "SLURM_PROCID": "2", "SLURM_STEP_ID": "0"})
    assert (w.rank, w.world_size, w.launcher) == (2, 4, "mpi")


def test_plain_env():
    w = discover({"RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "a", "MASTER_PORT": "1234"})
    assert (w.rank, w.world_size, w.master_port, w.launcher) == (1, 2, 1234, "env")


def test_hostlist_expansion():
    assert expand_hostlist("n[1-3,7]") == ["n1", "n2", "n3", "n7"]
    assert expand_hostlist("gpu-[01-02],login") == ["gpu-01", "gpu-02", "login"]
    assert expand_hostlist("a1,b[2-3]") == ["a1", "b2", "b3"]
    assert expand_hostlist("single") == ["single"]
