"""04-advanced/02-inference 实验 3（滑动窗口与 attention sink）：小工具对照手算（毫秒级），
--quick 在子进程里从别的工作目录运行（TinyShakespeare 由 experiment_env 从回环服务器提供），
每条三态判定都从 JSON 里的逐批次 loss / 注意力权重重新做一遍噪声检验，核对与打印的一致。
"""

import pytest
import torch

from conftest import REPO_ROOT, find_conclusion, load_experiment_module, run_quick_experiment
from modules.common.lab_model import LabConfig, LabModel, record_attention, sliding_window_mask
from modules.common.noise import compare_runs, noninferior_runs

EXPERIMENTS = REPO_ROOT / "modules" / "04-advanced" / "02-inference" / "experiments"


def load_exp3():
    return load_experiment_module(EXPERIMENTS, "exp3_sliding_window")


def test_bos_and_uniform_mass_match_hand_computation():
    exp3 = load_exp3()
    ids = torch.tensor([[5, 6, 7], [1, 2, 3]])
    assert torch.equal(exp3.with_bos(ids, 9), torch.tensor([[9, 5, 6, 7], [9, 1, 2, 3]]))
    # 位置 2、3 的 query 各有 3、4 个 key：均匀分配时第 0 位平均得 (1/3 + 1/4) / 2
    assert exp3.uniform_first_mass(2, 4) == pytest.approx((1 / 3 + 1 / 4) / 2)
    weights = torch.zeros(2, 3, 4, 4)
    weights[:, :, 2:, 0] = torch.tensor([0.5, 0.1])  # 位置 2 给第 0 位 0.5，位置 3 给 0.1
    weights[:, :, 0, 0] = 1.0  # 位置 0 只能看自己：start=2 时不计入
    assert exp3.first_token_mass(weights, 2) == pytest.approx(0.3)
    assert exp3.first_token_mass(weights, 2, 3) == pytest.approx(0.5) and exp3.first_token_mass(weights, 0, 1) == 1.0


def test_windowed_copy_and_position_losses():
    exp3 = load_exp3()
    torch.manual_seed(0)
    model = LabModel(LabConfig(vocab_size=11, hidden_size=32, num_layers=2, n_heads=2, max_seq_len=12)).eval()
    x = torch.randint(0, 11, (3, 12))
    batches = [(x, x.clone())]
    full = exp3.position_losses(model, batches)  # (1, 11)
    by_hand = torch.nn.functional.cross_entropy(model(x).logits[:, :-1].reshape(-1, 11), x[:, 1:].reshape(-1),
                                                reduction="none").view(3, 11).mean(0)
    assert torch.allclose(full[0], by_hand, atol=1e-6)
    narrow = exp3.windowed(model, 4, 1)
    assert narrow.config.sliding_window == 4 and narrow.config.attention_sinks == 1 and model.config.sliding_window is None
    windowed = exp3.position_losses(narrow, batches)
    assert torch.allclose(windowed[0, :4], full[0, :4], atol=1e-5)  # 位置 < W：窗口装得下全部前文
    assert not torch.allclose(windowed[0, 4:], full[0, 4:], atol=1e-4)  # 之后第 1..i-4 位被挤出窗口
    # 窗口模型的注意力权重在窗口外（除了 sink）恰好为 0
    with record_attention(narrow) as attn:
        narrow(x)
    outside = ~sliding_window_mask(12, 12, 4, 1)
    assert attn["layers.1"][..., outside].abs().max().item() == 0.0
    # 挤出 <s> 的代价 = 位置 W..2W-1 上纯滑窗 − 滑窗 + 1 个 sink 的平均 loss，每批一个值
    plain = exp3.position_losses(exp3.windowed(model, 4, 0), batches)[0, 4:8].mean().item()
    kept = exp3.position_losses(exp3.windowed(model, 4, 1), batches)[0, 4:8].mean().item()
    assert exp3.evict_cost(model, batches, 4) == pytest.approx([plain - kept], abs=1e-6) and plain != kept
    masses = exp3.first_token_masses(narrow, batches, [(6, 12), (2, 4)])  # {段: [层][批]}
    assert masses[(6, 12)][1][0] == pytest.approx(exp3.first_token_mass(attn["layers.1"], 6, 12))
    assert masses[(2, 4)][0][0] == pytest.approx(exp3.first_token_mass(attn["layers.0"], 2, 4))
    assert 0.0 < masses[(6, 12)][0][0] < 1.0
    # 落在"1 个 sink + 窗口 4"之外的注意力：全注意力模型上 = 1 − 看得见的 key 的权重之和；窗口模型自己的 mask 下恰好为 0
    with record_attention(model) as full_attn:
        model(x)
    allowed = sliding_window_mask(12, 12, 4, 1)
    by_hand = [(1 - (full_attn[f"layers.{i}"] * allowed).sum(-1))[:, :, 8:11].mean().item() for i in range(2)]
    assert exp3.outside_mass(full_attn["layers.0"], 4, 1, 8, 11) == pytest.approx(by_hand[0], abs=1e-6) and by_hand[0] > 0.1
    assert exp3.outside_mass(attn["layers.1"], 4, 1, 0, 12) == pytest.approx(0.0, abs=1e-7)
    outside = exp3.outside_masses(model, batches, [4], 1)  # 远处 = 位置 8..10（到 T-2），各层平均
    assert sorted(outside) == ["W4 far", "W4 near"] and outside["W4 far"][0] == pytest.approx(sum(by_hand) / 2, abs=1e-6)
    assert outside["W4 near"][0] == pytest.approx(sum(exp3.outside_mass(full_attn[f"layers.{i}"], 4, 1, 4, 8)
                                                      for i in range(2)) / 2, abs=1e-6)


