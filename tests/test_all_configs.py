"""Every file in configs/ loads, validates and plans (`--plan`), as a user would run it."""

import json
from pathlib import Path

import pytest

from rlinf.config import load_config
from rlinf.launch import main

CONFIGS = sorted(str(p) for p in (Path(__file__).parents[1] / "configs").rglob("*.yaml"))


def test_there_are_configs():
    assert any(c.endswith("check_4rank.yaml") for c in CONFIGS)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: Path(p).name)
def test_config_loads_and_plans(path, capsys):
    cfg = load_config(path, detected_accelerators=0, plan_only=True)
    assert cfg.runner.task_type
    assert main(["--config", path, "--plan", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["world_size"] == len(plan["ranks"]) > 0
    assert all(
        set(r)
        >= {"rank", "node", "local_rank", "device", "node_group", "roles", "hardware", "env_vars"}
        for r in plan["ranks"]
    )
