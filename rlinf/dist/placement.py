"""Placement: resolve `cluster.component_placement` and `cluster.node_groups` to a rank map.

Pure: no processes, no GPUs, no torch. A placement names *resources* inside a node group
(its hardware such as robots if declared, else its accelerators or CPU slots, or the nodes
themselves for the reserved label `node`) and, optionally, the role-local process ranks that
run on them (`resources:processes`). Processes of different roles that sit on exactly the same
resources with the same sub-index are one process holding several roles (colocated). Global
ranks are numbered node by node, so every launcher that fills nodes in order realises the plan.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from rlinf.config.cluster import ClusterConfig, NodeGroupConfig
from rlinf.config.errors import ConfigError, Issues
from rlinf.dist.ranges import RangeError, describe, parse_range

RESERVED_LABELS = ("cluster", "node")
KNOWN_ROLES = ("actor", "rollout", "env", "reward", "agent", "inference", "critic", "reference")
_KIND_ORDER = {"slot": 0, "hardware": 1, "node": 2}


@dataclass(frozen=True)
class Resource:
    """One placeable unit: a GPU/CPU slot, a hardware device, or a whole node."""

    kind: str  # "slot" | "hardware" | "node"
    node: int
    index: int  # slot: local index on the node; hardware: rank inside its group; node: 0
    group: str  # node group label through which it was placed


@dataclass
class RankInfo:
    """What one global rank is: where it runs and which roles it holds."""

    rank: int
    node: int
    local_rank: int
    device: str  # "cuda:3" or "cpu"
    node_group: str
    roles: list[str]
    role_ranks: dict[str, int]  # role -> this process's rank inside the role
    hardware: dict[str, Any] | None = None
    env_vars: dict[str, str] = field(default_factory=dict)
    python_interpreter_path: str | None = None
    accelerators: list[int] = field(default_factory=list)  # local GPU indices it owns


@dataclass
class PlacementPlan:
    """The resolved rank map of a whole run."""

    world_size: int
    num_nodes: int
    accelerator_type: str  # "cuda" | "cpu"
    ranks: list[RankInfo]
    roles: dict[str, list[int]]  # role -> global ranks, in role-rank order

    @property
    def procs_per_node(self) -> list[int]:
        counts = [0] * self.num_nodes
        for r in self.ranks:
            counts[r.node] += 1
        return counts

    def role_size(self, role: str) -> int:
        return len(self.roles.get(role, []))

    def to_json(self) -> dict[str, Any]:
        keep = (
            "rank",
            "node",
            "local_rank",
            "device",
            "node_group",
            "roles",
            "hardware",
            "env_vars",
        )
        return {
            "world_size": self.world_size,
            "num_nodes": self.num_nodes,
            "accelerator_type": self.accelerator_type,
            "roles": self.roles,
            "ranks": [{k: v for k, v in asdict(r).items() if k in keep} for r in self.ranks],
        }

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=1)


class _Group:
    """Resources of one node group, in hardware-rank order."""

    def __init__(self, label: str, resources: list[Resource], what: str):
        self.label = label
        self.resources = resources
        self.what = what  # "GPU", "CPU slot", "node", "Franka" ... for messages
        self.hardware: list[dict[str, Any]] | None = None


def _node_slots(cluster: ClusterConfig, group: NodeGroupConfig | None, default: int) -> int:
    if group is not None and group.accelerators_per_node is not None:
        return group.accelerators_per_node
    return default


def _build_groups(
    cluster: ClusterConfig, accel_type: str, slots_per_node: list[int], issues: Issues
) -> dict[str, _Group]:
    slot_word = "GPU" if accel_type == "cuda" else "CPU slot"
    groups: dict[str, _Group] = {}
    all_nodes = range(cluster.num_nodes)
    groups["cluster"] = _Group(
        "cluster",
        [Resource("slot", n, i, "cluster") for n in all_nodes for i in range(slots_per_node[n])],
        slot_word,
    )
    groups["node"] = _Group("node", [Resource("node", n, 0, "node") for n in all_nodes], "node")
    for gi, g in enumerate(cluster.node_groups):
        path = f"cluster.node_groups[{gi}]"
        try:
            nodes = parse_range(g.node_ranks, cluster.num_nodes, "node rank")
        except RangeError as e:
            issues.add(f"{path}.node_ranks", f"{e} (cluster.num_nodes is {cluster.num_nodes})")
            continue
        if g.hardware is not None:
            res, entries = [], []
            for hi, hw in enumerate(g.hardware.configs):
                node = hw.get("node_rank")
                if not isinstance(node, int) or node not in nodes:
                    issues.add(
                        f"{path}.hardware.configs[{hi}].node_rank",
                        f"{node!r} is not a node of group '{g.label}' (node_ranks {describe(nodes)})",
                    )
                    continue
                res.append(Resource("hardware", node, hi, g.label))
                entries.append({"type": g.hardware.type, **hw})
            grp = _Group(g.label, res, g.hardware.type)
            grp.hardware = entries
        else:
            res = [
                Resource("slot", n, i, g.label)
                for n in nodes
                for i in range(_node_slots(cluster, g, slots_per_node[n]))
            ]
            grp = _Group(g.label, res, slot_word)
        groups[g.label] = grp
    return groups


def _validate_node_groups(cluster: ClusterConfig, issues: Issues) -> None:
    if cluster.num_nodes < 1:
        issues.add("cluster.num_nodes", f"must be at least 1, got {cluster.num_nodes}")
    seen: set[str] = set()
    for gi, g in enumerate(cluster.node_groups):
        path = f"cluster.node_groups[{gi}]"
        if g.label in RESERVED_LABELS:
            issues.add(f"{path}.label", f"'{g.label}' is reserved; choose another label")
        if g.label in seen:
            issues.add(f"{path}.label", f"label '{g.label}' is used by two node groups")
        seen.add(g.label)
        if g.accelerators_per_node is not None and g.accelerators_per_node < 0:
            issues.add(f"{path}.accelerators_per_node", "must be 0 or more")
        try:
            nodes = parse_range(g.node_ranks, max(cluster.num_nodes, 0), "node rank")
        except RangeError:
            continue  # reported while building groups
        covered: dict[int, int] = {}
        for ei, ec in enumerate(g.env_configs):
            epath = f"{path}.env_configs[{ei}]"
            try:
                enodes = parse_range(ec.node_ranks, cluster.num_nodes, "node rank")
            except RangeError as e:
                issues.add(f"{epath}.node_ranks", str(e))
                continue
            if ec.node_ranks == "all":
                enodes = nodes
            outside = [n for n in enodes if n not in nodes]
            if outside:
                issues.add(
                    f"{epath}.node_ranks",
                    f"node {outside[0]} is not in group '{g.label}' (node_ranks {describe(nodes)})",
                )
            for n in enodes:
                if n in covered:
                    issues.add(
                        f"{epath}.node_ranks",
                        f"node {n} is already configured by env_configs[{covered[n]}]; "
                        "env_configs of one group must not overlap",
                    )
                    break
                covered[n] = ei
            keys: set[str] = set()
            for vi, kv in enumerate(_env_items(ec.env_vars)):
                if kv[0] in keys:
                    issues.add(f"{epath}.env_vars[{vi}]", f"'{kv[0]}' is set twice for these nodes")
                keys.add(kv[0])


def _env_items(env_vars: list[dict[str, str]] | dict[str, str]) -> list[tuple[str, str]]:
    if isinstance(env_vars, dict):
        return [(k, str(v)) for k, v in env_vars.items()]
    return [(k, str(v)) for d in env_vars for k, v in d.items()]


def _split_parts(spec: Any) -> list[tuple[Any, Any]]:
    """`0-1:0-199,2-3:200-399` -> [("0-1","0-199"), ("2-3","200-399")]; `0-3,5` -> two parts."""
    if isinstance(spec, (int, list)):
        return [(spec, None)]
    text = str(spec).strip()
    if ":" not in text:
        return [(text, None)]
    out = []
    for part in text.split(","):
        res, _, proc = part.partition(":")
        out.append((res.strip(), proc.strip() or None))
    return out


def _role_processes(
    roles_key: str, value: Any, groups: dict[str, _Group], issues: Issues
) -> tuple[str, list[tuple[tuple[Resource, ...], int]]] | None:
    """Resolve one placement entry to (group label, [(resources, sub-index)] in role-rank order)."""
    path = f"cluster.component_placement.{roles_key}"
    label, spec = "cluster", value
    if isinstance(value, dict):
        unknown = set(value) - {"node_group", "placement"}
        if unknown:
            issues.add(f"{path}.{sorted(unknown)[0]}", "unknown key; use node_group and placement")
            return None
        label = str(value.get("node_group", "cluster"))
        spec = value.get("placement")
        if spec is None:
            issues.add(f"{path}.placement", "is required, e.g. placement: 0-7")
            return None
        path = f"{path}.placement"
    if label not in groups:
        options = ", ".join(sorted(groups))
        issues.add(
            f"{path.rsplit('.placement', 1)[0]}.node_group",
            f"'{label}' is not a node group ({options})",
        )
        return None
    grp = groups[label]
    n_res = len(grp.resources)
    procs: dict[int, tuple[tuple[Resource, ...], int]] = {}
    next_proc = 0
    used_res: set[int] = set()
    for res_spec, proc_spec in _split_parts(spec):
        try:
            res_ids = parse_range(res_spec, n_res, grp.what if label != "node" else "node")
        except RangeError as e:
            have = f"{grp.what} ranks 0-{n_res - 1}" if n_res else f"no {grp.what}s"
            if e.out_of_range is not None:
                where = f"node group '{label}'" if label != "cluster" else "the cluster"
                issues.add(path, f"rank {e.out_of_range} is outside {where} ({have})")
            else:
                issues.add(path, f"{e} ({have})")
            return None
        reused = sorted(set(res_ids) & used_res)
        if reused:
            issues.add(path, f"{grp.what} {reused[0]} is placed twice for this role")
            return None
        used_res.update(res_ids)
        if proc_spec is None:
            proc_ids = list(range(next_proc, next_proc + len(res_ids)))
        else:
            try:
                proc_ids = parse_range(proc_spec, 1 << 30, "process rank")
            except RangeError as e:
                issues.add(path, str(e))
                return None
        next_proc = max(next_proc, max(proc_ids) + 1)
        nr, np_ = len(res_ids), len(proc_ids)
        if np_ >= nr:
            if np_ % nr:
                issues.add(path, f"{np_} processes cannot be spread evenly over {nr} {grp.what}s")
                return None
            per = np_ // nr
            assign = [((grp.resources[res_ids[j // per]],), j % per) for j in range(np_)]
        else:
            if nr % np_:
                issues.add(path, f"{nr} {grp.what}s cannot be divided evenly among {np_} processes")
                return None
            per = nr // np_
            assign = [
                (tuple(grp.resources[i] for i in res_ids[j * per : (j + 1) * per]), 0)
                for j in range(np_)
            ]
        for p, a in zip(proc_ids, assign, strict=True):
            if p in procs:
                issues.add(path, f"process rank {p} is placed twice")
                return None
            procs[p] = a
    expected = list(range(len(procs)))
    if sorted(procs) != expected:
        missing = sorted(set(range(max(procs) + 1)) - set(procs))
        issues.add(
            path, f"process ranks must be 0-{max(procs)} without gaps; missing {describe(missing)}"
        )
        return None
    return label, [procs[p] for p in expected]


def resolve(cluster: ClusterConfig, detected_accelerators: int | None = None) -> PlacementPlan:
    """Resolve the cluster config to a PlacementPlan, or raise ConfigError listing every problem.

    ``detected_accelerators`` is the GPU count of the machine doing the planning (None: unknown);
    it fills in `accelerators_per_node` when the config leaves it out.
    """
    issues = Issues()
    plan = resolve_into(cluster, issues, detected_accelerators)
    if issues or plan is None:
        raise ConfigError(issues)
    return plan


def resolve_into(
    cluster: ClusterConfig, issues: Issues, detected_accelerators: int | None = None
) -> PlacementPlan | None:
    """Like `resolve`, but record problems in ``issues`` (for whole-config validation)."""
    before = len(issues)
    _validate_node_groups(cluster, issues)
    if cluster.num_nodes < 1:
        return None
    accel = cluster.accelerator_type
    if accel == "auto":
        accel = "cuda" if (cluster.accelerators_per_node or detected_accelerators) else "cpu"
        if cluster.accelerators_per_node and not detected_accelerators:
            accel = "cuda"
    if accel == "cuda":
        per = cluster.accelerators_per_node or detected_accelerators
        if not per:
            issues.add(
                "cluster.accelerators_per_node",
                "accelerator_type is cuda but no GPU was detected; set accelerators_per_node "
                "(GPUs per node) to plan for another machine, or use accelerator_type: cpu",
            )
            return None
    else:
        per = cluster.accelerators_per_node or 1
    slots = [per] * cluster.num_nodes
    for g in cluster.node_groups:
        if g.accelerators_per_node is None:
            continue
        try:
            for n in parse_range(g.node_ranks, cluster.num_nodes):
                slots[n] = g.accelerators_per_node
        except RangeError:
            pass
    groups = _build_groups(cluster, accel, slots, issues)

    # process identity -> (roles, role ranks, group label)
    procs: dict[tuple[tuple[Resource, ...], int], dict[str, Any]] = {}
    roles: dict[str, list[tuple[tuple[Resource, ...], int]]] = {}
    if not cluster.component_placement:
        issues.add(
            "cluster.component_placement", "is empty; place at least one role, e.g. actor: all"
        )
    for key, value in cluster.component_placement.items():
        names = [n.strip() for n in str(key).split(",") if n.strip()]
        bad = False
        for n in names:
            if n not in KNOWN_ROLES:
                from rlinf.config.typed import did_you_mean

                issues.add(
                    f"cluster.component_placement.{key}",
                    f"unknown role '{n}'{did_you_mean(n, KNOWN_ROLES)} (roles: {', '.join(KNOWN_ROLES)})",
                )
                bad = True
            elif n in roles:
                issues.add(f"cluster.component_placement.{key}", f"role '{n}' is placed twice")
                bad = True
        if bad:
            continue
        resolved = _role_processes(str(key), value, groups, issues)
        if resolved is None:
            continue
        label, plist = resolved
        for n in names:
            roles[n] = plist
            for rr, ident in enumerate(plist):
                entry = procs.setdefault(ident, {"roles": {}, "group": label})
                entry["roles"][n] = rr
    if len(issues) > before:
        return None

    env_by_node, interp_by_node = _node_envs(cluster, issues)
    hardware_of = {
        (g.label, i): e for g in groups.values() if g.hardware for i, e in enumerate(g.hardware)
    }

    def order(ident: tuple[tuple[Resource, ...], int]) -> tuple:
        first = ident[0][0]
        return (first.node, _KIND_ORDER[first.kind], first.index, ident[1])

    ranks: list[RankInfo] = []
    local_count: dict[int, int] = {}
    for ident in sorted(procs, key=order):
        res, _sub = ident
        first = res[0]
        entry = procs[ident]
        if first.kind == "slot" and accel == "cuda":
            device = f"cuda:{first.index}"
            accels = [r.index for r in res]
        else:
            device, accels = "cpu", []
        local = local_count.get(first.node, 0)
        local_count[first.node] = local + 1
        ranks.append(
            RankInfo(
                rank=len(ranks),
                node=first.node,
                local_rank=local,
                device=device,
                node_group=entry["group"],
                roles=sorted(entry["roles"], key=KNOWN_ROLES.index),
                role_ranks=dict(entry["roles"]),
                hardware=hardware_of.get((first.group, first.index))
                if first.kind == "hardware"
                else None,
                env_vars=dict(env_by_node.get(first.node, {})),
                python_interpreter_path=interp_by_node.get(first.node),
                accelerators=accels,
            )
        )
    rank_of = {ident: i for i, ident in enumerate(sorted(procs, key=order))}
    role_ranks = {role: [rank_of[ident] for ident in plist] for role, plist in roles.items()}
    if len(issues) > before:
        return None
    return PlacementPlan(
        world_size=len(ranks),
        num_nodes=cluster.num_nodes,
        accelerator_type=accel,
        ranks=ranks,
        roles=role_ranks,
    )


def _node_envs(
    cluster: ClusterConfig, issues: Issues
) -> tuple[dict[int, dict[str, str]], dict[int, str]]:
    envs: dict[int, dict[str, str]] = {}
    interps: dict[int, str] = {}
    for gi, g in enumerate(cluster.node_groups):
        try:
            gnodes = parse_range(g.node_ranks, cluster.num_nodes)
        except RangeError:
            continue
        for ei, ec in enumerate(g.env_configs):
            try:
                nodes = (
                    gnodes
                    if ec.node_ranks == "all"
                    else parse_range(ec.node_ranks, cluster.num_nodes)
                )
            except RangeError:
                continue
            path = f"cluster.node_groups[{gi}].env_configs[{ei}]"
            for n in nodes:
                node_env = envs.setdefault(n, {})
                for k, v in _env_items(ec.env_vars):
                    if k in node_env and node_env[k] != v:
                        issues.add(
                            f"{path}.env_vars",
                            f"'{k}' on node {n} is set differently by another group",
                        )
                    node_env[k] = v
                p = ec.python_interpreter_path
                if p:
                    if n in interps and interps[n] != p:
                        issues.add(
                            f"{path}.python_interpreter_path",
                            f"node {n} already uses {interps[n]} from another group",
                        )
                    interps[n] = p
    return envs, interps
