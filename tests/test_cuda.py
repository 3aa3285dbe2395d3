"""The GPU path: training, sampling, eval and inspect-neurons on CUDA. Skipped without a GPU.

A model trained on the GPU must be the same kind of object as one trained on a CPU: its
checkpoint loads and scores alike on both, and the CUDA training step (bf16 autocast,
fused AdamW, checks deferred to logging points) learns and skips bad steps.
"""

from __future__ import annotations

import json

import pytest
import torch

from charlm.checkpoint import load_checkpoint
from charlm.cli import main

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

MODEL = ["--layers", "2", "--hidden", "64", "--embedding", "16"]
RUN = ["--batch-size", "8", "--seq-len", "32", "--sample-length", "20", "--seed", "3", "--device", "cuda"]


def cli(*args) -> int:
    return main([str(a) for a in args])


@pytest.fixture(scope="module")
def cuda_run(tmp_path_factory):
    from .conftest import make_text

    folder = tmp_path_factory.mktemp("cuda")
    corpus = folder / "corpus.txt"
    corpus.write_text(make_text(30_000), encoding="utf-8")
    assert cli("train", corpus, *MODEL, *RUN, "--max-steps", 300, "--lr", 0.01, "--out", folder / "run") == 0
    return folder / "run", corpus


def eval_json(checkpoint, corpus, device, capsys) -> dict:
    capsys.readouterr()
    assert cli("eval", checkpoint, corpus, "--json", "--device", device) == 0
    return json.loads(capsys.readouterr().out)


def test_a_cuda_run_learns_and_its_checkpoint_scores_alike_on_cpu_and_gpu(cuda_run, capsys):
    run, corpus = cuda_run
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    losses = [e["loss"] for e in log if "loss" in e]
    assert losses[-1] < losses[0] - 1.0  # it learned
    assert load_checkpoint(run / "last.pt")["state"]["step"] == 300
    on_gpu, on_cpu = (eval_json(run / "best.pt", corpus, d, capsys) for d in ("cuda", "cpu"))
    assert on_gpu["chars"] == on_cpu["chars"]
    assert on_gpu["nats_per_char"] == pytest.approx(on_cpu["nats_per_char"], rel=2e-3)
    assert on_gpu["nats_per_char"] < 2.0


def test_a_cuda_checkpoint_holds_cpu_float32_state_and_resumes_on_a_cpu(cuda_run, tmp_path):
    run, _ = cuda_run
    path = run / "last.pt"
    payload = torch.load(path, weights_only=True)  # no map_location: nothing in it needs a GPU

    def tensors(value):
        if isinstance(value, torch.Tensor):
            yield value
        elif isinstance(value, dict):
            for v in value.values():
                yield from tensors(v)
        elif isinstance(value, (list, tuple)):
            for v in value:
                yield from tensors(v)

    assert all(t.device.type == "cpu" for t in tensors(payload))
    assert all(h.dtype == torch.float32 for h in payload["hidden"])  # not autocast's bf16
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in ("last.pt", "best.pt"):
        (copy / name).write_bytes((run / name).read_bytes())
    assert cli("train", "--resume", copy / "last.pt", "--device", "cpu", "--max-steps", 320) == 0
    assert load_checkpoint(copy / "last.pt")["state"]["step"] == 320


def test_sampling_on_the_gpu_is_repeatable_and_matches_the_length(cuda_run, capsys):
    run, _ = cuda_run
    texts = []
    for _ in range(2):
        capsys.readouterr()
        assert cli("sample", run / "best.pt", "--device", "cuda", "--seed", 7, "--length", 200,
                   "--num-samples", 3, "--prime", "(") == 0
        texts.append(capsys.readouterr().out)
    assert texts[0] == texts[1] and len(texts[0]) > 3 * 200


