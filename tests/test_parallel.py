"""hhalign.parallel without a launcher: whole batches dealt to simulated ranks give every row exactly as one
process does (more ranks than batches included), and the launch's error lines. The real two-process runs are
in test_distributed.py (slow)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from hhalign import parallel
from hhalign.config.schema import GenerateSection
from hhalign.models.generation import generate_responses, length_batches
from hhalign.models.judge import score_pairs
from hhalign.models.loading import load_causal_lm, load_reward_model, pick_device


def _as_ranks(monkeypatch: pytest.MonkeyPatch, n: int, work) -> list:
    """Run ``work()`` as each of ``n`` ranks in turn; every rank's (index, row) pairs, as gather received them."""
    received: list = []
    for r in range(n):
        monkeypatch.setattr(parallel, "rank", lambda r=r: r)
        monkeypatch.setattr(parallel, "size", lambda: n)
        monkeypatch.setattr(parallel, "gather", lambda rows, count, what="", r=r: received.append((r, list(rows))) or [])
        work()
    return received


def _merged(received: list, n_items: int) -> list:
    rows = [row for _, part in received for row in part]
    assert sorted(i for i, _ in rows) == list(range(n_items)), "every item once, on one rank"
    return [row for _, row in sorted(rows, key=lambda x: x[0])]


@pytest.fixture(scope="module")
def prompts(paper_dir: Path) -> list[str]:
    return json.loads((paper_dir / "prompts" / "helpful_prompts.json").read_text())[:13]


@pytest.mark.parametrize("ranks", [2, 3, 8])  # 8 ranks, 4 batches: four ranks have nothing to do
def test_ranks_generate_exactly_what_one_process_does(tiny_lm_dir: Path, prompts: list[str], ranks: int,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    model, tok = load_causal_lm(str(tiny_lm_dir))
    cfg = GenerateSection(batch_size=4, max_new_tokens=8)
    want = generate_responses(model, tok, prompts, cfg, progress=False)
    received = _as_ranks(monkeypatch, ranks, lambda: generate_responses(model, tok, prompts, cfg, progress=False))
    assert _merged(received, len(prompts)) == want
    batches = length_batches([len(tok(p)["input_ids"]) for p in prompts], 4)
    for _, part in received:  # each rank's rows are whole batches of the ones one process forms
        mine = {i for i, _ in part}
        assert mine == {i for b in batches if set(b) <= mine for i in b}, (mine, batches)
    if ranks == 8:
        assert [len(part) for _, part in received].count(0) == 4


def test_ranks_score_exactly_what_one_process_does(tiny_rm_dir: Path, prompts: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    model, tok = load_reward_model(str(tiny_rm_dir))
    replies = [f"Reply {i}: " + "words " * (3 * i) for i in range(len(prompts))]
    want = score_pairs(model, tok, prompts, replies, batch_size=3, progress=False)
    received = _as_ranks(monkeypatch, 3, lambda: score_pairs(model, tok, prompts, replies, batch_size=3, progress=False))
    assert _merged(received, len(prompts)) == want  # exactly: each batch is computed as one process computes it


def test_gather_puts_rows_in_order_and_refuses_gaps() -> None:
    assert parallel.gather([(2, "c"), (0, "a"), (1, "b")], 3) == ["a", "b", "c"]
    with pytest.raises(RuntimeError, match="gathered 2 rows for 3 items"):
        parallel.gather([(0, "a"), (2, "c")], 3, "generate")


def test_batches_go_to_the_rank_with_the_least_work(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(parallel, "size", lambda: 2)
    batches, costs = ["a", "b", "c", "d", "e"], [10.0, 6.0, 5.0, 4.0, 1.0]
    shares = []
    for r in (0, 1):
        monkeypatch.setattr(parallel, "rank", lambda r=r: r)
        shares.append(parallel.deal(batches, costs))
    assert shares == [["a", "d"], ["b", "c", "e"]]  # loads 14 and 12; every size()-th one would give 16 and 10
    assert parallel.deal(batches) == ["b", "d"]  # rank 1, without costs


def test_one_process_is_the_identity() -> None:
    assert not parallel.launched() and parallel.size() == 1 and parallel.is_main()
    assert parallel.deal([[0, 1], [2]]) == [[0, 1], [2]]
    assert parallel.on_main(lambda: 7, "x") == 7
    parallel.agree({"config hash": "a"}, "x")  # nothing to compare
    parallel.barrier()


def test_a_peer_that_died_is_one_line_and_a_bug_stays_a_bug() -> None:
    with pytest.raises(parallel.LaunchError, match=r"^stage 'generate': another process of this launch stopped .*"
                                                    r"Connection closed by peer.*run the same command again to resume"):
        with parallel.lost("stage 'generate'"):
            raise RuntimeError("[gloo/transport/tcp/pair.cc:534] Connection closed by peer [127.0.0.1]:4242\nmore")
    with pytest.raises(RuntimeError, match="shape mismatch"):
        with parallel.lost("x"):
            raise RuntimeError("shape mismatch")


def test_one_process_on_several_gpus_says_how_to_use_them(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                                          tmp_path: Path) -> None:
    from hhalign.cli import main

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert main(["run", "tiny", "--dry-run", "--set", f"output_dir={tmp_path}"]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "GPUs" in ln]
    assert lines == ["this machine has 4 GPUs and a single process uses one: to use all 4, run "
                     "`accelerate launch --num_processes 4 -m hhalign run CONFIG` (docs/gpu.md)"]
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert parallel.idle_gpus_hint() is None  # launched: every GPU has its process


def test_under_a_launch_cuda_means_the_process_own_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert pick_device("cuda") == torch.device("cuda", 3)
    assert pick_device("cuda:1") == torch.device("cuda", 1)  # an explicit index stays
    assert pick_device("cpu") == torch.device("cpu")


def test_a_command_that_runs_as_one_process_refuses_a_launch(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                                             tmp_path: Path) -> None:
    from hhalign.cli import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["sweep", "tiny", "--grid", "dpo.beta=0.1,0.2", "--set", f"output_dir={tmp_path}"]) == 2
    assert capsys.readouterr().err.strip() == ("hhalign sweep: error: hhalign sweep runs as one process: start it without "
                                               "accelerate launch (under a launch: hhalign run and the stage commands)")
    assert not any(tmp_path.iterdir())


def test_fsdp_or_deepspeed_on_cpu_processes_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert parallel.sharding_note() is None
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    assert parallel.sharding_note().startswith("the accelerate config asks for FSDP, which Accelerate runs on GPUs only: "
                                               "these CPU processes train with plain data parallelism (DDP")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert parallel.sharding_note() is None
