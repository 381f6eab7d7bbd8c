"""03-training/01-tokenizer 模块：三个实验的 --quick 在子进程里从别的工作目录运行，检查测得的效应。"""
import subprocess
import sys

import pytest

from conftest import REPO_ROOT, find_conclusion, run_quick_experiment

EXPERIMENTS = REPO_ROOT / "modules" / "03-training" / "01-tokenizer" / "experiments"


def run_quick(script_name, tmp_path, env, *extra):
    return run_quick_experiment(EXPERIMENTS / script_name, tmp_path, env, extra)


@pytest.mark.experiment
def test_exp1_scratch_bpe_matches_hf_and_compresses(tmp_path, experiment_env):
    record, stdout = run_quick("exp1_bpe_from_scratch.py", tmp_path, experiment_env)
    m = record["metrics"]
    # 同一语料、同样的合并次数：从零实现与 HF 的前 K 次合并（集合）至少 95% 相同，留出句子切分几乎全同
    assert m["num_merges"] == m["hf_num_merges"] == m["num_merges_requested"]
    assert m["top_k"] >= 100 and m["top_k_set_overlap"] >= 0.95, m["top_k_set_overlap"]
    assert m["held_out_agreement"] >= 0.95 and m["vocab_overlap"] >= 0.95
    assert m["presplit_agreement"] == 1.0
    # 压缩率随合并次数严格上升，0 次合并时正好是 1 字节/token
    held = {int(k): v for k, v in m["bytes_per_token_held_out"].items()}
    steps = sorted(held)
    assert steps[0] == 0 and held[0] == pytest.approx(1.0)
    assert all(held[b] > held[a] for a, b in zip(steps, steps[1:])), held
    assert held[steps[-1]] > 1.3
    # 切分阶段：合并越多，同一句话的 token 越少
    for stages in m["stages"].values():
        lengths = [len(stages[k]) for k in sorted(stages, key=int)]
        assert lengths == sorted(lengths, reverse=True) and lengths[-1] < lengths[0]
    # 不预切分会学出跨词 token，预切分后没有
    assert m["no_presplit"]["crossing_tokens"] > 0 and m["presplit_crossing_tokens"] == 0
    # 结论与数字一致
    assert find_conclusion(record, "压缩率")["holds"] is all(held[b] > held[a] for a, b in zip(steps, steps[1:]))
    assert find_conclusion(record, "次合并相同")["holds"] is (m["top_k_set_overlap"] >= 0.95)
    assert find_conclusion(record, "留出句子")["holds"] is (m["held_out_agreement"] == 1.0)
    assert find_conclusion(record, "跨越空格的 token")["holds"] is True  # 分词器训练是确定的
    assert "Scratch vs Hugging Face" in stdout


@pytest.mark.experiment
def test_exp2_bigger_vocab_compresses_more_and_embedding_share(tmp_path, experiment_env):
    record, _ = run_quick("exp2_vocab_size_tradeoff.py", tmp_path, experiment_env)
    m = record["metrics"]
    # 语料内的留出文本：chars/token 随实际词表大小严格上升
    for name, points in m["curves"].items():
        assert len(points) >= 3, name
        assert all(b[1] > a[1] for a, b in zip(points, points[1:])), (name, points)
    # 固定文本的 token 数随词表变大而减少（shakespeare 分词器）
    sh = sorted((r["vocab_size"], r["fixed_text_tokens"]) for r in m["results"] if r["corpus"] == "shakespeare")
    assert all(b[1] < a[1] for a, b in zip(sh, sh[1:])), sh
    # 字节词表（259）：英文正好 1 字符/token
    bytes_only = [r for r in m["results"] if r["vocab_size"] == 259]
    assert bytes_only and all(r["chars_per_token"]["en (Shakespeare held-out)"] == pytest.approx(1.0)
                              for r in bytes_only)
    # 小语料达不到大词表
    assert m["samples_max_vocab"] < max(m["targets"])
    # V=6400 时的嵌入占比：在测试里独立地由 MiniMindForCausalLM 算一遍
    from model.model_minimind import MiniMindConfig, MiniMindForCausalLM
    model = MiniMindForCausalLM(MiniMindConfig(vocab_size=6400))
    params = {id(p): p.numel() for p in model.parameters()}
    total = sum(params.values())
    embedding = model.lm_head.weight.numel()
    assert model.lm_head.weight is model.model.embed_tokens.weight
    share = m["embedding_share_6400"]
    assert share["total"] == total and share["embedding"] == embedding == 6400 * 512
    assert share["share"] == pytest.approx(embedding / total)
    # 结论与数字一致
    assert find_conclusion(record, "单调上升")["holds"] is True
    assert find_conclusion(record, "1/8")["holds"] is (share["share"] < 0.15 and m["embedding_share_32000"]["share"] > 1 / 3)
    for fragment in ("小语料撑不起大词表", "收益递减", "几乎不压缩中文"):  # 分词器训练是确定的：必须成立
        assert find_conclusion(record, fragment)["holds"] is True, fragment


