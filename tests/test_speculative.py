"""model/speculative.py：投机解码。贪心时与目标模型自己的贪心解码逐 token 相同；采样时产出的 token 服从目标模型的分布
（卡方检验，另有一个必须被拒绝的对照）；α、cache 截回、streamer、报错。

模型都是随机初始化的小模型，权重放大到 std = 1/√fan_in，让输出依赖上下文（默认的 0.02 初始化下贪心只会重复上一个 token，
草稿与目标总是一致，查不出接受/拒绝的错误）。
"""
import copy
import math

import pytest
import torch

from model.checkpoint import save_checkpoint
from model.model_minimind import MiniMindConfig, MiniMindForCausalLM, sampling_probs
from model.speculative import SpeculativeStats, speculative_generate, truncate_cache, verify_sampling

VOCAB = 50


pytestmark = pytest.mark.usefixtures("one_thread")  # 小模型的算子只有几十微秒，多线程没有好处


def random_model(seed, hidden_size=64, num_hidden_layers=2, vocab_size=VOCAB) -> MiniMindForCausalLM:
    torch.manual_seed(seed)
    model = MiniMindForCausalLM(MiniMindConfig(hidden_size=hidden_size, num_hidden_layers=num_hidden_layers,
                                               num_attention_heads=4, num_key_value_heads=2, vocab_size=vocab_size,
                                               max_position_embeddings=512))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:  # 线性层与词嵌入（和 lm_head 共享）：(out, in)
                p.normal_(0, 1 / math.sqrt(p.shape[1]), generator=generator)
    return model.eval()


def perturbed_copy(model, noise, seed) -> MiniMindForCausalLM:
    """同一结构、权重加了相对噪声的副本：与原模型多数时候一致，但不总是一致（α 在 0 和 1 之间）。"""
    copy_ = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in copy_.parameters():
            if p.dim() == 2:
                p.add_(torch.randn(p.shape, generator=generator) * p.std() * noise)
    return copy_


@pytest.fixture(scope="module")
def target():
    return random_model(seed=0)


@pytest.fixture(scope="module")
def drafts(target):
    """两种草稿：更小的独立模型（hidden 32、1 层，cache 形状与目标不同），以及目标加噪声的副本。"""
    return {"small": random_model(seed=1, hidden_size=32, num_hidden_layers=1),
            "perturbed": perturbed_copy(target, noise=0.1, seed=5)}


