"""trainer/rl/：任务、奖励、损失、采样、评测的单元测试（手算的小例子，秒级）。"""
import itertools
import json
import math

import pytest
import torch

from conftest import REPO_ROOT
from dataset import make_rl_samples
from dataset.reason_dataset import ReasonSFTDataset
from dataset.rl_dataset import RLPromptDataset
from model.model_minimind import MiniMindConfig, MiniMindForCausalLM
from model.tokenization import load_tokenizer
from trainer.rl import losses, rewards, tasks
from trainer.rl.evaluate import majority_correct, pass_at_k
from trainer.rl.rollout import completion_logprobs, completion_mask_from, sample_replies

SAMPLES = REPO_ROOT / "dataset" / "samples"


# ---------------------------------------------------------------- 任务与数据
@pytest.mark.parametrize("task", tasks.TASK_NAMES)
def test_every_generated_problem_passes_its_own_checker(task):
    import random
    rng = random.Random(0)
    for _ in range(50):
        p = tasks.make_problem(task, rng)
        assert tasks.check(task, p.answer, p.answer)
        assert not tasks.check(task, p.answer, p.answer + " 1")  # 多一个数就不对
        assert "?" not in p.question and len(p.question) < 40
        assert not tasks.check(task, p.answer, "不知道")


def test_typical_mistakes_fail_the_checker():
    import random
    rng = random.Random(1)
    for task in tasks.TASK_NAMES:
        problems = [tasks.make_problem(task, rng) for _ in range(200)]
        mistakes = [tasks.typical_mistake(p) for p in problems]
        # 错误答法只在退化情形（首尾相同、数字全相同）下恰好等于正确答案；其余都判错
        assert all(tasks.check(task, p.answer, m) == (m == p.answer) for p, m in zip(problems, mistakes))
        assert sum(m != p.answer for p, m in zip(problems, mistakes)) >= 160, task


def test_checkers_by_hand():
    assert tasks.check("max", "9", " 9 ") and not tasks.check("max", "9", "1")
    assert tasks.check("min", "1", "1") and not tasks.check("min", "1", "1 1")
    assert tasks.check("count", "3", "3") and not tasks.check("count", "3", "3 3")
    with pytest.raises(ValueError, match="未知任务"):
        tasks.check("divide", "1", "1")


def test_shipped_samples_match_the_generator_and_held_out_is_disjoint():
    built = make_rl_samples.build()
    for name, rows in built.items():
        shipped = [json.loads(line) for line in (SAMPLES / name).read_text(encoding="utf-8").splitlines()]
        assert shipped == rows, f"{name} 与 python dataset/make_rl_samples.py 的输出不一致"
        assert (SAMPLES / name).stat().st_size < 300_000
    question = lambda row: row["conversations"][0]["content"]  # noqa: E731
    held_out = {question(r) for r in built["rl_eval.jsonl"]}
    for name in ("reason_sft.jsonl", "task_sft.jsonl", "rl_train.jsonl"):
        assert not held_out & {question(r) for r in built[name]}, name
    pairs = built["rm_pairs.jsonl"]
    assert not held_out & {r["chosen"][0]["content"] for r in pairs}
    for r in pairs:  # 同一道题；chosen 是从题面独立算出的正确答案，rejected 不是
        assert r["chosen"][0] == r["rejected"][0]
        head, body = r["chosen"][0]["content"].split(": ")
        if head in ("Max", "Min"):
            numbers = [int(x) for x in body.split()]
            right = str(max(numbers) if head == "Max" else min(numbers))
        else:  # "Count a in: b a c"
            right = str(body.split().count(head.split()[1]))
        assert r["chosen"][1]["content"] == right != r["rejected"][1]["content"], r


def test_reason_dataset_weights_exactly_the_tag_tokens():
    tok = load_tokenizer()
    ds = ReasonSFTDataset(SAMPLES / "reason_sft.jsonl", tok, max_seq_len=96, tag_weight=10.0)
    item = ds[0]
    heavy = item["input_ids"][item["loss_weight"] == 10.0].tolist()
    assert "".join(tok.decode([i]) for i in heavy) == "<think></think><answer></answer>"
    assert (item["loss_weight"][item["labels"] == -100] == 0).all()  # prompt 与 padding 不计
    assert (item["loss_weight"] == 1.0).sum() > 3  # 草稿与答案是普通权重


