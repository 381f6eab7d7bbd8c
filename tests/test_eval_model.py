"""scripts/eval_model.py 与 trainer/evaluation/：bpb 的手算核对、选择题三种打分、lm-eval 与我们逐项一致、坏行报行号。"""
import json
import math
import os
import subprocess
import sys

import pytest
import torch

from conftest import REPO_ROOT

from dataset import make_eval_samples
from model.checkpoint import save_checkpoint
from model.model_minimind import MiniMindConfig, MiniMindForCausalLM
from model.tokenization import load_tokenizer
from trainer.evaluation.items import EvalDataError, load_mc_items, load_texts, parse_mc_row, read_jsonl
from trainer.evaluation.loglik import score_requests
from trainer.evaluation.multiple_choice import evaluate_mc
from trainer.evaluation.perplexity import evaluate_text, rolling_requests

SAMPLES = REPO_ROOT / "dataset" / "samples"


def tiny_model(vocab_size, seed=0, family="minimind2"):
    """随机的小模型；权重放大到 std 0.3，让不同选项的分数拉开（默认初始化下几乎是均匀分布）。"""
    torch.manual_seed(seed)
    model = MiniMindForCausalLM(MiniMindConfig(family=family, hidden_size=32, num_hidden_layers=1, vocab_size=vocab_size,
                                               num_attention_heads=4, num_key_value_heads=2))
    for p in model.parameters():
        p.data.normal_(0, 0.3)
    return model.eval()


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(None)


# ---------- bpb / 困惑度 ----------

def test_bpb_equals_hand_computation_from_the_model_loss(tokenizer, tmp_path):
    text = "abc 中文"  # 3 个 ASCII + 1 个空格 + 2 个汉字 × 3 字节 = 10 字节
    path = tmp_path / "held_out.txt"
    path.write_text(text, encoding="utf-8")
    model = tiny_model(tokenizer.vocab_size)
    r = evaluate_text(model, tokenizer, load_texts(path), max_len=64)
    assert r["bytes"] == 10
    ids = torch.tensor([[tokenizer.bos_token_id] + tokenizer.encode(text)])
    with torch.no_grad():
        mean_loss = model(ids, labels=ids).loss.item()  # BOS 之后每个 token 的平均交叉熵（nats）
    n = ids.shape[1] - 1
    assert r["tokens"] == n
    assert r["bpb"] == pytest.approx(mean_loss * n / (math.log(2) * 10), rel=1e-5)
    assert r["ppl"] == pytest.approx(math.exp(mean_loss), rel=1e-5)


def test_sliding_windows_score_every_token_once_within_the_window():
    ids = list(range(100))
    for max_len, stride in [(16, 8), (16, 15), (16, 1), (200, 100)]:
        pieces = rolling_requests(ids, max_len, stride)
        assert sum((cont for _, cont in pieces), []) == ids[1:]
        for context, cont in pieces:
            assert context and len(context) + len(cont) <= max_len
            assert context + cont == ids[cont[0] - len(context):cont[-1] + 1]  # 上下文紧挨着续写


def test_long_document_windows_match_a_token_by_token_loop(tokenizer):
    """stride 小到 1 时，每个 token 都带着 max_len−1 个上下文单独打分：与逐个 token 的手写循环一致。"""
    text = "The old clock in the town hall stopped working last winter."
    model = tiny_model(tokenizer.vocab_size, seed=1)
    ids = [tokenizer.bos_token_id] + tokenizer.encode(text)
    max_len = 8
    r = evaluate_text(model, tokenizer, [text], max_len=max_len, stride=1)
    nll = 0.0
    with torch.no_grad():
        for t in range(1, len(ids)):
            window = torch.tensor([ids[max(0, t - max_len + 1):t]])
            nll -= torch.log_softmax(model(window).logits[0, -1], -1)[ids[t]].item()
    assert r["nll"] == pytest.approx(nll, rel=1e-5)


def test_batched_scores_equal_one_by_one(tokenizer):
    model = tiny_model(tokenizer.vocab_size, seed=2)
    requests = [([tokenizer.bos_token_id] + tokenizer.encode(c), tokenizer.encode(x))
                for c, x in [("中国的首都是", "北京"), ("1 + 1 =", " 2"), ("A long context " * 5, "ends here")]]
    batched = score_requests(model, requests, batch_size=3)
    single = [score_requests(model, [r], batch_size=1)[0] for r in requests]
    for (a, ga), (b, gb) in zip(batched, single):
        assert a == pytest.approx(b, abs=1e-4) and ga == gb


