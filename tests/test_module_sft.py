"""03-sft 模块：三个实验的 --quick 在子进程里从别的工作目录运行，检查测得的效应。"""
import subprocess
import sys

import pytest

from conftest import REPO_ROOT, find_conclusion, run_quick_experiment

EXPERIMENTS = REPO_ROOT / "modules" / "03-training" / "03-sft" / "experiments"


def run_quick(script_name, tmp_path, env, *extra):
    return run_quick_experiment(EXPERIMENTS / script_name, tmp_path, env, extra)


def mean(record, model, key):
    return record["metrics"]["results"][model][key]["mean"]


@pytest.mark.experiment
def test_exp1_only_assistant_tokens_are_trained(tmp_path, experiment_env):
    record, stdout = run_quick("exp1_chat_template.py", tmp_path, experiment_env)
    m = record["metrics"]
    roles = m["per_role"]
    # 用户、系统与角色头：一个 token 都不进 loss；助手回答（含 <|im_end|>）几乎都进
    assert roles["user"]["tokens"] > 0 and roles["user"]["in_loss"] == 0
    assert roles["system"]["tokens"] > 0 and roles["system"]["in_loss"] == 0
    assert roles["header"]["in_loss"] == 0
    assert roles["assistant"]["in_loss"] > 0.8 * roles["assistant"]["tokens"]
    # 学到的片段恰好是每个助手回答 + <|im_end|>，所有对话都如此（没有截断）
    assert m["exact_match"] == m["n_conversations"] == 278 and m["truncated"] == 0
    # 样本对话：进 loss 的 token 拼起来就是助手的回答
    sample = m["sample"]
    learned = [t["id"] for t in sample["tokens"] if t["in_loss"]]
    replies = [msg["content"] for msg in sample["messages"] if msg["role"] == "assistant"]
    from model.tokenization import load_tokenizer
    tok = load_tokenizer()
    assert tok.decode(learned, skip_special_tokens=False) == "".join(r + "<|im_end|>" for r in replies)
    assert all(not t["in_loss"] for t in sample["tokens"] if t["role"] in ("user", "system", "header"))
    # 占比与结论一致
    share = m["trained_share"]
    assert 0 < share["min"] <= share["median"] <= share["max"] < 1
    assert find_conclusion(record, "loss 权重为 0")["holds"] is True
    assert find_conclusion(record, "恰好是每个助手回答")["holds"] is True
    assert find_conclusion(record, "不到一半")["holds"] == (share["median"] < 0.5)
    assert "in loss" in stdout and "<|im_start|>" in stdout


@pytest.mark.experiment
def test_exp1_truncation_breaks_the_labels(tmp_path, experiment_env):
    """截断得太短时，有的回答被切掉 <|im_end|>：核对必须能发现（这条结论不是写死的）。"""
    record, _ = run_quick("exp1_chat_template.py", tmp_path, experiment_env, "--max-seq-len", "24")
    m = record["metrics"]
    assert m["truncated"] > 0 and m["exact_match"] < m["n_conversations"]
    assert find_conclusion(record, "恰好是每个助手回答")["holds"] is False
    assert m["per_role"]["user"]["in_loss"] == 0  # 截断不会让用户的话进 loss
    assert find_conclusion(record, "loss 权重为 0")["holds"] is True
    assert find_conclusion(record, "不到一半")["holds"] == (m["trained_share"]["median"] < 0.5)


def test_exp1_rejects_bad_index(tmp_path):
    proc = subprocess.run([sys.executable, str(EXPERIMENTS / "exp1_chat_template.py"), "--index", "100000",
                           "--output-dir", str(tmp_path)], cwd=tmp_path, capture_output=True, text=True,
                          encoding="utf-8", timeout=120)
    assert proc.returncode != 0
    assert "--index" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.experiment
def test_exp2_all_token_training_models_the_questions(tmp_path, experiment_env):
    record, stdout = run_quick("exp2_loss_masking.py", tmp_path, experiment_env)
    m = record["metrics"]
    assert m["n_heldout"] == 48 and m["n_train_conversations"] == 230
    for model in ("pretrained", "masked", "all-token"):
        for key in ("user_loss", "assistant_loss", "f1", "on_template"):
            value = mean(record, model, key)
            assert value is not None and value == value, (model, key, value)  # 有限
    # 核心效应：all-token 学会了预测用户的问题（用户文本 loss 大幅下降），masked 没学
    assert mean(record, "all-token", "user_loss") < mean(record, "masked", "user_loss") - 1.0
    # 两种 SFT 都让助手回答的 loss 低于预训练模型
    for model in ("masked", "all-token"):
        assert mean(record, model, "assistant_loss") < mean(record, "pretrained", "assistant_loss")
    # 结论的 holds 与数字一致
    assert find_conclusion(record, "用户文本的 loss 远低于")["holds"] == (
        mean(record, "all-token", "user_loss") < mean(record, "masked", "user_loss") - 0.5)
    assert find_conclusion(record, "留出的助手回答上 loss 更低")["holds"] == (
        mean(record, "masked", "assistant_loss") < mean(record, "all-token", "assistant_loss"))
    assert find_conclusion(record, "token F1 更高")["holds"] == (
        mean(record, "masked", "f1") > mean(record, "all-token", "f1"))
    assert find_conclusion(record, "守模板")["holds"] == (
        mean(record, "masked", "on_template") > mean(record, "all-token", "on_template"))
    assert "all-token" in stdout


@pytest.mark.experiment
def test_exp3_sft_answers_follow_the_template(tmp_path, experiment_env):
    record, stdout = run_quick("exp3_sft_effect.py", tmp_path, experiment_env)
    m = record["metrics"]
    assert m["prompt_kinds"] == {"fact": 22, "arithmetic": 21, "greeting": 5}
    pre, sft = m["results"]["pretrained"], m["results"]["sft"]
    # SFT 模型绝大多数回答以 <|im_end|> 结束，且回答比预训练模型更像参考答案
    assert sft["ended"]["mean"] >= 0.75
    assert sft["f1"]["mean"] > pre["f1"]["mean"]
    # 逐条样本与汇总一致
    answers = m["samples"]["sft"]
    assert len(answers) == 48
    assert abs(sum(a["ended"] for a in answers) / 48 - sft["ended"]["mean"]) < 1e-9
    # 结论的 holds 与数字一致
    assert find_conclusion(record, "以 <|im_end|> 结束的回答比例")["holds"] == (sft["ended"]["mean"] > pre["ended"]["mean"])
    assert find_conclusion(record, "token F1 更高")["holds"] == (sft["f1"]["mean"] > pre["f1"]["mean"])
    ref = m["mean_reference_tokens"]
    assert find_conclusion(record, "长度更接近")["holds"] == (
        abs(sft["mean_tokens"]["mean"] - ref) < abs(pre["mean_tokens"]["mean"] - ref))
    assert find_conclusion(record, "格式而不是知识")["holds"] == (
        sft["exact_fact"]["mean"] < 0.5 and sft["exact_arithmetic"]["mean"] < 0.5)
    assert "Same prompts" in stdout
