"""Config loading, overrides and validation: every problem reported at once, with its key."""

import textwrap

import pytest

from rlinf.config import ConfigError, load_config


def write(tmp_path, text, name="cfg.yaml"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return str(p)


def test_defaults_load_and_typed(tmp_path):
    cfg = load_config(write(tmp_path, "runner:\n  seed: 7\n"))
    assert cfg.runner.seed == 7
    assert cfg.algorithm.gamma == 0.99
    assert cfg.runner.resolved_output_dir() == "runs/default"


def test_config_found_by_name_in_configs_dir_and_subfolders():
    assert load_config("check_4rank.yaml").runner.task_type == "check"
    assert load_config("check_4rank").cluster.num_nodes == 1
    assert load_config("hetero_18node.yaml").cluster.num_nodes == 18


def test_missing_config_name_suggests_a_close_one():
    with pytest.raises(ConfigError, match="did you mean 'check_4rank.yaml'"):
        load_config("check_4rnak.yaml")


def test_unknown_key_gets_did_you_mean(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, "runner:\n  max_step: 3\n"))
    assert "runner.max_step: unknown key; did you mean 'max_steps'?" in str(e.value)


def test_overrides_set_add_and_delete(tmp_path):
    path = write(
        tmp_path, "env:\n  train:\n    init_params:\n      id: CartPole-v1\n      foo: 1\n"
    )
    cfg = load_config(
        path,
        [
            "runner.seed=5",
            "algorithm.clip_ratio_c=3.0",
            "+env.train.init_params.bar=2",
            "~env.train.init_params.foo",
            "runner.logger.logger_backends=[console]",
        ],
    )
    assert cfg.runner.seed == 5
    assert cfg.algorithm.clip_ratio_c == 3.0
    assert cfg.env.train.init_params == {"id": "CartPole-v1", "bar": 2}
    assert cfg.runner.logger.logger_backends == ["console"]


def test_override_of_unknown_key_is_an_error_with_hint(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, "{}"), ["runner.sead=3"])
    assert "runner.sead: unknown key in override 'runner.sead=3'; did you mean 'seed'?" in str(
        e.value
    )


def test_interpolation_is_resolved(tmp_path):
    path = write(
        tmp_path,
        """
        runner:
          logger:
            experiment_name: exp1
          output_dir: /tmp/out/${runner.logger.experiment_name}
    """,
    )
    assert load_config(path).runner.output_dir == "/tmp/out/exp1"


def test_defaults_compose_parent_then_child(tmp_path):
    write(tmp_path, "runner:\n  seed: 1\n  max_steps: 9\n", name="base.yaml")
    child = write(tmp_path, "defaults: [base]\nrunner:\n  seed: 2\n", name="child.yaml")
    cfg = load_config(child)
    assert (cfg.runner.seed, cfg.runner.max_steps) == (2, 9)


def test_five_mistakes_reported_together_each_naming_its_key(tmp_path):
    path = write(
        tmp_path,
        """
        cluster:
          num_nodes: 1
          accelerator_type: cpu
          accelerators_per_node: 2
          component_placement:
            actor: 0-5
        runner:
          task_type: embodied
          max_stepz: 10
        algorithm:
          gamma: 1.5
          clip_ratio_c: 0.5
        actor:
          optim:
            lr: fast
    """,
    )
    with pytest.raises(ConfigError) as e:
        load_config(path)
    msg = str(e.value)
    issues = {i.path for i in e.value.issues}
    assert "runner.max_stepz" in issues and "did you mean 'max_steps'" in msg
    assert "algorithm.gamma" in issues
    assert "algorithm.clip_ratio_c" in issues and "dual clip needs a value > 1" in msg
    assert "actor.optim.lr" in issues and "expected a number, got 'fast'" in msg
    assert "cluster.component_placement.actor" in issues
    assert "rank 2 is outside the cluster (CPU slot ranks 0-1)" in msg
    assert len(e.value.issues) >= 5


def test_bad_literal_and_type_messages(tmp_path):
    path = write(tmp_path, "runner:\n  task_type: embodid\n  seed: one\n")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    msg = str(e.value)
    assert "runner.task_type: 'embodid' is not one of" in msg and "did you mean 'embodied'" in msg
    assert "runner.seed: expected an integer, got 'one'" in msg


def test_reasoning_requires_model_path(tmp_path):
    path = write(
        tmp_path,
        """
        cluster: {accelerator_type: cpu, component_placement: {"actor,rollout": all}}
        runner: {task_type: reasoning}
        actor: {model: {model_type: causal_lm}}
        data: {train_data_paths: [x.jsonl]}
    """,
    )
    with pytest.raises(ConfigError, match="actor.model.model_path: is required"):
        load_config(path)


def test_embodied_env_split_must_divide(tmp_path):
    path = write(
        tmp_path,
        """
        cluster: {accelerator_type: cpu, accelerators_per_node: 3,
                  component_placement: {env: 0-1, rollout: 2, actor: 2}}
        runner: {task_type: embodied}
        env: {train: {total_num_envs: 5}}
    """,
    )
    with pytest.raises(
        ConfigError, match="env.train.total_num_envs: 5 envs cannot be split evenly over 2"
    ):
        load_config(path)