# ---------- 选择题：分数由我们指定的模型 ----------

class CharTokenizer:
    """逐字符的分词器：id 0 = BOS/PAD，其余每个字符一个 id。"""
    bos_token_id = pad_token_id = 0

    def __init__(self, chars):
        self.ids = {ch: i + 1 for i, ch in enumerate(chars)}
        self.vocab_size = len(chars) + 1

    def encode(self, text):
        return [self.ids[ch] for ch in text]


class UnigramModel(torch.nn.Module):
    """不看上下文：每个位置的下一个 token 都按同一个分布 probs。"""

    def __init__(self, probs):
        super().__init__()
        self.logits = torch.nn.Parameter(torch.log(torch.tensor(probs)))

    def forward(self, ids):
        return type("Out", (), {"logits": self.logits.expand(*ids.shape, -1)})()


def test_mc_modes_pick_the_options_we_built_them_to_pick():
    # 字符概率：a 0.3、b 0.1、c 0.01，字母里 B 最可能；sum 比 log p 之和，norm 比每字符的平均
    #   "aaaa": sum = 4·ln0.3 = −4.82，mean = −1.20；"b": sum = mean = −2.30
    #   → sum 选 "b"，norm 选 "aaaa"；"a" 对 "c" 两种都选 "a"；letter 永远选 B
    chars = "abcABq\n答案：. "
    tok = CharTokenizer(chars)
    probs = [1e-3] * tok.vocab_size
    for ch, p in {"a": 0.3, "b": 0.1, "c": 0.01, "A": 0.05, "B": 0.2}.items():
        probs[tok.ids[ch]] = p
    probs[0] = 1 - sum(probs[1:])
    model = UnigramModel(probs)
    rows = [{"question": "q", "A": "b", "B": "aaaa", "answer": "B"},   # sum ✗  norm ✓  letter ✓
            {"question": "q", "A": "aaaa", "B": "b", "answer": "B"},   # sum ✓  norm ✗  letter ✓
            {"question": "q", "A": "c", "B": "a", "answer": "B"},      # sum ✓  norm ✓  letter ✓
            {"question": "q", "A": "a", "B": "c", "answer": "A"}]      # sum ✓  norm ✓  letter ✗
    items = [parse_mc_row(r) for r in rows]
    r = evaluate_mc(model, tok, items, batch_size=3)
    assert r["sum"]["correct"] == "0111" and r["sum"]["predictions"] == [0, 1, 1, 0]
    assert r["norm"]["correct"] == "1011" and r["norm"]["predictions"] == [1, 0, 1, 0]
    assert r["letter"]["correct"] == "1110" and r["letter"]["predictions"] == [1, 1, 1, 1]
    for mode in ("sum", "norm", "letter"):
        assert r[mode]["acc"] == 0.75
        assert r[mode]["acc_stderr"] == pytest.approx(math.sqrt(0.75 * 0.25 / 3))  # std(ddof=1)/√n


# ---------- 评测文件 ----------

def test_malformed_lines_are_named_by_file_and_line(tmp_path):
    good = json.dumps({"question": "q", "A": "x", "B": "y", "answer": "A"})
    cases = {"not json": "{oops", "bad answer": json.dumps({"question": "q", "A": "x", "B": "y", "answer": "C"}),
             "one option": json.dumps({"question": "q", "A": "x", "answer": "A"})}
    for name, bad in cases.items():
        path = tmp_path / f"{name}.jsonl"
        path.write_text(f"{good}\n\n{bad}\n", encoding="utf-8")
        with pytest.raises(EvalDataError, match=f"{path}:3: "):
            load_mc_items(path)
    text = tmp_path / "t.jsonl"
    text.write_text('{"text": "ok"}\n{"txt": "typo"}\n', encoding="utf-8")
    with pytest.raises(EvalDataError, match=f"{text}:2: "):
        load_texts(text)