def test_recompute_and_head_masses_match_direct_forward():
    exp3 = load_exp3()
    torch.manual_seed(0)
    bos = 10
    model = LabModel(LabConfig(vocab_size=11, hidden_size=32, num_layers=2, n_heads=2, max_seq_len=12)).eval()
    x = torch.cat([torch.full((2, 1), bos), torch.randint(0, 10, (2, 11))], dim=1)  # (2, 12)，第 0 位是 <s>
    batches = [(x, x.clone())]
    full = exp3.position_losses(model, batches)[0]  # (11,)
    redo = exp3.recompute_losses(model, batches, 3, bos)[0]
    assert torch.allclose(redo[:3], full[:3])  # 位置 < W：与全注意力相同
    for i in (3, 7, 10):  # 位置 i：只用 <s> + 第 i-2..i 位重新前向，预测第 i+1 位
        inputs = torch.cat([torch.full((2, 1), bos), x[:, i - 2:i + 1]], dim=1)
        by_hand = torch.nn.functional.cross_entropy(model(inputs).logits[:, -1], x[:, i + 1], reduction="none").mean()
        assert redo[i].item() == pytest.approx(by_hand.item(), abs=1e-5)
    assert not torch.allclose(redo[3:], full[3:], atol=1e-4)
    masses = exp3.head_first_masses(model, batches)  # (1, 层, 头)
    with record_attention(model) as attn:
        model(x)
    assert masses.shape == (1, 2, 2)
    assert masses[0, 1, 0].item() == pytest.approx(attn["layers.1"][:, 0, 1:, 0].mean().item())
    fake = torch.tensor([[[0.1, 0.5]], [[0.2, 0.3]]])  # (批 2, 层 1, 头 2)：平均最大的是头 1
    assert exp3.strongest_head(fake) == pytest.approx([0.5, 0.3])


def test_snapshot_batches_store_weights_at_the_requested_steps():
    exp3 = load_exp3()
    model = torch.nn.Linear(1, 1, bias=False)
    calls = []
    get_batch = exp3.SnapshotBatches(model, lambda: calls.append("t") or "train", lambda: "val", at_steps=[0, 2])
    model.weight.data.fill_(1.0)
    assert get_batch("train") == "train"  # 第 0 次取训练批：0 次更新之后
    model.weight.data.fill_(2.0)
    assert get_batch("val") == "val"  # 验证批不计数
    get_batch("train")
    model.weight.data.fill_(3.0)
    get_batch("train")  # 第 2 次：存下 3.0
    assert sorted(get_batch.snapshots) == [0, 2] and calls == ["t", "t", "t"]
    assert get_batch.snapshots[0]["weight"].item() == 1.0 and get_batch.snapshots[2]["weight"].item() == 3.0


