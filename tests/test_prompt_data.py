"""PromptDataset (jsonl/parquet, errors, length filter), PromptSampler (resume), synthetic data."""

import json
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from rlinf.data.prompts import PromptDataset, PromptSampler
from rlinf.data.synthetic import arithmetic_problems, write_arithmetic_dataset
from rlinf.models.tiny_lm import train_tokenizer
from rlinf.rewards.math import extract_last_boxed

CORPUS = [f"What is {a} + {b}? \\boxed{{{a + b}}}" for a in range(30) for b in range(30)]


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(CORPUS, vocab_size=400)


def _write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_jsonl_and_parquet(tmp_path, tokenizer):
    a = _write_jsonl(tmp_path / "a.jsonl", [{"prompt": "What is 1 + 2?", "answer": "3"}, ""])
    table = pa.Table.from_pylist([{"prompt": "What is 4 + 5?", "answer": 9, "extra": [1]}])
    pq.write_table(table, tmp_path / "b.parquet")
    ds = PromptDataset([str(a), str(tmp_path / "b.parquet")], tokenizer, max_prompt_length=64)
    assert len(ds) == 2 and ds.num_dropped == 0
    ids, answer, text = ds[0]
    assert (answer, text) == ("3", "What is 1 + 2?")
    assert ids == tokenizer("What is 1 + 2?")["input_ids"]
    assert ds[1].answer == "9" and ds[1].prompt_text == "What is 4 + 5?"


def test_chat_template_system_prompt_and_messages(tmp_path, tokenizer):
    rows = [
        {"prompt": "What is 1 + 2?", "answer": "3"},
        {"q": [{"role": "user", "content": "What is 2 + 2?"}], "reward_model": {"gt": "4"}},
    ]
    path = _write_jsonl(tmp_path / "c.jsonl", rows[:1])
    ds = PromptDataset([path], tokenizer, apply_chat_template=True, system_prompt="Be brief.")
    expected = (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is 1 + 2?<|im_end|>\n"
    )
    assert ds[0].prompt_text == expected + "<|im_start|>assistant\n"
    assert tokenizer.decode(ds[0].prompt_ids) == ds[0].prompt_text

    path = _write_jsonl(tmp_path / "d.jsonl", rows[1:])
    ds = PromptDataset([path], tokenizer, prompt_key="q", answer_key="reward_model.gt")
    assert ds[0].prompt_text == "What is 2 + 2?" and ds[0].answer == "4"
    ds = PromptDataset(
        [path], tokenizer, prompt_key="q", answer_key="reward_model.gt", apply_chat_template=True
    )
    assert ds[0].prompt_text.startswith("<|im_start|>user\nWhat is 2 + 2?<|im_end|>")


def test_long_prompts_dropped_and_counted(tmp_path, tokenizer, caplog):
    rows = [{"prompt": "What is 1 + 2?", "answer": "3"}] * 3
    rows += [{"prompt": "What is " + " + ".join(["1"] * 40) + "?", "answer": "40"}] * 2
    path = _write_jsonl(tmp_path / "e.jsonl", rows)
    with caplog.at_level("WARNING"):
        ds = PromptDataset([path], tokenizer, max_prompt_length=20)
    assert len(ds) == 3 and ds.num_dropped == 2
    assert all(len(item.prompt_ids) <= 20 for item in ds.items)
    assert "dropped 2 of 5" in caplog.text
    with pytest.raises(ValueError, match="no prompts left"):
        PromptDataset([path], tokenizer, max_prompt_length=2)


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (['{"prompt": "a", "answer": "1"}', '{"prompt": "b", "answer": }'], "line 2: invalid JSON"),
        (
            ['{"prompt": "a", "answer": "1"}', '{"question": "b", "answer": "2"}'],
            "line 2: missing key 'prompt'",
        ),
        (['{"prompt": "a"}'], "line 1: missing key 'answer'.*data.answer_key"),
        (['{"prompt": 5, "answer": "1"}'], "line 1: key 'prompt' must be a string"),
        (['{"prompt": "a", "answer": null}'], "line 1: key 'answer' must be a string or a number"),
        (["[1, 2]"], "line 1: expected a JSON object"),
    ],
)
def test_bad_jsonl_rows(tmp_path, tokenizer, lines, message):
    path = _write_jsonl(tmp_path / "bad.jsonl", lines)
    with pytest.raises(ValueError, match=f"bad.jsonl: {message}"):
        PromptDataset([path], tokenizer)


def test_bad_parquet_row_and_paths(tmp_path, tokenizer):
    rows = [{"prompt": "a", "answer": "1"}, {"prompt": None, "answer": "2"}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match=r"bad.parquet: row 1 \(0-based\): key 'prompt'"):
        PromptDataset([tmp_path / "bad.parquet"], tokenizer)
    with pytest.raises(ValueError, match="does not exist"):
        PromptDataset([tmp_path / "missing.jsonl"], tokenizer)
    (tmp_path / "x.csv").write_text("prompt,answer\n")
    with pytest.raises(ValueError, match="must end with one of"):
        PromptDataset([tmp_path / "x.csv"], tokenizer)
    with pytest.raises(ValueError, match="data.train_data_paths"):
        PromptDataset([], tokenizer)