def test_options_list_and_index_answers_are_accepted(tmp_path):
    path = tmp_path / "arc.jsonl"
    path.write_text(json.dumps({"question": "q", "options": ["x", "y", "z"], "answer": 2}) + "\n", encoding="utf-8")
    (item,) = load_mc_items(path)
    assert item.options == ("x", "y", "z") and item.answer == 2


def test_shipped_sets_are_what_the_generator_writes_and_are_held_out():
    for lang in ("zh", "en"):
        shipped = [row for _, row in read_jsonl(SAMPLES / f"eval_mc_{lang}.jsonl")]
        assert shipped == make_eval_samples.build(lang), f"eval_mc_{lang}.jsonl 与 python dataset/make_eval_samples.py 的输出不一致"
        assert len(load_mc_items(SAMPLES / f"eval_mc_{lang}.jsonl")) >= 100
    texts = load_texts(SAMPLES / "eval_text.jsonl")
    training = "".join((SAMPLES / f).read_text(encoding="utf-8") for f in ("pretrain.jsonl", "sft.jsonl"))
    assert not [t for t in texts if t[:20] in training]


# ---------- lm-eval：同一批题、同一个模型，准确率与我们的逐项相同 ----------

def test_lm_eval_accuracy_equals_ours_on_the_local_tasks(tokenizer, monkeypatch):
    pytest.importorskip("lm_eval", reason="没有装 lm-eval：pip install -r requirements-eval.txt")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(REPO_ROOT)  # 本地任务 YAML 的 data_files 相对仓库根目录
    from trainer.evaluation.lm_eval_adapter import run_lm_eval
    model, limit = tiny_model(tokenizer.vocab_size, seed=3), 48
    theirs = run_lm_eval(model, tokenizer, ["minimind_mc_zh", "minimind_mc_zh_letter", "minimind_bpb"],
                         include_path="dataset/samples/lm_eval_tasks", limit=limit, batch_size=32)
    bpb = evaluate_text(model, tokenizer, load_texts(SAMPLES / "eval_text.jsonl"), max_len=512, batch_size=32)["bpb"]
    assert theirs["minimind_bpb"]["bits_per_byte,none"] == pytest.approx(bpb, rel=1e-9)
    ours = evaluate_mc(model, tokenizer, load_mc_items(SAMPLES / "eval_mc_zh.jsonl")[:limit], batch_size=32)
    pairs = [("minimind_mc_zh", "acc", "sum"), ("minimind_mc_zh", "acc_norm", "norm"),
             ("minimind_mc_zh_letter", "acc", "letter")]
    for task, metric, mode in pairs:
        assert theirs[task][f"{metric},none"] == pytest.approx(ours[mode]["acc"], abs=1e-12), (task, metric)
        assert theirs[task][f"{metric}_stderr,none"] == pytest.approx(ours[mode]["acc_stderr"], rel=1e-9)
    # 三种打分的准确率不全相同：上面的相等不是因为"什么都一样"
    assert len({ours[m]["correct"] for m in ("sum", "norm", "letter")}) > 1


def test_lm_eval_hf_model_on_the_converted_folder_agrees_with_ours(tokenizer, monkeypatch, tmp_path):
    """README 里给学习者的路：convert_model 转出的 transformers 文件夹 + lm-eval 自带的 --model hf（add_bos_token=True）。"""
    pytest.importorskip("lm_eval", reason="没有装 lm-eval：pip install -r requirements-eval.txt")
    pytest.importorskip("accelerate", reason="没有装 accelerate：pip install -r requirements-eval.txt")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(REPO_ROOT)
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from model.hf_format import save_hf_folder
    model, limit = tiny_model(tokenizer.vocab_size, seed=5), 24
    save_hf_folder(model, tokenizer, tmp_path / "hf")
    out = simple_evaluate(model="hf", model_args={"pretrained": str(tmp_path / "hf"), "add_bos_token": True},
                          tasks=["minimind_mc_en", "minimind_mc_en_letter"], device="cpu", limit=limit,
                          task_manager=TaskManager(include_path="dataset/samples/lm_eval_tasks", include_defaults=False),
                          log_samples=False)["results"]
    ours = evaluate_mc(model, tokenizer, load_mc_items(SAMPLES / "eval_mc_en.jsonl")[:limit])
    assert out["minimind_mc_en"]["acc,none"] == pytest.approx(ours["sum"]["acc"], abs=1e-12)
    assert out["minimind_mc_en"]["acc_norm,none"] == pytest.approx(ours["norm"]["acc"], abs=1e-12)
    assert out["minimind_mc_en_letter"]["acc,none"] == pytest.approx(ours["letter"]["acc"], abs=1e-12)