@pytest.mark.experiment
def test_exp3_sliding_window(tmp_path, experiment_env):
    exp3 = load_exp3()
    record, stdout = run_quick_experiment(EXPERIMENTS / "exp3_sliding_window.py", tmp_path, experiment_env)
    m = record["metrics"]
    cfg = m["config"]
    per_pos = {k: torch.tensor(v) for k, v in m["position_loss_batches_seed0"].items()}  # (batches, T-1)
    assert per_pos["full"].shape == (cfg["eval_batches"], cfg["block_size"] - 1)
    assert per_pos["full"].mean().item() < 2.6  # 学到了东西（字符一元熵约 3.3）
    claims = [c["claim"] for c in record["conclusions"]]
    # quick 不判定的结论（conclude_verdict 的 quick_reason）只打印测量值与原因：它们不在 JSON 的结论里，
    # 而在 metrics["quick_undecided"] 里，带本种子的测量值（含噪声检验的 Δ）与原因；W=8 四条、W=16 两条、W=32 七条、
    # 两个"随训练变大"，共 15 条，打印的"quick 模式不判定"行数与之相同
    undecided = m["quick_undecided"]
    assert len(undecided) == 15 and stdout.count("quick 模式不判定") == 15, [u["claim"] for u in undecided]
    assert all("quick 种子" in u["reason"] for u in undecided)
    assert all("Δ=" in u["evidence"] for u in undecided)

    def not_judged(fragment):  # 这条结论 quick 不判定：不在结论里，而在 quick_undecided 里
        assert not any(fragment in c for c in claims), fragment
        assert any(fragment in u["claim"] for u in undecided), fragment

    def span_loss(key, span):  # 第一个（唯一的）种子：([平均], 逐批次值)
        v = per_pos[key][:, span[0]:span[1]].mean(dim=1).tolist()
        return [sum(v) / len(v)], v

    def minus(a, b):
        return [x - y for x, y in zip(a, b)]

    T = cfg["block_size"]
    cfg_outside = m["outside_sinks"]
    assert cfg_outside == exp3.OUTSIDE_SINKS == 4
    c = find_conclusion(record, "位置 < W 时窗口装得下整个前文")
    worst = max((per_pos[f"W{w} S{s}"][:, :w] - per_pos["full"][:, :w]).abs().max().item()
                for w in cfg["windows"] for s in [0] + cfg["sinks"])
    assert c["status"] == ("holds" if worst < 1e-4 else "fails") == "holds"
    r = 1 - cfg["sink_recovery"]
    # quick 种子 42、1、7、5、2、3 上测过（modules.common.seed_sweep）：W=32 的 loss 效应只有 0.001–0.02 nats，
    # 几条在未确立与成立之间变；W=8 刚挤出的"纯滑窗更高"与远处的对照在种子 7、2 上未确立；"收回一半"在 W=8（种子 7、2）
    # 与 W=16（种子 7）上未确立，W=8、16 的前提在种子 7 上未确立——这些 quick 不判定。其余的在这六个种子上都成立，直接断言不等式
    for w in cfg["windows"]:
        decided = w not in exp3.QUICK_UNDECIDED_WINDOWS
        for where, span in (("刚被挤出", (w, 2 * w)), ("远处", (2 * w, T - 1))):
            near = where == "刚被挤出"
            full_l, full_b = span_loss("full", span)
            plain_l, plain_b = span_loss(f"W{w} S0", span)
            one_l, one_b = span_loss(f"W{w} S1", span)
            four_l, four_b = span_loss(f"W{w} S4", span)
            redo_l, redo_b = span_loss(f"W{w} recompute", span)
            prefix = f"W={w}，第 0 位{where}（位置 {'W..2W-1' if near else '>= 2W'}）："
            claim = prefix + "纯滑窗的 loss 高于全注意力"
            if decided and not (near and w == cfg["windows"][0]):
                c = find_conclusion(record, claim)
                assert c["status"] == compare_runs(plain_l, full_l, "greater", plain_b, full_b).status == "holds"
                assert plain_l[0] > full_l[0]
            else:
                not_judged(claim)
            claim = prefix + "滑窗 + 1 个 sink 的 loss 低于纯滑窗"
            if decided:
                c = find_conclusion(record, claim)
                assert c["status"] == compare_runs(one_l, plain_l, "less", one_b, plain_b).status == "holds"
                assert one_l[0] < plain_l[0]
            else:
                not_judged(claim)
            if near:
                if w not in exp3.PREMISE_CONTRAST_WINDOWS:  # "收回一半"quick 不判定，判定见完整模式
                    not_judged(prefix + "滑窗 + 4 个 sink 收回了纯滑窗比滑窗重算多出来的")
                # 前提（保留 <s> 收回的 vs 4 个 sink 也收不回的）quick 也不判定：W=8、16 在种子 7 上未确立
                if w in exp3.PREMISE_CONTRAST_WINDOWS:
                    not_judged("对照：" + prefix + "<s> 在这里已不是 sink")
                else:
                    not_judged(prefix + "<s> 是 sink——保留 <s> 收回的 loss（纯滑窗 − S=1）多于")
            else:  # 远处：同一个量的对照（方向相反），与刚被挤出时的"收回一半"配对
                claim = "对照：" + prefix + "滑窗 + 4 个 sink 收回的不到纯滑窗比滑窗重算多出来的"
                if decided and w != cfg["windows"][0]:
                    c = find_conclusion(record, claim)
                    four_extra_b = minus(four_b, redo_b)
                    plain_extra_b = [r * d for d in minus(plain_b, redo_b)]
                    four_extra, plain_extra = four_l[0] - redo_l[0], r * (plain_l[0] - redo_l[0])
                    v = compare_runs([four_extra], [plain_extra], "greater", four_extra_b, plain_extra_b)
                    assert c["status"] == v.status == "holds" and four_extra > plain_extra
                else:
                    not_judged(claim)
        full_l, full_b = span_loss("full", (2 * w, T - 1))
        redo_l, redo_b = span_loss(f"W{w} recompute", (2 * w, T - 1))
        claim = f"W={w}，远处（位置 >= 2W）：滑窗重算的 loss 也高于全注意力"
        if decided:
            c = find_conclusion(record, claim)
            assert c["status"] == compare_runs(redo_l, full_l, "greater", redo_b, full_b).status == "holds"
            assert redo_l[0] > full_l[0]
        else:
            not_judged(claim)
        # 远处落在 4 个 sink + 窗口之外的注意力多于刚被挤出时：逐批次值在 JSON 里，重算噪声检验（三个 W、六个种子都成立）
        far_b = m["outside_mass"][0][f"W{w} far"]
        near_b = m["outside_mass"][0][f"W{w} near"]
        far_l, near_l = [sum(far_b) / len(far_b)], [sum(near_b) / len(near_b)]
        assert all(0.0 <= v <= 1.0 for v in far_b + near_b)
        c = find_conclusion(record, f"W={w}：全注意力模型在远处（位置 >= 2W）落在 {cfg_outside} 个 sink + 窗口之外的注意力多于")
        assert c["status"] == compare_runs(far_l, near_l, "greater", far_b, near_b).status == "holds"
        assert far_l[0] > near_l[0]
    # 注意力：从 JSON 的逐批次、逐层逐头的值重算"最强的头"
    by_step = {int(k): torch.tensor(v) for k, v in m["head_first_mass_by_step"][0].items()}  # {步: (批, 层, 头)}
    assert sorted(by_step) == [round(f * cfg["steps"]) for f in exp3.SNAPSHOT_FRACTIONS] + [cfg["steps"]]
    end = exp3.strongest_head(by_step[cfg["steps"]])
    assert all(0.0 < v < 1.0 for v in end)
    eps = cfg["sink_epsilon"]
    # 对照"不到 ε"：quick 种子上最强的头都远低于 ε（0.06–0.09），断言它成立
    c = find_conclusion(record, f"对照：最强的头落在第 0 位上的平均注意力（query 位置 1-{T - 1}）不到 ε = {eps}")
    assert c["status"] == compare_runs([sum(end) / len(end)], [eps], "less", end, [eps] * len(end)).status == "holds"
    assert sum(end) / len(end) < eps
    first_step = min(by_step)
    # 注意力版的"随训练变大"：quick 种子 42、1、7、2 上不成立（第 30 步的模型还在平台期，最强的头反而更偏向 <s>）、
    # 种子 5 上未确立——quick 不判定
    not_judged(f"最强的头落在第 0 位上的注意力：训练结束时高于训练第 {first_step} 步时")
    # 干预版：把 <s> 挤出窗口的代价，逐批次值在 JSON 里
    cost = {int(k): v for k, v in m["evict_cost_by_step"][0].items()}  # {步: [批]}
    assert sorted(cost) == sorted(by_step) and m["evict_window"] == exp3.EVICT_WINDOW
    ew = exp3.EVICT_WINDOW
    plain_l, plain_b = span_loss(f"W{ew} S0", (ew, 2 * ew))
    one_l, one_b = span_loss(f"W{ew} S1", (ew, 2 * ew))
    assert cost[cfg["steps"]] == pytest.approx(minus(plain_b, one_b), abs=1e-5)  # 最后一步 = 表里 W=8 的纯滑窗 − S=1
    # 它的判定也只在完整模式：quick 种子 3 上成立、种子 42 上未确立（第 30 步与第 300 步之间，代价随种子差得多）
    not_judged(f"把 <s> 挤出窗口的代价随训练变大：W={ew}")
    w = cfg["train_window"]
    trained_l, trained_b = span_loss("window-trained", (w, 2 * w))
    for s in cfg["sinks"]:
        s_l, s_b = span_loss(f"window-trained S{s}", (w, 2 * w))
        c = find_conclusion(record, f"窗口训练（W={w}）的模型不需要 sink：位置 W..2W-1 上不加 sink 的 loss 最多比加 {s} 个 sink")
        margin = cfg["window_trained_margin"]
        assert c["status"] == noninferior_runs(trained_l, s_l, margin, "less", trained_b, s_b).status == "holds"
        assert trained_l[0] < s_l[0] + margin
    plain_l, plain_b = span_loss(f"W{w} S0", (w, 2 * w))
    c = find_conclusion(record, "窗口训练的模型的 loss 低于全注意力训练")
    assert c["status"] == compare_runs(trained_l, plain_l, "less", trained_b, plain_b).status == "holds"
    assert trained_l[0] < plain_l[0]