def test_chat_template_required(tmp_path):
    plain = train_tokenizer(CORPUS[:50], vocab_size=300)
    plain.chat_template = None
    path = _write_jsonl(tmp_path / "f.jsonl", [{"prompt": "a", "answer": "1"}])
    with pytest.raises(ValueError, match="data.apply_chat_template"):
        PromptDataset([path], plain, apply_chat_template=True)


def _take(sampler, n):
    return [next(sampler) for _ in range(n)]


def test_sampler_epochs_are_seeded_permutations():
    sampler = PromptSampler(10, batch_size=3, seed=7)
    batches = _take(sampler, 6)  # 3 full batches per epoch, the 10th index dropped
    for epoch in range(2):
        perm = torch.randperm(10, generator=torch.Generator().manual_seed(7 + epoch)).tolist()
        assert batches[3 * epoch : 3 * epoch + 3] == [perm[0:3], perm[3:6], perm[6:9]]
    assert batches[:3] != batches[3:]
    assert _take(PromptSampler(10, 3, seed=7), 6) == batches
    assert _take(PromptSampler(10, 3, seed=8), 3) != batches[:3]


def test_sampler_keep_last_and_no_shuffle():
    sampler = PromptSampler(7, batch_size=3, seed=0, shuffle=False, drop_last=False)
    assert sampler.batches_per_epoch == 3
    assert _take(sampler, 4) == [[0, 1, 2], [3, 4, 5], [6], [0, 1, 2]]
    epoch = _take(PromptSampler(7, 3, seed=1, drop_last=False), 3)
    assert sorted(i for b in epoch for i in b) == list(range(7))
    with pytest.raises(ValueError, match="fewer than one batch"):
        PromptSampler(2, batch_size=3)


@pytest.mark.parametrize("consumed", [0, 1, 4, 5, 7])
def test_sampler_resume_continues_with_the_next_batch(consumed):
    reference = PromptSampler(11, batch_size=4, seed=3, drop_last=False)
    expected = _take(reference, consumed + 8)
    sampler = PromptSampler(11, batch_size=4, seed=3, drop_last=False)
    _take(sampler, consumed)
    state = json.loads(json.dumps(sampler.state_dict()))  # survives a checkpoint round trip
    resumed = PromptSampler(11, batch_size=4, seed=3, drop_last=False)
    resumed.load_state_dict(state)
    assert _take(resumed, 8) == expected[consumed:]
    with pytest.raises(ValueError, match="was the data changed"):
        PromptSampler(3, batch_size=1).load_state_dict({"epoch": 0, "position": 9})


def test_synthetic_dataset(tmp_path):
    train, val = write_arithmetic_dataset(tmp_path / "a", n_train=500, n_val=100, seed=5)
    train_rows = [json.loads(line) for line in train.read_text().splitlines()]
    val_rows = [json.loads(line) for line in val.read_text().splitlines()]
    assert len(train_rows) == 500 and len(val_rows) == 100
    assert not {r["prompt"] for r in train_rows} & {r["prompt"] for r in val_rows}
    for row in train_rows + val_rows:
        expression = row["prompt"].removeprefix("What is ").removesuffix("?")
        assert int(row["answer"]) == eval(expression) >= 0  # noqa: S307 - digits and +/- only
        assert extract_last_boxed(row["solution"]) == row["answer"]
    again, _ = write_arithmetic_dataset(tmp_path / "b", n_train=500, n_val=100, seed=5)
    assert again.read_text() == train.read_text()
    assert arithmetic_problems(50, seed=6) != arithmetic_problems(50, seed=5)
    assert {r["prompt"].split()[3] for r in arithmetic_problems(200, 0, ops="+-*")} == {
        "+",
        "-",
        "*",
    }

    # short enough for a tiny model: prompts < 32 tokens with the chat template, answers < 16
    tok = train_tokenizer([r["prompt"] + " " + r["solution"] for r in train_rows], vocab_size=400)
    ds = PromptDataset([val], tok, apply_chat_template=True, max_prompt_length=32)
    assert ds.num_dropped == 0
    assert max(len(tok(r["solution"])["input_ids"]) for r in val_rows) < 16


def test_synthetic_cli(tmp_path):
    cmd = [sys.executable, "-m", "rlinf.data.synthetic", "--out", str(tmp_path), "--n-train", "20"]
    subprocess.run([*cmd, "--n-val", "5", "--seed", "1"], check=True)
    assert len((tmp_path / "train.jsonl").read_text().splitlines()) == 20
    assert len((tmp_path / "val.jsonl").read_text().splitlines()) == 5
    bad = subprocess.run([*cmd, "--n-val", "99999"], capture_output=True, text=True)
    assert bad.returncode == 2 and "distinct problems" in bad.stderr
