"""03-sft 模块：三个实验的 --quick 在子进程里从别的工作目录运行，检查测得的效应。"""
import subprocess
import sys

import pytest

from conftest import REPO_ROOT, exempt_conclusions, find_conclusion, run_quick_experiment
from modules.common.noise import compare, exceeds

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


def paired_verdict(record, a, b, key, direction, shift=0.0):
    """用 JSON 里第一个种子的逐对话 / 逐问题数值重算 quick 模式的噪声检验（与实验同一个 compare）。"""
    per = record["metrics"]["per_prompt"]
    return compare([x + shift for x in per[a][key]], per[b][key], direction, unit="batches")


@pytest.mark.experiment
def test_exp2_all_token_training_models_the_questions(tmp_path, experiment_env):
    record, stdout = run_quick("exp2_loss_masking.py", tmp_path, experiment_env)
    m = record["metrics"]
    per = m["per_prompt"]
    assert m["n_heldout"] == m["n_prompts"] == 48 and m["n_train_conversations"] == 230
    assert m["checkpoints"] == [5, 10, 15, 20, 25, 30, 35, 40, 50, 60, 70, 80]
    assert m["during_steps"] == [5, 10, 15, 20, 25, 30, 35, 40] and m["late_steps"] == [50, 60, 70, 80]
    # quick 默认每个种子只做 1 次 SFT（r = 0 用种子本身）：这个种子的值就是那一次的值
    assert m["replicates"] == 1
    for model in ("masked", "all-token"):
        (run,) = m["replicate_runs"][model][0]
        assert run["run_seed"] == record["metadata"]["seed"] and run["f1"] == mean(record, model, "f1")
        assert run["f1_late"] == mean(record, model, "f1_late") and len(run["f1_curve"]) == len(m["checkpoints"])
    for model in ("pretrained", "masked", "all-token"):
        for key in ("user_loss", "assistant_loss", "f1", "on_template", "continues_user"):
            value = mean(record, model, key)
            assert value is not None and value == value, (model, key, value)  # 有限
        assert all(len(per[model][k]) == 48 for k in ("on_template", "continues_user", "f1", "user_loss"))
    for model in ("masked", "all-token"):
        assert len(per[model]["f1_late"]) == 48

    def check(fragment, a, b, key, direction, shift=0.0):
        c = find_conclusion(record, fragment)
        recomputed = paired_verdict(record, a, b, key, direction, shift)
        assert c["noise"]["unit"] == "batches" and c["noise"]["n"] == 48, c
        assert c["status"] == recomputed.status and abs(c["noise"]["mean_delta"] - recomputed.mean_delta) < 1e-9, c
        return c, recomputed

    def avg(model, key):
        return sum(per[model][key]) / len(per[model][key])

    # 核心效应：all-token 学会了预测用户的问题（逐对话配对，低 0.5 nats 以上且超出噪声），masked 没学
    c, _ = check("用户文本的 loss 比 masked 低 0.5 nats", "all-token", "masked", "user_loss", "less", shift=0.5)
    assert c["status"] == "holds" and avg("all-token", "user_loss") < avg("masked", "user_loss") - 1.0, c
    # 同样步数，masked 在留出的助手回答上 loss 更低、回答更像参考答案
    c, _ = check("留出的助手回答上 loss 更低", "masked", "all-token", "assistant_loss", "less")
    assert c["status"] == "holds" and avg("masked", "assistant_loss") < avg("all-token", "assistant_loss"), c
    # 回答更像参考答案：看后半程（第 50–80 步 4 个检查点）的平均 F1；逐问题值 = 该问题在这些检查点上 F1 的平均
    c, _ = check("token F1 更高", "masked", "all-token", "f1_late", "greater")
    assert c["claim"].startswith("SFT 后半程") and c["status"] == "holds", c
    assert avg("masked", "f1_late") > avg("all-token", "f1_late"), c
    late = [m["checkpoints"].index(s) for s in m["late_steps"]]
    for model in ("masked", "all-token"):
        curve = m["curves"][model][0]
        assert abs(avg(model, "f1_late") - sum(curve["f1"][i] for i in late) / len(late)) < 1e-9
        assert curve["f1"][-1] == mean(record, model, "f1")  # 曲线的最后一点就是表里最后一步的 F1
    for model in ("masked", "all-token"):  # 两种 SFT 都让助手回答的 loss 低于预训练模型
        assert mean(record, model, "assistant_loss") < mean(record, "pretrained", "assistant_loss")
    # 学习曲线：SFT 途中（前 40 步 8 个检查点的平均）masked 守模板更好；逐问题值是 8 个检查点里守模板的比例
    c, _ = check("SFT 途中", "masked", "all-token", "on_template_during", "greater")
    assert c["status"] == "holds" and avg("masked", "on_template_during") > avg("all-token", "on_template_during"), c
    for model in ("masked", "all-token"):
        curve = m["curves"][model][0]
        assert abs(avg(model, "on_template_during") - sum(curve["on_template"][:8]) / 8) < 1e-9
    # 推理不在 <|im_end|> 停：all-token 接着替用户写下一轮，masked 从没学过 <|im_end|> 之后写什么
    c, _ = check("接着写 <|im_start|>user", "all-token", "masked", "continues_user", "greater")
    assert c["status"] == "holds" and avg("all-token", "continues_user") > avg("masked", "continues_user"), c
    # 对照：训练结束时两者都接近天花板，"masked 更守模板"不成立（Shi et al. 2024 那一侧；种子 42 上 all-token 反而更高）
    c, _ = check("对照：SFT 结束时", "masked", "all-token", "on_template", "greater")
    assert c["claim"].startswith("对照：") and c["status"] != "holds", c
    assert min(avg("masked", "on_template"), avg("all-token", "on_template")) >= 0.85, c
    curve = m["curves"]["all-token"][0]
    assert curve["steps"] == m["checkpoints"] and len(curve["on_template"]) == len(curve["steps"])
    assert "writes user turn" in stdout and "Learning curve" in stdout