def prompt_ids(length, seed):
    return torch.randint(3, VOCAB, (1, length), generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- 贪心：与普通解码逐 token 相同
@pytest.mark.parametrize("draft_name", ["small", "perturbed"])
def test_greedy_speculative_equals_plain_greedy(target, drafts, draft_name):
    draft = drafts[draft_name]
    total = SpeculativeStats()
    for length, seed in ((1, 1), (5, 2), (9, 3)):  # 含只有 1 个 token 的 prompt
        prompt = prompt_ids(length, seed)
        plain = target.generate(prompt, max_new_tokens=13, eos_token_id=-1)  # 13 不是任何 γ(+1) 的倍数
        for gamma in (1, 2, 4, 7):
            out, stats = speculative_generate(target, draft, prompt, max_new_tokens=13, num_draft_tokens=gamma,
                                              eos_token_id=-1)
            assert torch.equal(out, plain), (length, gamma)
            assert stats.new_tokens == 13 and stats.target_calls <= 13
            # 每轮至多拒绝一个；产出 = 接受的 + 每轮一个（改用目标的 token 或奖励 token）
            assert stats.rejected <= stats.target_calls and stats.new_tokens == stats.accepted + stats.target_calls
            assert stats.accepted + stats.rejected <= stats.drafted
            total.drafted += stats.drafted
            total.accepted += stats.accepted
            total.rejected += stats.rejected
    # 两条路径（接受、拒绝后改用目标的 token）都真的走到了，否则上面的相等说明不了什么
    assert 0 < total.accepted < total.drafted and total.rejected > 0, total
    # γ > 1 时有的草稿没被检验（同一轮前面的已被拒绝）：α = 接受 / 检验 大于 接受 / 草稿
    assert total.acceptance_rate > total.accepted / total.drafted


def test_greedy_speculative_stops_at_eos_like_plain_greedy(target, drafts):
    prompt = prompt_ids(4, seed=7)
    plain = target.generate(prompt, max_new_tokens=20, eos_token_id=-1)
    eos = plain[0, 4 + 6].item()  # 第 7 个新 token 当作 EOS
    expected = target.generate(prompt, max_new_tokens=20, eos_token_id=eos)
    assert expected.shape[1] < plain.shape[1]  # 确实提前停了
    for gamma in (1, 2, 4, 7):
        streamed = []
        out = target.generate(prompt, max_new_tokens=20, eos_token_id=eos, draft_model=drafts["perturbed"],
                              num_draft_tokens=gamma, streamer=streamed.append)
        assert torch.equal(out, expected), gamma
        assert all(t.shape == (1,) for t in streamed)
        assert torch.equal(torch.cat(streamed), out[0, 4:])  # 每个接受的 token 各推送一次，不多不少


def test_draft_identical_to_target_accepts_everything(target):
    prompt = prompt_ids(6, seed=4)
    same = copy.deepcopy(target)
    for gamma, new in ((1, 9), (3, 10), (4, 11)):
        out, stats = speculative_generate(target, same, prompt, max_new_tokens=new, num_draft_tokens=gamma,
                                          eos_token_id=-1)
        assert stats.acceptance_rate == 1.0 and stats.accepted == stats.drafted > 0 and stats.rejected == 0
        # 每轮产出 γ+1 个，最后一轮只提出剩余额度减 1 个草稿：目标前向次数 = ⌈new / (γ+1)⌉，产出恰好 new 个
        assert stats.target_calls == math.ceil(new / (gamma + 1)) and out.shape[1] == 6 + new
        assert stats.tokens_per_target_call == new / stats.target_calls


def test_generate_delegates_to_speculative_and_reports_stats(target, drafts):
    prompt = prompt_ids(5, seed=8)
    out, stats = target.generate(prompt, max_new_tokens=8, eos_token_id=-1, draft_model=drafts["small"],
                                 num_draft_tokens=3, return_stats=True)
    direct, direct_stats = speculative_generate(target, drafts["small"], prompt, max_new_tokens=8,
                                                num_draft_tokens=3, eos_token_id=-1)
    assert torch.equal(out, direct) and stats == direct_stats and not out.is_inference()
    plain, none = target.generate(prompt, max_new_tokens=8, eos_token_id=-1, return_stats=True)
    assert none is None and torch.equal(plain, out)
    assert speculative_generate(target, drafts["small"], prompt, max_new_tokens=0)[0].shape == prompt.shape


def test_truncate_cache_keeps_the_prefix(target):
    prompt = prompt_ids(7, seed=9)
    full = target(prompt, use_cache=True).past_key_values
    short = target(prompt[:, :4], use_cache=True).past_key_values
    for (k, v), (k4, v4) in zip(truncate_cache(full, 4), short):
        assert k.shape == k4.shape == (1, 4, 2, 16)
        assert torch.allclose(k, k4, atol=1e-6) and torch.allclose(v, v4, atol=1e-6)


# ---------------------------------------------------------------- 采样：分布与目标模型相同
PROMPT = torch.tensor([[5, 17, 33]])
NEW = 3  # γ=2 时首轮验证两个草稿位置再加奖励 token：三个新 token 覆盖接受、拒绝重抽、奖励三种来源


@torch.no_grad()
def exact_marginals(model, top_k=None):
    """model 按 sampling_probs 采样时，第 1、2、3 个新 token 的精确边缘分布，各 (V,)。

    把所有前缀枚举出来一次前向：第 2 个 token 要 V 条、第 3 个要 V² 条长度 T+2 的序列（V=50 时 2500 条，很快）。
    """
    V, T = VOCAB, PROMPT.shape[1]

    def next_probs(ids):  # ids: (N, L) → (N, V)
        return sampling_probs(model(ids).logits[:, -1, :].float(), 1.0, top_k, None)

    p1 = next_probs(PROMPT)[0]  # (V,)
    tokens = torch.arange(V)
    p2_given_1 = next_probs(torch.cat([PROMPT.expand(V, T), tokens[:, None]], dim=1))  # (V, V)：[x1, x2]
    pairs = torch.cartesian_prod(tokens, tokens)  # (V², 2)：第 i 行是 (i // V, i % V)
    p3_given_12 = next_probs(torch.cat([PROMPT.expand(V * V, T), pairs], dim=1))  # (V², V)
    joint12 = (p1[:, None] * p2_given_1).reshape(-1)  # (V²,)
    return [p1, p1 @ p2_given_1, joint12 @ p3_given_12]


def chi_square(counts: torch.Tensor, probs: torch.Tensor):
    """Pearson 卡方拟合优度：返回 (统计量, α=0.001 的临界值)。

    期望频数最小的若干个 token 合并成一格，使这一格的期望 >= 5（卡方近似的常用要求），其余每个 token 一格。
    临界值用 Wilson–Hilferty 近似 χ²_{df, 1-α} ≈ df·(1 − 2/(9df) + z·√(2/(9df)))³，z = Φ⁻¹(0.999) = 3.0902；
    df >= 10 时比精确分位数大不到 0.6%（例如 df=30：近似 59.81，精确 59.70），检验只会略偏保守。
    """
    n = counts.sum()
    expected = n * probs.double()
    order = expected.argsort()  # 从小到大
    n_merged = min(int((expected[order].cumsum(0) < 5).sum()) + 1, len(order))
    merged, single = order[:n_merged], order[n_merged:]
    observed = torch.cat([counts[merged].sum()[None], counts[single]]).double()
    expect = torch.cat([expected[merged].sum()[None], expected[single]])
    stat = ((observed - expect) ** 2 / expect).sum().item()
    df = len(observed) - 1
    z = 3.0902
    critical = df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3
    return stat, critical


def new_token_counts(sequences: torch.Tensor):
    """sequences (N, T + NEW) → 第 1..NEW 个新 token 的计数，各 (V,)。"""
    return [torch.bincount(sequences[:, PROMPT.shape[1] + i], minlength=VOCAB) for i in range(NEW)]


def test_verify_sampling_emits_the_target_distribution_at_every_position():
    """只测验证这一步，分布手工给定（V=5，γ=2，与上下文无关）：第 j 个产出的 token（在它存在的条件下）必须服从 p_j——
    第 1 个来自接受或拒绝重抽，第 3 个只可能是奖励 token。三个 p_j 互相差得很远，用错位置的分布会被发现。"""
    p = torch.tensor([[0.50, 0.30, 0.10, 0.10, 0.00],  # p_1：第 5 个 token 概率为 0（像 top_k 截掉的）
                      [0.05, 0.05, 0.10, 0.20, 0.60],  # p_2
                      [0.10, 0.60, 0.05, 0.05, 0.20]])  # p_3：只用于奖励 token
    q = torch.tensor([[0.20, 0.20, 0.00, 0.20, 0.40],  # q_1：第 3 个 token 草稿永远提不出来，只能靠重抽
                      [0.30, 0.30, 0.20, 0.10, 0.10]])
    generator = torch.Generator().manual_seed(0)
    emitted = [[], [], []]
    for _ in range(3000):
        drafts = torch.multinomial(q, num_samples=1, generator=generator)[:, 0]  # (2,)
        n, token = verify_sampling(drafts, q, p, generator)
        for position, t in enumerate(torch.cat([drafts[:n], token]).tolist()):
            emitted[position].append(t)
    for position, tokens in enumerate(emitted):
        counts = torch.bincount(torch.tensor(tokens), minlength=5)
        assert counts[p[position] == 0].sum() == 0
        stat, critical = chi_square(counts, p[position])
        assert stat < critical, f"第 {position + 1} 个产出的 token：χ² = {stat:.1f} ≥ {critical:.1f}"
    assert min(map(len, emitted)) > 300  # 奖励 token 也有足够的样本


@pytest.mark.parametrize("top_k", [None, 8])
def test_speculative_sampling_matches_the_target_distribution(target, drafts, top_k):
    # top_k=8 时独立的小草稿与目标的前 8 名几乎不重叠（α≈0），改用加了较大噪声的副本，让接受和拒绝都常见
    draft = drafts["small"] if top_k is None else perturbed_copy(target, noise=0.5, seed=6)
    exact = exact_marginals(target, top_k)
    generator = torch.Generator().manual_seed(123 if top_k is None else 321)
    runs, stats = [], SpeculativeStats()
    for _ in range(700):  # B=1 的逐条生成，几秒
        out, s = speculative_generate(target, draft, PROMPT, max_new_tokens=NEW, num_draft_tokens=2, do_sample=True,
                                      top_k=top_k, eos_token_id=-1, generator=generator)
        runs.append(out[0])
        stats.drafted += s.drafted
        stats.accepted += s.accepted
        stats.rejected += s.rejected
    assert 0.15 < stats.acceptance_rate < 0.85  # 接受与拒绝重抽都经常发生
    for position, (counts, probs) in enumerate(zip(new_token_counts(torch.stack(runs)), exact)):
        assert counts[probs == 0].sum() == 0, f"第 {position + 1} 个 token 抽到了目标分布里概率为 0 的 token"
        stat, critical = chi_square(counts, probs)
        assert stat < critical, f"第 {position + 1} 个新 token：χ² = {stat:.1f} ≥ {critical:.1f}"


def test_chi_square_check_accepts_plain_sampling_and_rejects_the_draft(target, drafts):
    """检验本身的对照：目标模型普通采样的样本必须通过（说明精确分布算对了），
    直接从草稿模型采样的样本必须被拒绝（说明样本量足以发现"分布不是目标的"）。"""
    exact = exact_marginals(target)
    torch.manual_seed(0)
    plain = target.generate(PROMPT.expand(700, -1), max_new_tokens=NEW, do_sample=True, eos_token_id=-1)
    for counts, probs in zip(new_token_counts(plain), exact):
        stat, critical = chi_square(counts, probs)
        assert stat < critical
    from_draft = drafts["small"].generate(PROMPT.expand(700, -1), max_new_tokens=NEW, do_sample=True, eos_token_id=-1)
    for counts, probs in zip(new_token_counts(from_draft), exact):
        stat, critical = chi_square(counts, probs)
        assert stat > 2 * critical


def test_speculative_sampling_is_reproducible_with_a_generator(target, drafts):
    def sample(seed):
        return speculative_generate(target, drafts["perturbed"], prompt_ids(4, seed=10), max_new_tokens=12,
                                    do_sample=True, temperature=0.8, top_p=0.9, eos_token_id=-1,
                                    generator=torch.Generator().manual_seed(seed))[0]

    assert torch.equal(sample(1), sample(1)) and not torch.equal(sample(1), sample(2))


# ---------------------------------------------------------------- 报错
def test_speculative_rejects_unsupported_inputs(target, drafts):
    draft, prompt = drafts["small"], prompt_ids(4, seed=11)
    with pytest.raises(ValueError, match="batch=1"):
        speculative_generate(target, draft, prompt.expand(2, -1))
    with pytest.raises(ValueError, match="padding"):
        target.generate(prompt, draft_model=draft, attention_mask=torch.tensor([[0, 1, 1, 1]]))
    other_vocab = MiniMindForCausalLM(MiniMindConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                                     num_key_value_heads=2, vocab_size=VOCAB + 1))
    with pytest.raises(ValueError, match="词表大小"):
        target.generate(prompt, draft_model=other_vocab)
    with pytest.raises(ValueError, match="repetition_penalty"):
        target.generate(prompt, draft_model=draft, repetition_penalty=1.2)
    with pytest.raises(ValueError, match="num_draft_tokens"):
        target.generate(prompt, draft_model=draft, num_draft_tokens=0)
    with pytest.raises(ValueError, match="KV cache"):
        target.generate(prompt, draft_model=draft, use_cache=False)
    with pytest.raises(ValueError, match="temperature"):
        target.generate(prompt, draft_model=draft, do_sample=True, temperature=0)
    # 全为 1 的 mask 没有 padding，可以用
    assert target.generate(prompt, draft_model=draft, attention_mask=torch.ones_like(prompt),
                           max_new_tokens=3, eos_token_id=-1).shape == (1, 7)