# ---------------------------------------------------------------- 奖励
def test_answer_extraction_and_format_reward():
    good = "<think>\n7+8=15\n</think>\n<answer>\n85\n</answer>"
    assert rewards.extract_answer(good) == "85"
    assert rewards.extract_answer("<think>x</think> 12") == "12" and rewards.extract_answer(" 12 ") == "12"
    assert rewards.format_reward(good) == 1.0
    assert rewards.format_reward("<think>\nx\n</think>\n\n<answer>\n1\n</answer>") == 1.0  # minimind-3 的空行
    assert rewards.format_reward("<answer>85</answer>") == pytest.approx(0.5 / 1.5)  # 两个标签各 0.25
    assert rewards.format_reward("85") == 0.0
    assert rewards.correctness_reward(good, "max", "85") == 1.0 and rewards.correctness_reward(good, "max", "86") == 0


def test_overlong_penalty_is_dapos_soft_ramp():
    assert rewards.overlong_penalty(10, True, max_len=20, cache_len=8) == 0.0  # 12 以内不罚
    assert rewards.overlong_penalty(16, True, max_len=20, cache_len=8) == pytest.approx(-0.5)
    assert rewards.overlong_penalty(20, True, max_len=20, cache_len=8) == pytest.approx(-1.0)
    assert rewards.overlong_penalty(20, False, max_len=20, cache_len=8) == -1.0  # 没写完


def test_weighted_verifiable_rewards():
    rows = [{"task": "count", "answer": "3"}] * 2
    out = rewards.verifiable_rewards(["<think>\n1+2\n</think>\n<answer>\n3\n</answer>", "4"], rows, [10, 1],
                                     [True, True], 20, rewards.RewardWeights(correct=1.0, format=0.5))
    assert out["reward"].tolist() == pytest.approx([1.5, 0.0])
    with pytest.raises(ValueError, match="answer 与 task"):
        rewards.verifiable_rewards(["1"], [{"conversations": []}], [1], [True], 20, rewards.RewardWeights())


# ---------------------------------------------------------------- 优势与 KL
def test_group_advantages_by_hand():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0])  # 两组，G=4；第二组全相同
    adv = losses.group_advantages(r, 4, eps=0.0 + 1e-12)
    assert adv[:4].tolist() == pytest.approx([1, -1, -1, 1])  # 均值 0.5、总体标准差 0.5
    assert adv[4:].tolist() == [0, 0, 0, 0]  # 全相同 → 没有学习信号
    centred = losses.group_advantages(r, 4, scale_std=False)
    assert centred[:4].tolist() == pytest.approx([0.5, -0.5, -0.5, 0.5])


def test_k3_kl_is_nonnegative_and_zero_at_equality():
    torch.manual_seed(0)
    logp, ref = -torch.rand(1000) * 5, -torch.rand(1000) * 5
    kl = losses.k3_kl(logp, ref)
    assert (kl >= 0).all() and kl.mean() > 0
    assert losses.k3_kl(logp, logp).abs().max() == 0
    # 是 KL(π‖π_ref) 的无偏估计：在 π 下取期望等于真 KL
    p, q = torch.tensor([0.7, 0.2, 0.1]), torch.tensor([0.4, 0.4, 0.2])
    expected = (p * losses.k3_kl(p.log(), q.log())).sum()
    assert expected.item() == pytest.approx((p * (p / q).log()).sum().item(), abs=1e-6)


# ---------------------------------------------------------------- 策略损失
def _grad(loss_type, logp_value, old_value, advantage, **kw):
    logp = torch.tensor([[logp_value]], requires_grad=True)
    loss, stats = losses.policy_loss(logp, torch.tensor([[old_value]]), torch.tensor([advantage]),
                                     torch.ones(1, 1), loss_type, **kw)
    loss.backward()
    return logp.grad.item(), stats


@pytest.mark.parametrize("loss_type", ["grpo", "dapo", "ppo"])
def test_clipped_branch_has_zero_gradient(loss_type):
    # 比率 e^{0.5} ≈ 1.65 > 1.2 且优势为正：取裁剪支，梯度为 0；比率在范围内时梯度 = −r·Â
    grad, stats = _grad(loss_type, 0.5, 0.0, 1.0, clip_low=0.2, clip_high=0.2)
    assert grad == 0 and stats["clip_fraction"] == 1.0
    grad, stats = _grad(loss_type, -0.5, 0.0, -1.0, clip_low=0.2, clip_high=0.2)  # r ≈ 0.61 < 0.8、优势为负
    assert grad == 0 and stats["clip_fraction"] == 1.0
    grad, _ = _grad(loss_type, 0.5, 0.0, -1.0, clip_low=0.2, clip_high=0.2)  # 比率大但优势为负：不裁剪（悲观的一边）
    assert grad == pytest.approx(math.exp(0.5))
    grad, stats = _grad(loss_type, 0.1, 0.0, 2.0, clip_low=0.2, clip_high=0.2)
    assert grad == pytest.approx(-2.0 * math.exp(0.1)) and stats["clip_fraction"] == 0.0


