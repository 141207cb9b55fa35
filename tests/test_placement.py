"""Placement: RLinf's syntax resolved to a rank map, as a pure function."""

import time

import pytest

from rlinf.config import ConfigError, load_config
from rlinf.config.cluster import ClusterConfig, HardwareConfig, NodeEnvConfig, NodeGroupConfig
from rlinf.dist.placement import resolve


def cluster(placement, **kw):
    kw.setdefault("accelerator_type", "cuda")
    kw.setdefault("accelerators_per_node", 8)
    return ClusterConfig(component_placement=placement, **kw)


def test_hetero_18node_example_maps_as_documented():
    plan = resolve(load_config("examples/hetero_18node.yaml").cluster)
    assert plan.world_size == 530
    actor = [plan.ranks[r] for r in plan.roles["actor"]]
    assert [(r.node, r.device) for r in actor] == [
        (n, f"cuda:{g}") for n in range(8) for g in range(8)
    ]
    assert {r.node_group for r in actor} == {"a800"}
    assert actor[0].env_vars == {"GLOO_SOCKET_IFNAME": "eth0"}
    assert actor[0].python_interpreter_path == "/opt/venv/openpi/bin/python3"
    rollout = [plan.ranks[r] for r in plan.roles["rollout"]]
    assert [(r.node, r.device) for r in rollout] == [
        (n, f"cuda:{g}") for n in range(8, 16) for g in range(8)
    ]
    assert rollout[0].env_vars == {"GLOO_SOCKET_IFNAME": "eth1"}
    env = [plan.ranks[r] for r in plan.roles["env"]]
    assert [(r.node, r.device, r.hardware["robot_ip"]) for r in env] == [
        (16, "cpu", "10.10.10.1"),
        (17, "cpu", "10.10.10.2"),
    ]
    assert env[0].hardware["type"] == "Franka" and env[0].hardware["node_rank"] == 16
    agent = [plan.ranks[r] for r in plan.roles["agent"]]
    assert len(agent) == 400
    assert [sum(1 for r in agent if r.node == n) for n in range(4)] == [100] * 4
    assert all(r.device == "cpu" and r.roles == ["agent"] for r in agent)
    assert [r.role_ranks["agent"] for r in agent if r.node == 2][:2] == [200, 201]
    # ranks are contiguous per node, so launchers that fill nodes in order realise the plan
    assert [r.node for r in plan.ranks] == sorted(r.node for r in plan.ranks)
    assert plan.procs_per_node == [108] * 4 + [8] * 12 + [1, 1]


def test_short_form_colocated_roles_share_processes():
    plan = resolve(cluster({"actor,rollout": "0-3", "env": "4-7"}, accelerators_per_node=8))
    assert plan.world_size == 8
    assert plan.ranks[0].roles == ["actor", "rollout"]
    assert plan.roles["actor"] == plan.roles["rollout"] == [0, 1, 2, 3]
    assert plan.roles["env"] == [4, 5, 6, 7]


def test_all_and_hybrid_placement():
    plan = resolve(cluster({"actor": "all", "env": "0-3", "rollout": "4-7"}))
    assert plan.world_size == 8
    assert plan.ranks[0].roles == ["actor", "env"]
    assert plan.ranks[5].roles == ["actor", "rollout"]
    assert plan.ranks[5].role_ranks == {"actor": 5, "rollout": 1}


def test_comma_lists_and_cross_node_global_gpu_ranks():
    plan = resolve(cluster({"actor": "0-1,8-9"}, num_nodes=2))
    assert [(r.node, r.device) for r in plan.ranks] == [
        (0, "cuda:0"),
        (0, "cuda:1"),
        (1, "cuda:0"),
        (1, "cuda:1"),
    ]


def test_several_processes_per_gpu_and_several_gpus_per_process():
    plan = resolve(cluster({"actor": "0-3:0-7"}, accelerators_per_node=4))
    assert plan.world_size == 8
    assert [r.device for r in plan.ranks] == [f"cuda:{i // 2}" for i in range(8)]
    plan = resolve(cluster({"actor": "0-7:0-3"}))
    assert plan.world_size == 4
    assert [r.accelerators for r in plan.ranks] == [[0, 1], [2, 3], [4, 5], [6, 7]]


def test_cpu_slots_place_disaggregated_roles_on_one_node():
    plan = resolve(
        ClusterConfig(
            accelerator_type="cpu",
            accelerators_per_node=3,
            component_placement={"env": 0, "rollout": 1, "actor": 2},
        )
    )
    assert [r.roles for r in plan.ranks] == [["env"], ["rollout"], ["actor"]]
    assert {r.device for r in plan.ranks} == {"cpu"}


def test_cpu_without_slots_treats_the_node_as_the_resource():
    plan = resolve(
        ClusterConfig(accelerator_type="cpu", num_nodes=2, component_placement={"actor": "all"})
    )
    assert [(r.node, r.device) for r in plan.ranks] == [(0, "cpu"), (1, "cpu")]


def test_node_label_places_processes_by_node():
    plan = resolve(
        cluster({"agent": {"node_group": "node", "placement": "0:0-2,1:3-5"}}, num_nodes=2)
    )
    assert plan.procs_per_node == [3, 3]
    assert [r.role_ranks["agent"] for r in plan.ranks] == list(range(6))