# ---------------------------------------------------------------- trainer/eval_llm.py --draft_weights
def save_model(model, path):
    save_checkpoint(model, path)
    model.config.save(path.with_suffix(".json"))
    return path


def test_eval_llm_chats_with_a_draft_model(tmp_path, capsys):
    from model.tokenization import load_tokenizer
    from trainer import eval_llm

    vocab = load_tokenizer().vocab_size
    target_path = save_model(random_model(seed=0, vocab_size=vocab), tmp_path / "target.pth")
    draft_path = save_model(random_model(seed=1, hidden_size=32, num_hidden_layers=1, vocab_size=vocab),
                            tmp_path / "draft.pth")
    chat = ["--weights", str(target_path), "--prompt", "你好", "--temperature", "0", "--max_new_tokens", "12",
            "--device", "cpu"]

    def reply(out):
        return out.split("MiniMind：", 1)[1].split("\n", 1)[0]

    eval_llm.main(chat)
    plain = capsys.readouterr().out
    eval_llm.main(chat + ["--draft_weights", str(draft_path), "--num_draft_tokens", "3"])
    speculative = capsys.readouterr().out
    assert reply(speculative) == reply(plain) and reply(plain).strip()  # 贪心：有没有草稿回答都一样
    assert "α =" in speculative and "tokens / target call" in speculative and "α" not in plain

    with pytest.raises(SystemExit) as exit_info:  # 投机解码不支持重复惩罚：参数解析时就说清楚
        eval_llm.main(chat + ["--draft_weights", str(draft_path), "--repetition_penalty", "1.2"])
    assert exit_info.value.code == 2 and "repetition_penalty" in capsys.readouterr().err
    small_vocab = save_model(random_model(seed=2), tmp_path / "small_vocab.pth")  # 词表 50，与分词器不符
    with pytest.raises(SystemExit) as exit_info:
        eval_llm.main(chat + ["--draft_weights", str(small_vocab)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 1 and "词表大小" in err and "Traceback" not in err