def test_cispo_keeps_gradient_where_ppo_clips():
    # 同样 r ≈ 1.65、Â = 1：CISPO 的权重被截到 1+ε_high=1.2（不求导），梯度 = −1.2·Â，不是 0
    grad, stats = _grad("cispo", 0.5, 0.0, 1.0, clip_low=1.0, clip_high=0.2)
    assert grad == pytest.approx(-1.2) and stats["clip_fraction"] == 1.0


def test_each_loss_matches_its_formula_on_a_hand_example():
    logp = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -0.4, 0.0]])
    old = torch.tensor([[-1.2, -1.5, -0.5], [-0.3, -0.9, 0.0]])
    ref = torch.tensor([[-1.0, -1.0, -1.0], [-0.5, -0.5, -0.5]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])  # 第二条只有 2 个 token
    adv = torch.tensor([1.0, -0.5])
    r = (logp - old).exp()
    kl = (ref - logp).exp() - (ref - logp) - 1

    def clipped_obj(lo, hi):
        return torch.min(r * adv[:, None], r.clamp(lo, hi) * adv[:, None])

    beta = 0.1
    per_token = -clipped_obj(0.8, 1.2) + beta * kl
    grpo = ((per_token * mask).sum(1) / mask.sum(1)).mean()  # 回答内平均，再对回答平均
    dapo = (-clipped_obj(0.8, 1.28) * mask).sum() / mask.sum()  # 所有 token 一起平均
    cispo = ((-r.clamp(0.0, 5.0) * adv[:, None] * logp + beta * kl) * mask).sum() / mask.sum()
    got = {t: losses.policy_loss(logp, old, adv, mask, t, c_lo, c_hi, kl, b)[0].item()
           for t, c_lo, c_hi, b in [("grpo", 0.2, 0.2, beta), ("dapo", 0.2, 0.28, 0.0), ("cispo", 1.0, 4.0, beta)]}
    assert got["grpo"] == pytest.approx(grpo.item())
    assert got["dapo"] == pytest.approx(dapo.item())
    assert got["cispo"] == pytest.approx(cispo.item())
    assert got["grpo"] != pytest.approx(got["dapo"])  # 聚合方式不同，结果确实不同


def test_masked_tokens_do_not_affect_the_loss():
    logp = torch.tensor([[-1.0, -2.0, -0.5]], requires_grad=True)
    mask = torch.tensor([[1, 1, 0]])
    loss, _ = losses.policy_loss(logp, logp.detach(), torch.tensor([1.0]), mask, "grpo")
    loss.backward()
    assert logp.grad[0, 2] == 0 and (logp.grad[0, :2] != 0).all()