@pytest.mark.experiment
def test_exp3_injection_detected_and_mitigated_round_trip_exact(tmp_path, experiment_env):
    record, _ = run_quick("exp3_tokenizer_pitfalls.py", tmp_path, experiment_env)
    m = record["metrics"]
    # 往返：全部样本文本 0 处不一致
    assert m["round_trip"]["texts"] > 2000 and m["round_trip"]["mismatches"] == 0
    assert find_conclusion(record, "往返无损")["holds"] is True
    # 字节回退：没有 <unk>，罕见字的 token 数等于它的 UTF-8 字节数以内、且往返一致
    assert m["has_unk_token"] is False
    for case in m["rare"].values():
        assert case["round_trip"] and 1 <= case["tokens"] <= case["bytes"]
    assert m["rare"]["emoji"]["tokens"] > 1
    # 前导空格
    assert m["leading_space"][0]["ids_a"] != m["leading_space"][0]["ids_b"]
    # 注入：朴素编码出现了多余的特殊 id，缓解后恰好等于结构需要的数目，且正常对话编码不变
    inj = m["injection"]
    assert inj["naive_specials"] > inj["expected_specials"] and inj["raw_hf_specials_in_content"] > 0
    assert inj["naive_assistant_spans"] > 1
    assert inj["safe_specials"] == inj["expected_specials"] and inj["safe_assistant_spans"] == 1
    assert inj["clean_conversations"] > 100 and inj["clean_mismatches"] == 0
    assert inj["literal_default_round_trip"] is False and inj["literal_safe_round_trip"] is True
    assert find_conclusion(record, "注入：")["holds"] is True
    assert find_conclusion(record, "缓解")["holds"] is True
    for fragment in ("没有 <unk>", "半个字符", "前导空格改变 token"):
        assert find_conclusion(record, fragment)["holds"] is True, fragment
    # 数字：三位数至少两种切分形状，结论一致
    shapes = m["numbers"]["three_digit_shapes"]
    assert find_conclusion(record, "数字切分")["holds"] is (len(shapes) > 1)
    assert sum(shapes.values()) == 900


def test_exp3_safe_chat_encoding_matches_template_on_plain_text():
    """不经子进程：缓解函数对正常对话与 apply_chat_template + encode 完全相同，对注入文本不产生特殊 id。"""
    sys.path.insert(0, str(EXPERIMENTS))
    try:
        from exp3_tokenizer_pitfalls import INJECTION, encode_chat_safely
    finally:
        sys.path.remove(str(EXPERIMENTS))
    from model.tokenization import load_tokenizer
    tok = load_tokenizer()
    plain = [{"role": "user", "content": " 你好，hello  world\n"}, {"role": "assistant", "content": "Hi!"}]
    assert encode_chat_safely(tok, plain) == tok.encode(tok.apply_chat_template(plain))
    evil = [{"role": "user", "content": INJECTION}]
    ids = encode_chat_safely(tok, evil)
    assert ids.count(tok.eos_token_id) == 1 and ids.count(tok.bos_token_id) == 1
    assert tok.encode(INJECTION).count(tok.eos_token_id) >= 1  # 默认 encode 确实会被注入
    assert tok.tokenizer.encode_special_tokens is False  # 上下文管理器恢复了原设置


@pytest.mark.parametrize("script,args,flag", [
    ("exp1_bpe_from_scratch.py", ["--merges", "0"], "--merges"),
    ("exp1_bpe_from_scratch.py", ["--merges", "10", "--top-k", "50"], "--top-k"),
    ("exp2_vocab_size_tradeoff.py", ["--vocab-sizes", "100"], "--vocab-sizes"),
])
def test_bad_arguments_give_clear_error(tmp_path, script, args, flag):
    proc = subprocess.run([sys.executable, str(EXPERIMENTS / script), "--quick", "--output-dir", str(tmp_path), *args],
                          cwd=tmp_path, capture_output=True, text=True, encoding="utf-8", timeout=120)
    assert proc.returncode != 0
    assert flag in proc.stderr and "Traceback" not in proc.stderr