def test_exp2_rejects_bad_replicates(tmp_path):
    proc = subprocess.run([sys.executable, str(EXPERIMENTS / "exp2_loss_masking.py"), "--quick", "--replicates", "0",
                           "--output-dir", str(tmp_path)], cwd=tmp_path, capture_output=True, text=True,
                          encoding="utf-8", timeout=120)
    assert proc.returncode != 0
    assert "--replicates" in proc.stderr and "Traceback" not in proc.stderr


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
    per = m["per_prompt"]

    def avg(values):
        return sum(values) / len(values)

    def check(fragment, verdict):
        """结论的判定与噪声细节必须与用逐问题数据（48 对，unit=batches）重算的一致。"""
        c = find_conclusion(record, fragment)
        assert c["noise"]["unit"] == "batches" and c["noise"]["n"] == verdict.n, c
        assert c["status"] == verdict.status and abs(c["noise"]["mean_delta"] - verdict.mean_delta) < 1e-9, c
        return c

    # 回答更像参考答案：超出逐问题噪声
    c = check("token F1 更高", compare(per["sft"]["f1"], per["pretrained"]["f1"], "greater", unit="batches"))
    assert c["status"] == "holds" and avg(per["sft"]["f1"]) > avg(per["pretrained"]["f1"]), c
    # SFT 教不会知识：事实、算术题完全答对的比例低于 50%
    for fragment, kind, n in (("事实题完全答对", "fact", 22), ("算术题完全答对", "arithmetic", 21)):
        c = check(fragment, exceeds(per["sft"][f"exact_{kind}"], 0.5, "less", unit="batches"))
        assert c["status"] == "holds" and len(per["sft"][f"exact_{kind}"]) == n and avg(per["sft"][f"exact_{kind}"]) < 0.5, c
    # 会停（对照）：quick 不判定（完整模式的预训练模型已在天花板；quick 只预训练 120 步，预训练模型会停的比例随种子变，
    # 42/1/7/5/11/13 上 0.85/0.60/0.15/0.92/1.00/1.00，对照的判定 ❔/✅/✅/✅/❔/❔）：不是结论，记进 quick_undecided，
    # 打印的是逐问题数据算出的差
    assert not [c for c in record["conclusions"] if "以 <|im_end|> 结束的回答比例" in c["claim"]]
    undecided = m["quick_undecided"]
    assert len(undecided) == 1 and undecided[0]["claim"].startswith("对照：SFT 后以 <|im_end|> 结束"), undecided
    stop = compare(per["sft"]["ended"], per["pretrained"]["ended"], "greater", unit="batches")
    assert f"Δ={stop.mean_delta:+.3g}" in undecided[0]["evidence"] and undecided[0]["reason"], undecided
    assert stdout.count("quick 模式不判定") == 1
    # 长度更接近参考：quick 下依赖种子——只核对判定由逐问题数据重算一致，再登记豁免
    check("长度更接近", compare(per["sft"]["length_error"], per["pretrained"]["length_error"], "less", unit="batches"))
    exempt_conclusions(record, {
        "长度更接近": "quick 种子 42 的 SFT 模型（80 步）有几条回答停不下来、重复到 48 个 token，长度误差 9.1 → 6.4 "
                  "只在噪声以内（quick 1、7、5、11、13 与完整模式成立，见 README 的逐种子表）"})
    assert "Same prompts" in stdout