# ---------------------------------------------------------------- GAE 与价值损失
def test_gae_matches_a_hand_computation():
    rewards_ = torch.tensor([[0.0, 0.0, 1.0, 9.0]])  # 最后一个位置在掩码外，不该参与
    values = torch.tensor([[0.5, 0.6, 0.7, 5.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    gamma, lam = 0.9, 0.8
    d2 = 1.0 - 0.7  # 最后一个真实 token：下一状态价值为 0
    d1 = 0.0 + gamma * 0.7 - 0.6
    d0 = 0.0 + gamma * 0.6 - 0.5
    a2 = d2
    a1 = d1 + gamma * lam * a2
    a0 = d0 + gamma * lam * a1
    adv, ret = losses.gae(rewards_, values, mask, gamma, lam)
    assert adv[0].tolist() == pytest.approx([a0, a1, a2, 0.0])
    assert ret[0].tolist() == pytest.approx([a0 + 0.5, a1 + 0.6, a2 + 0.7, 0.0])


def test_value_loss_is_clipped_by_hand():
    v, old, ret = torch.tensor([[1.0]]), torch.tensor([[0.0]]), torch.tensor([[2.0]])
    # 未裁剪 (1−2)² = 1；裁剪后 V = 0.2，(0.2−2)² = 3.24；取大者的一半
    assert losses.value_loss(v, old, ret, torch.ones(1, 1), clip=0.2).item() == pytest.approx(1.62)


# ---------------------------------------------------------------- 采样与掩码
def test_completion_mask_stops_after_the_first_eos():
    ids = torch.tensor([[5, 6, 2, 2], [5, 2, 7, 2], [5, 6, 7, 8]])
    assert completion_mask_from(ids, eos_id=2).tolist() == [[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]]


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    tok = load_tokenizer()
    model = MiniMindForCausalLM(MiniMindConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                               vocab_size=tok.vocab_size)).eval()
    return model, tok, RLPromptDataset(SAMPLES / "rl_eval.jsonl", tok, max_prompt_len=32)


def test_rollout_masks_exclude_prompt_and_padding_and_logprobs_match_unpadded(tiny):
    model, tok, ds = tiny
    items = [ds[i] for i in range(4)]
    ids, mask = torch.stack([x["prompt_ids"] for x in items]), torch.stack([x["prompt_mask"] for x in items])
    assert len(set(mask.sum(1).tolist())) > 1  # prompt 长短不一，确实有左 padding
    torch.manual_seed(1)
    ro = sample_replies(model, tok, ids, mask, num_generations=2, max_new_tokens=6, temperature=1.0)
    assert ro.sequences.shape[0] == 8 and ro.completion_mask.shape == ro.completion_ids.shape
    P = ro.prompt_len
    assert (ro.attention_mask[:, :P] == mask.repeat_interleave(2, 0)[:, -P:]).all()  # padding 的注意力为 0
    logp = completion_logprobs(model, ro)
    for i in range(8):
        real = ro.sequences[i][ro.attention_mask[i].bool()]  # 去掉左 padding 单独算
        n, p = int(ro.n_tokens[i]), int(ro.attention_mask[i, :P].sum())
        alone = model(real[None, :p + n]).logits[0, p - 1:p + n - 1].log_softmax(-1)
        expected = alone.gather(1, real[p:p + n, None]).squeeze(1)
        assert torch.allclose(logp[i, :n], expected, atol=1e-4)
        assert ro.completion_mask[i, n:].sum() == 0  # 回答掩码只到第一个 <|im_end|>


# ---------------------------------------------------------------- 评测
def test_pass_at_k_matches_brute_force():
    for n, c, k in [(5, 2, 1), (5, 2, 2), (6, 3, 4), (4, 0, 2), (4, 4, 1), (8, 1, 8)]:
        combos = list(itertools.combinations([1] * c + [0] * (n - c), k))
        brute = sum(any(s) for s in combos) / len(combos)
        assert pass_at_k(n, c, k) == pytest.approx(brute)
    with pytest.raises(ValueError):
        pass_at_k(3, 4, 1)


def test_majority_vote():
    replies = ["<answer>\n5\n</answer>", "5", "6", "<answer>6</answer>", "6"]
    assert majority_correct(replies, "count", "6") and not majority_correct(replies, "count", "5")


def test_hf_reward_model_path_scores_like_transformers(tmp_path):
    """--reward_model 指向 Hugging Face 目录的路径：离线造一个极小的序列分类模型（transformers 的 Llama 类）
    和我们的分词器，经 load_reward_model 打分，与直接用 transformers 在同样 token 上前向的分数相同。"""
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from model.tokenization import load_tokenizer
    from trainer.rl.rewards import HFRewardModel, load_reward_model

    tokenizer = load_tokenizer()
    tokenizer.save(tmp_path)
    config_file = tmp_path / "tokenizer_config.json"
    tokenizer_config = json.loads(config_file.read_text(encoding="utf-8"))
    tokenizer_config.setdefault("tokenizer_class", "PreTrainedTokenizerFast")
    config_file.write_text(json.dumps(tokenizer_config, ensure_ascii=False), encoding="utf-8")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, num_labels=1,
                         pad_token_id=tokenizer.pad_token_id)
    hf_model = LlamaForSequenceClassification(config).eval()
    hf_model.save_pretrained(tmp_path)

    reward_model = load_reward_model(str(tmp_path), tokenizer, "cpu", path_of=None)
    assert isinstance(reward_model, HFRewardModel)
    conversations = [[{"role": "user", "content": "3 1 2 里最大的是？"}, {"role": "assistant", "content": answer}]
                     for answer in ("3", "<think>\n比较\n</think>\n<answer>\n1\n</answer>")]
    scores = reward_model.score(conversations)
    with torch.no_grad():
        expected = [hf_model(torch.tensor([tokenizer.encode(tokenizer.apply_chat_template(c))])).logits[0, 0].item()
                    for c in conversations]
    assert scores.shape == (2,) and torch.allclose(scores, torch.tensor(expected), atol=1e-5), (scores, expected)
    assert scores[0] != scores[1]
    with pytest.raises(FileNotFoundError, match="--reward_model"):
        HFRewardModel(tmp_path / "missing")