def test_group_accelerators_override_and_hardware_ranks():
    c = cluster(
        {
            "actor": {"node_group": "big", "placement": "all"},
            "env": {"node_group": "robots", "placement": "0-2"},
        },
        num_nodes=3,
        accelerators_per_node=2,
        node_groups=[
            NodeGroupConfig(label="big", node_ranks="0-1", accelerators_per_node=4),
            NodeGroupConfig(
                label="robots",
                node_ranks=2,
                hardware=HardwareConfig(
                    type="Franka",
                    configs=[{"node_rank": 2, "robot_ip": f"10.0.0.{i}"} for i in range(3)],
                ),
            ),
        ],
    )
    plan = resolve(c)
    assert plan.role_size("actor") == 8
    env = [plan.ranks[r] for r in plan.roles["env"]]
    assert [e.hardware["robot_ip"] for e in env] == ["10.0.0.0", "10.0.0.1", "10.0.0.2"]
    assert {e.node for e in env} == {2}


def test_32_nodes_x_8_gpus_and_1024_ranks_resolve_fast():
    t = time.perf_counter()
    plan = resolve(cluster({"actor,rollout": "all"}, num_nodes=32))
    assert (
        plan.world_size == 256 and plan.ranks[-1].device == "cuda:7" and plan.ranks[-1].node == 31
    )
    plan = resolve(cluster({"actor": "0-511", "rollout": "512-1023"}, num_nodes=128))
    assert plan.world_size == 1024
    assert time.perf_counter() - t < 1.0


BAD = [
    (
        {"actor": {"node_group": "a800", "placement": "0-9"}},
        "cluster.component_placement.actor.placement: rank 8 is outside node group 'a800' (GPU ranks 0-7)",
    ),
    ({"actr": "all"}, "unknown role 'actr'; did you mean 'actor'?"),
    ({"actor": "0-2", "actor,rollout": "3"}, "role 'actor' is placed twice"),
    ({"actor": "0-2:0-1"}, "3 GPUs cannot be divided evenly among 2 processes"),
    ({"actor": "0-1:0,1-2:2"}, "GPU 1 is placed twice for this role"),
    ({"actor": "0:0,1:2"}, "process ranks must be 0-2 without gaps; missing 1"),
    ({"actor": {"node_group": "nope", "placement": 0}}, "'nope' is not a node group"),
    ({"actor": "3-1"}, "range '3-1' is empty"),
    ({"actor": "x"}, "'x' is not a GPU range"),
    ({"actor": {"node_group": "a800"}}, "placement: is required"),
]


@pytest.mark.parametrize(("placement", "message"), BAD)
def test_wrong_placements_name_key_and_fix(placement, message):
    c = cluster(placement, node_groups=[NodeGroupConfig(label="a800", node_ranks=0)])
    with pytest.raises(ConfigError) as e:
        resolve(c)
    assert message in str(e.value), str(e.value)


def test_wrong_node_groups_all_reported():
    c = cluster(
        {"actor": "all"},
        num_nodes=2,
        node_groups=[
            NodeGroupConfig(label="node", node_ranks=0),
            NodeGroupConfig(label="g", node_ranks="0-5"),
            NodeGroupConfig(
                label="h",
                node_ranks=0,
                env_configs=[
                    NodeEnvConfig(node_ranks=1),
                    NodeEnvConfig(node_ranks=0, env_vars=[{"A": "1"}, {"A": "2"}]),
                ],
            ),
            NodeGroupConfig(
                label="h",
                node_ranks=1,
                env_configs=[NodeEnvConfig(node_ranks=1), NodeEnvConfig(node_ranks=1)],
            ),
            NodeGroupConfig(
                label="r",
                node_ranks=1,
                hardware=HardwareConfig(type="Franka", configs=[{"node_rank": 0}]),
            ),
        ],
    )
    with pytest.raises(ConfigError) as e:
        resolve(c)
    msg = str(e.value)
    for expected in [
        "cluster.node_groups[0].label: 'node' is reserved",
        "cluster.node_groups[1].node_ranks: node rank 2 is out of range (valid: 0-1)",
        "cluster.node_groups[2].env_configs[0].node_ranks: node 1 is not in group 'h'",
        "cluster.node_groups[2].env_configs[1].env_vars[1]: 'A' is set twice",
        "cluster.node_groups[3].label: label 'h' is used by two node groups",
        "cluster.node_groups[3].env_configs[1].node_ranks: node 1 is already configured by env_configs[0]",
        "cluster.node_groups[4].hardware.configs[0].node_rank: 0 is not a node of group 'r'",
    ]:
        assert expected in msg, f"{expected!r} not in {msg}"


def test_cuda_without_gpus_asks_for_accelerators_per_node():
    with pytest.raises(
        ConfigError, match="cluster.accelerators_per_node: accelerator_type is cuda but no GPU"
    ):
        resolve(
            ClusterConfig(accelerator_type="cuda", component_placement={"actor": "all"}),
            detected_accelerators=0,
        )


def test_auto_uses_detected_gpus():
    plan = resolve(ClusterConfig(component_placement={"actor": "all"}), detected_accelerators=2)
    assert [r.device for r in plan.ranks] == ["cuda:0", "cuda:1"]
    plan = resolve(ClusterConfig(component_placement={"actor": "all"}), detected_accelerators=0)
    assert [r.device for r in plan.ranks] == ["cpu"]