def test_wrapper_generates_until_a_stop_string(tokenizer):
    pytest.importorskip("lm_eval", reason="没有装 lm-eval：pip install -r requirements-eval.txt")
    from lm_eval.api.instance import Instance

    from trainer.evaluation.lm_eval_adapter import MiniMindLM
    model = tiny_model(tokenizer.vocab_size, seed=6)
    lm = MiniMindLM(model, tokenizer, max_len=32)
    prompt = "1 + 1 ="
    full = model.generate(torch.tensor([[tokenizer.bos_token_id] + tokenizer.encode(prompt)]), max_new_tokens=6,
                          do_sample=False, eos_token_id=tokenizer.eos_token_id)
    greedy = tokenizer.decode(full[0, len(tokenizer.encode(prompt)) + 1:].tolist())
    stop = greedy[2:4] if len(greedy) >= 4 else "\n"  # 取贪心输出中间的两个字符当 until
    request = Instance("generate_until", {}, (prompt, {"until": [stop], "max_gen_toks": 6}), 0)
    (text,) = lm.generate_until([request])
    assert text == greedy.split(stop)[0]


# ---------- 命令行端到端 ----------

@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory, tokenizer):
    path = tmp_path_factory.mktemp("ckpt") / "pretrain_32.pth"
    model = tiny_model(tokenizer.vocab_size, seed=4, family="minimind3")
    save_checkpoint(model, path)
    model.config.save(path.with_suffix(".json"))
    return path


def run_cli(*args):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "eval_model.py"), *map(str, args)],
                          capture_output=True, text=True, encoding="utf-8", env=env, timeout=300)


def test_cli_end_to_end_writes_json_and_a_table(tiny_checkpoint, tmp_path):
    out = tmp_path / "results.json"
    proc = run_cli("--weights", tiny_checkpoint, "--bpb_data", SAMPLES / "eval_text.jsonl",
                   "--mc_data", SAMPLES / "eval_mc_en.jsonl", "--gen_data", SAMPLES / "rl_eval.jsonl",
                   "--eval_samples", 2, "--max_gen_len", 4, "--limit", 12, "--output", out)
    assert proc.returncode == 0, proc.stderr
    record = json.loads(out.read_text(encoding="utf-8"))["results"]
    bpb = record["bpb"][str(SAMPLES / "eval_text.jsonl")]
    assert bpb["documents"] == 12 and bpb["bpb"] > 0
    mc = record["mc"][str(SAMPLES / "eval_mc_en.jsonl")]
    assert set(mc) == {"sum", "norm", "letter"} and all(len(m["correct"]) == 12 for m in mc.values())
    gen = record["generate"][str(SAMPLES / "rl_eval.jsonl")]
    assert gen["eval_n"] == 12 and {"eval_pass2", "eval_maj2"} <= set(gen)
    assert "acc_letter" in proc.stdout and "eval_pass2" in proc.stdout


def test_cli_reports_a_malformed_line_in_one_line(tiny_checkpoint, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "q", "A": "x", "B": "y", "answer": "A"}) + "\n{oops\n", encoding="utf-8")
    proc = run_cli("--weights", tiny_checkpoint, "--mc_data", bad)
    assert proc.returncode != 0
    assert len(proc.stderr.strip().splitlines()) == 1 and f"{bad}:2:" in proc.stderr, proc.stderr


def test_registered_wrapper_loads_from_model_args(tiny_checkpoint):
    """simple_evaluate(model="minimind", model_args="weights=...") 经 load_from_args 按 eval_model.py 的参数加载。"""
    pytest.importorskip("lm_eval", reason="没有装 lm-eval：pip install -r requirements-eval.txt")
    from trainer.evaluation.lm_eval_adapter import load_from_args
    model, tokenizer = load_from_args(weights=str(tiny_checkpoint), device="cpu", max_batch_size=None)
    assert model.config.family == "minimind3" and model.config.vocab_size == tokenizer.vocab_size
    with pytest.raises(ValueError, match="weight_path"):
        load_from_args(weight_path=str(tiny_checkpoint))
