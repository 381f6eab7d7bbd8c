"""04-advanced/02-inference 实验 3（滑动窗口与 attention sink）：小工具对照手算（毫秒级），
--quick 在子进程里从别的工作目录运行（TinyShakespeare 由 experiment_env 从回环服务器提供），
每条三态判定都从 JSON 里的逐批次 loss / 注意力权重重新做一遍噪声检验，核对与打印的一致。
"""

import pytest
import torch

from conftest import REPO_ROOT, find_conclusion, load_experiment_module, run_quick_experiment
from modules.common.lab_model import LabConfig, LabModel, record_attention, sliding_window_mask
from modules.common.noise import compare_runs, equivalent_runs

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
    masses = exp3.first_token_masses(narrow, batches, [(6, 12), (2, 4)])  # {段: [层][批]}
    assert masses[(6, 12)][1][0] == pytest.approx(exp3.first_token_mass(attn["layers.1"], 6, 12))
    assert masses[(2, 4)][0][0] == pytest.approx(exp3.first_token_mass(attn["layers.0"], 2, 4))
    assert 0.0 < masses[(6, 12)][0][0] < 1.0


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


def consistent(status, delta_supports_claim: float) -> bool:
    """三态判定与测得的方向一致：成立时效应方向支持声明，不成立时方向相反。"""
    return (status != "holds" or delta_supports_claim > 0) and (status != "fails" or delta_supports_claim < 0)


@pytest.mark.experiment
def test_exp3_sliding_window(tmp_path, experiment_env):
    exp3 = load_exp3()
    record, _ = run_quick_experiment(EXPERIMENTS / "exp3_sliding_window.py", tmp_path, experiment_env)
    m = record["metrics"]
    cfg = m["config"]
    per_pos = {k: torch.tensor(v) for k, v in m["position_loss_batches_seed0"].items()}  # (batches, T-1)
    assert per_pos["full"].shape == (cfg["eval_batches"], cfg["block_size"] - 1)
    assert per_pos["full"].mean().item() < 2.6  # 学到了东西（字符一元熵约 3.3）

    def span_loss(key, span):  # 第一个（唯一的）种子：([平均], 逐批次值)
        v = per_pos[key][:, span[0]:span[1]].mean(dim=1).tolist()
        return [sum(v) / len(v)], v

    T = cfg["block_size"]
    c = find_conclusion(record, "位置 < W 时窗口装得下整个前文")
    worst = max((per_pos[f"W{w} S{s}"][:, :w] - per_pos["full"][:, :w]).abs().max().item()
                for w in cfg["windows"] for s in [0] + cfg["sinks"])
    assert c["status"] == ("holds" if worst < 1e-4 else "fails") == "holds"
    r = 1 - cfg["sink_recovery"]
    for w in cfg["windows"]:
        for where, span in (("刚被挤出", (w, 2 * w)), ("远处", (2 * w, T - 1))):
            full_l, full_b = span_loss("full", span)
            plain_l, plain_b = span_loss(f"W{w} S0", span)
            one_l, one_b = span_loss(f"W{w} S1", span)
            four_l, four_b = span_loss(f"W{w} S4", span)
            c = find_conclusion(record, f"W={w}，第 0 位{where}（位置 {'W..2W-1' if where == '刚被挤出' else '>= 2W'}）："
                                        "纯滑窗的 loss 高于全注意力")
            assert c["status"] == compare_runs(plain_l, full_l, "greater", plain_b, full_b).status
            assert consistent(c["status"], plain_l[0] - full_l[0])
            c = find_conclusion(record, f"W={w}，第 0 位{where}（位置 {'W..2W-1' if where == '刚被挤出' else '>= 2W'}）："
                                        "滑窗 + 1 个 sink 的 loss 低于纯滑窗")
            assert c["status"] == compare_runs(one_l, plain_l, "less", one_b, plain_b).status
            assert consistent(c["status"], plain_l[0] - one_l[0])
            c = find_conclusion(record, f"W={w}，第 0 位{where}（位置 {'W..2W-1' if where == '刚被挤出' else '>= 2W'}）："
                                        "滑窗 + 4 个 sink 收回了")
            v = compare_runs([four_l[0] - full_l[0]], [r * (plain_l[0] - full_l[0])], "less",
                             [a - b for a, b in zip(four_b, full_b)], [r * (a - b) for a, b in zip(plain_b, full_b)])
            assert c["status"] == v.status
            assert consistent(c["status"], r * (plain_l[0] - full_l[0]) - (four_l[0] - full_l[0]))
    # 注意力质量：从 JSON 的逐层逐批次值重算（各层平均）；均匀分配的基线对照公式
    def layer_avg(per_layer):
        return [sum(v) / len(v) for v in zip(*per_layer)]

    for label, where in (("8-15", "刚过窗口 8 的 query"), (f"64-{T - 2}", "最远一段的 query")):
        a, b = (int(x) for x in label.split("-"))
        uniform = m["uniform_first_mass"][label]
        assert uniform == pytest.approx(exp3.uniform_first_mass(a, b + 1))
        per_batch = layer_avg(m["first_token_mass"][0][label])
        assert all(0.0 < v < 1.0 for v in per_batch)
        c = find_conclusion(record, f"{where}（位置 {label}）：各层平均落在第 0 位上的注意力高于均匀分配")
        assert c["status"] == compare_runs([sum(per_batch) / len(per_batch)], [uniform], "greater", per_batch,
                                           [uniform] * len(per_batch)).status
    by_step = m["first_token_mass_by_step"][0]
    first_step = min(by_step, key=int)
    end, early = layer_avg(by_step[str(cfg["steps"])]), layer_avg(by_step[first_step])
    c = find_conclusion(record, f"落在第 0 位上的注意力：训练结束时高于训练第 {first_step} 步时")
    assert c["status"] == compare_runs([sum(end) / len(end)], [sum(early) / len(early)], "greater", end, early).status
    assert consistent(c["status"], sum(end) - sum(early))
    w = cfg["train_window"]
    trained_l, trained_b = span_loss("window-trained", (w, 2 * w))
    for s in cfg["sinks"]:
        s_l, s_b = span_loss(f"window-trained S{s}", (w, 2 * w))
        c = find_conclusion(record, f"窗口训练（W={w}）的模型，位置 W..2W-1：加 {s} 个 sink 与不加的 loss 相差不超过")
        assert c["status"] == equivalent_runs(s_l, trained_l, cfg["window_trained_margin"], s_b, trained_b).status
    plain_l, plain_b = span_loss(f"W{w} S0", (w, 2 * w))
    c = find_conclusion(record, "窗口训练的模型的 loss 低于全注意力训练")
    assert c["status"] == compare_runs(trained_l, plain_l, "less", trained_b, plain_b).status
    assert consistent(c["status"], plain_l[0] - trained_l[0])
