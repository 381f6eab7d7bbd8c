"""model/bench.py：能跑通、数值为正（不对速度做断言——速度取决于机器，那是基准脚本的事）。"""
import math
import os
import subprocess
import sys

import torch

from conftest import REPO_ROOT
from model.bench import SHAPES, bench_quantized, bench_speculative, draft_config, run_benchmark
from model.model_minimind import MiniMindConfig, MiniMindForCausalLM
from model.reference_gpt import reference_like


def test_model_bench_measures_baby_shape():
    r = run_benchmark("baby", steps=1, device=torch.device("cpu"), reference=True)
    assert r["batch"] == "12x64" and 0.5 < r["params_m"] < 1.5
    assert r["train_tok_s"] > 0 and r["gen_cache_tok_s"] > 0 and r["gen_nocache_tok_s"] > 0
    assert r["gen_matmul_only_tok_s"] > 0 and r["reference_train_tok_s"] > 0


def test_model_bench_speculative_on_baby_shape():
    config = MiniMindConfig(**SHAPES["baby"]["config"])
    draft = draft_config(config, SHAPES["baby"]["config"])
    assert (draft.hidden_size, draft.num_hidden_layers, draft.vocab_size) == (64, 2, config.vocab_size)
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 0.9M 的模型多线程无益；2 核机器上有别的程序时两个线程互相等待，慢几十倍
    try:
        r = bench_speculative(MiniMindForCausalLM(config), MiniMindForCausalLM(draft), torch.device("cpu"),
                              num_draft_tokens=3, repeats=1)
    finally:
        torch.set_num_threads(threads)
    assert r["spec_tok_s"] > 0 and r["spec_vs_cache"] > 0
    assert 0.0 <= r["spec_alpha"] <= 1.0 and 1.0 <= r["spec_tokens_per_call"] <= 4.0  # 每轮 1 到 γ+1 个


def test_model_bench_quantized_on_baby_shape():
    torch.manual_seed(0)
    model = MiniMindForCausalLM(MiniMindConfig(**SHAPES["baby"]["config"]))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        r = bench_quantized(model, "int4", torch.device("cpu"), repeats=1)
    finally:
        torch.set_num_threads(threads)
    assert r["q_gen_tok_s"] > 0 and r["q_vs_fp"] > 0
    assert r["q_weights_mib"] < r["weights_mib"]
    assert sum(isinstance(m, torch.nn.Linear) for m in model.modules()) > 1  # 量化的是副本，原模型不动


def test_reference_gpt_is_a_working_language_model():
    """对照组得是个正常的语言模型：初始 loss ≈ ln V，训练几步 loss 下降，而且是因果的。"""
    torch.manual_seed(0)
    config = MiniMindConfig(**SHAPES["baby"]["config"])
    gpt = reference_like(config, max_len=64)
    ids = torch.randint(0, config.vocab_size, (4, 32))
    first = gpt(ids, labels=ids).loss
    assert abs(first.item() - math.log(config.vocab_size)) < 0.3
    optimizer = torch.optim.AdamW(gpt.parameters(), lr=1e-2)
    for _ in range(20):
        loss = gpt(ids, labels=ids).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < first.item() - 1.0
    changed = ids.clone()
    changed[:, 20:] = (changed[:, 20:] + 1) % config.vocab_size  # 只改后面的 token
    with torch.no_grad():
        assert torch.allclose(gpt(ids, labels=ids).logits[:, :20], gpt(changed, labels=changed).logits[:, :20])


def test_model_bench_cli_minimind3_family():
    proc = subprocess.run([sys.executable, "-m", "model.bench", "--shape", "baby", "--steps", "1",
                           "--family", "minimind3", "--device", "cpu", "--speculative", "--quantize", "int8"],
                          cwd=REPO_ROOT,
                          capture_output=True, text=True, encoding="utf-8", timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})  # 只看能否跑通：单线程，机器忙时不至于慢几十倍
    assert proc.returncode == 0, proc.stderr
    assert "family=minimind3" in proc.stdout and "baby" in proc.stdout
    assert "gen tok/s (cache)" in proc.stdout and "spec/cache" in proc.stdout and "随机权重" in proc.stdout
    assert "int8 MiB" in proc.stdout and "int8/fp32" in proc.stdout


def test_model_bench_cli_rejects_bad_arguments():
    proc = subprocess.run([sys.executable, "-m", "model.bench", "--steps", "0"], cwd=REPO_ROOT,
                          capture_output=True, text=True, encoding="utf-8", timeout=120)
    assert proc.returncode == 2 and "--steps" in proc.stderr and "Traceback" not in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "model.bench", "--speculative", "--compile"], cwd=REPO_ROOT,
                          capture_output=True, text=True, encoding="utf-8", timeout=120)
    assert proc.returncode == 2 and "--speculative" in proc.stderr and "Traceback" not in proc.stderr


def test_model_bench_warns_when_other_programs_use_the_cpu(monkeypatch, capsys):
    import model.bench as bench
    cores = bench.busy_cores(seconds=0.05)
    assert cores is None or 0.0 <= cores <= (os.cpu_count() or 1) + 0.01
    monkeypatch.setattr(bench, "busy_cores", lambda: 1.5)
    bench.warn_if_busy(torch.device("cpu"))
    assert "正被别的程序占用" in capsys.readouterr().out
    monkeypatch.setattr(bench, "busy_cores", lambda: 0.1)
    bench.warn_if_busy(torch.device("cpu"))
    assert capsys.readouterr().out == ""