def test_inspect_neurons_ranks_alike_on_cpu_and_gpu(cuda_run, capsys):
    run, corpus = cuda_run
    rankings = []
    for device in ("cuda", "cpu"):
        capsys.readouterr()
        assert cli("inspect-neurons", run / "best.pt", corpus, "--find", "in-string", "--top", 5, "--json",
                   "--device", device) == 0
        rankings.append(json.loads(capsys.readouterr().out))
    gpu, cpu = rankings
    best = [(r["layer"], r["state"], r["unit"]) for r in (gpu[0], cpu[0])]
    assert best[0] == best[1]
    assert gpu[0]["score"] == pytest.approx(cpu[0]["score"], abs=0.02)


def test_a_non_finite_step_on_the_gpu_is_left_undone(tmp_path, capsys, monkeypatch):
    from charlm.model import CharRNN

    from .conftest import make_text

    real_forward = CharRNN.forward
    passes = [0]

    def forward(self, idx, hidden=None, targets=None):
        logits, loss, hidden = real_forward(self, idx, hidden, targets)
        if targets is not None and self.training:
            if passes[0] == 5:
                loss = loss * float("nan")
            passes[0] += 1
        return logits, loss, hidden

    monkeypatch.setattr(CharRNN, "forward", forward)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(make_text(20_000), encoding="utf-8")
    assert cli("train", corpus, *MODEL, *RUN, "--max-steps", 20, "--out", tmp_path / "run") == 0
    assert capsys.readouterr().err.count("non-finite loss, update skipped") == 1
    checkpoint = load_checkpoint(tmp_path / "run" / "last.pt")
    assert checkpoint["state"]["lr_scale"] == 0.5
    assert all(torch.isfinite(v).all() for v in checkpoint["model"].values())


@pytest.mark.parametrize("chosen, dtype", [("auto", torch.bfloat16), ("fp32", torch.float32)])
def test_a_gpu_run_trains_in_bf16_unless_asked_for_float32(tmp_path, capsys, monkeypatch, chosen, dtype):
    from charlm.model import CharRNN

    from .conftest import make_text

    corpus = tmp_path / "corpus.txt"
    corpus.write_text(make_text(5_000), encoding="utf-8")
    seen = set()
    real = CharRNN.top_outputs

    def top_outputs(self, idx, hidden=None):
        out, hidden = real(self, idx, hidden)
        if self.training:
            seen.add(out.dtype)
        return out, hidden

    monkeypatch.setattr(CharRNN, "top_outputs", top_outputs)
    assert cli("train", corpus, *MODEL, *RUN, "--max-steps", 5, "--precision", chosen, "--out", tmp_path / "run") == 0
    assert seen == {dtype}
    payload = load_checkpoint(tmp_path / "run" / "last.pt")
    assert all(t.dtype == torch.float32 for t in payload["model"].values())


@pytest.mark.parametrize("options", [["--teacher-forcing", "0.5"], ["--direction", "backward"]],
                         ids=["scheduled sampling", "backward"])
def test_scheduled_sampling_and_a_backward_model_train_on_the_gpu(cuda_run, tmp_path, capsys, options):
    _, corpus = cuda_run
    assert cli("train", corpus, *MODEL, *RUN, "--max-steps", 60, *options, "--out", tmp_path / "run") == 0
    losses = [e["loss"] for e in map(json.loads, (tmp_path / "run" / "log.jsonl").open()) if "loss" in e]
    assert losses[-1] < losses[0]
    on_gpu, on_cpu = (eval_json(tmp_path / "run", corpus, d, capsys) for d in ("cuda", "cpu"))
    assert on_gpu["nats_per_char"] == pytest.approx(on_cpu["nats_per_char"], rel=2e-3)


def test_a_bilm_on_the_gpu_is_refused_for_now(cuda_run, tmp_path, capsys):
    _, corpus = cuda_run
    assert cli("train", corpus, *MODEL, *RUN, "--max-steps", 5, "--direction", "both", "--out", tmp_path / "r") == 2
    assert "--device cpu" in capsys.readouterr().err
