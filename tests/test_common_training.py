"""modules.common.training：学习率调度、能学会的玩具任务、发散检测、按层梯度范数、验证记录、aux_loss。"""
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from modules.common.text_data import BatchSampler
from modules.common.training import layer_of, lr_at, train_model

VOCAB = 12


class TinyLM(nn.Module):
    """嵌入 → 两层线性 → LayerNorm → 输出头；参数名仿 MiniMind（model.embed_tokens / model.layers.i / lm_head）。"""

    def __init__(self, vocab=VOCAB, dim=16, with_aux=False):
        super().__init__()
        self.model = nn.Module()
        self.model.embed_tokens = nn.Embedding(vocab, dim)
        self.model.layers = nn.ModuleList([nn.Linear(dim, dim) for _ in range(2)])
        self.model.norm = nn.LayerNorm(dim)
        self.lm_head = nn.Linear(dim, vocab, bias=False)
        self.with_aux = with_aux
        if with_aux:
            self.aux_weight = nn.Parameter(torch.ones(4, 4))  # 只出现在 aux_loss 里

    def forward(self, input_ids, labels=None):
        h = self.model.embed_tokens(input_ids)  # (B, T, D)
        for layer in self.model.layers:
            h = h + torch.relu(layer(h))
        logits = self.lm_head(self.model.norm(h))  # (B, T, V)
        loss = None
        if labels is not None:  # 同 MiniMind：模型内部移位
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), labels[:, 1:].reshape(-1),
                                   ignore_index=-100)
        out = SimpleNamespace(logits=logits, loss=loss)
        if self.with_aux:
            out.aux_loss = self.aux_weight.pow(2).mean()
        return out


class NanAfter(TinyLM):
    """第 nan_step 次训练前向开始返回 NaN 损失。"""

    def __init__(self, nan_step):
        super().__init__()
        self.nan_step, self.calls = nan_step, 0

    def forward(self, input_ids, labels=None):
        out = super().forward(input_ids, labels)
        if self.training:
            if self.calls >= self.nan_step:
                out.loss = out.loss * float("nan")
            self.calls += 1
        return out


def counting_batches(seen_splits=None):
    """下一个 token = 当前 token + 1（模 VOCAB）：完全可学。"""
    data = torch.arange(4000) % VOCAB
    samplers = {"train": BatchSampler(data[:3000], 16, 8, seed=0), "val": BatchSampler(data[3000:], 16, 8, seed=1)}

    def get_batch(split):
        if seen_splits is not None:
            seen_splits.add(split)
        return samplers[split].sample()

    return get_batch


def test_lr_schedule_key_points():
    kw = dict(lr=1.0, warmup_steps=10, total_steps=110, min_lr_ratio=0.1)
    assert lr_at(0, **kw) == pytest.approx(0.1)
    assert lr_at(4, **kw) == pytest.approx(0.5)
    assert lr_at(9, **kw) == pytest.approx(1.0)
    assert lr_at(10, **kw) == pytest.approx(1.0)
    assert lr_at(60, **kw) == pytest.approx(0.55)  # 余弦中点 = (lr + min_lr) / 2
    assert lr_at(110, **kw) == pytest.approx(0.1)
    assert lr_at(500, **kw) == pytest.approx(0.1)
    decay = [lr_at(s, **kw) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(decay, decay[1:]))


def test_layer_of():
    assert layer_of("model.layers.3.mlp.up_proj.weight") == "layers.3"
    assert layer_of("layers.11.self_attn.q_proj.weight") == "layers.11"
    assert layer_of("model.embed_tokens.weight") == "embed"
    assert layer_of("model.norm.weight") == "norm"
    assert layer_of("lm_head.weight") == "lm_head"


def test_loss_decreases_and_history_is_complete():
    torch.manual_seed(0)
    seen = set()
    history = train_model(TinyLM(), counting_batches(seen), steps=120, lr=1e-2, warmup_steps=10,
                          eval_every=40, eval_batches=2, progress=False)
    assert history["steps"] == list(range(120))
    assert len(history["train_loss"]) == len(history["lr"]) == 120
    first = sum(history["train_loss"][:5]) / 5
    last = sum(history["train_loss"][-5:]) / 5
    assert first > 0.8 * math.log(VOCAB)  # 起点接近均匀分布的交叉熵
    assert last < 0.25 * first
    assert history["val_steps"] == [39, 79, 119]
    assert history["val_loss"][-1] < 0.25 * first
    assert history["diverged_at"] is None and history["grad_norms"] == {} and history["aux_loss"] == []
    assert history["tokens_per_s"] > 0 and history["wall_s"] > 0
    assert seen == {"train", "val"}
    kw = dict(lr=1e-2, warmup_steps=10, total_steps=120, min_lr_ratio=0.1)
    assert history["lr"] == pytest.approx([lr_at(s, **kw) for s in range(120)])


def test_nan_loss_stops_and_records_step():
    history = train_model(NanAfter(nan_step=5), counting_batches(), steps=50, eval_every=10, progress=False)
    assert history["diverged_at"] == 5
    assert len(history["train_loss"]) == 5 and all(math.isfinite(x) for x in history["train_loss"])
    assert history["val_steps"] == []


def test_huge_lr_diverges_without_crashing():
    class Exploding(TinyLM):
        def forward(self, input_ids, labels=None):
            out = super().forward(input_ids, labels)
            out.loss = out.loss * self.lm_head.weight.abs().max().exp()  # 权重一大，损失就溢出成 inf
            return out

    torch.manual_seed(0)
    history = train_model(Exploding(), counting_batches(), steps=50, lr=1e6, warmup_steps=1, progress=False)
    assert history["diverged_at"] is not None and history["diverged_at"] < 50
    assert len(history["train_loss"]) == history["diverged_at"]


def test_grad_norms_recorded_per_layer_group():
    torch.manual_seed(0)
    history = train_model(TinyLM(), counting_batches(), steps=8, record_grad_norms=True, grad_clip=1e-3,
                          progress=False)
    norms = history["grad_norms"]
    assert list(norms) == ["embed", "layers.0", "layers.1", "norm", "lm_head"]
    assert all(len(v) == 8 and all(math.isfinite(x) and x > 0 for x in v) for v in norms.values())
    total = [math.sqrt(sum(norms[g][i] ** 2 for g in norms)) for i in range(8)]
    assert max(total) > 1e-3  # 记录的是裁剪前的范数


def test_aux_loss_is_reported_and_trained():
    torch.manual_seed(0)
    model = TinyLM(with_aux=True)
    history = train_model(model, counting_batches(), steps=30, lr=1e-2, weight_decay=0.0, progress=False)
    assert len(history["aux_loss"]) == 30
    assert history["aux_loss"][0] == pytest.approx(1.0)
    assert history["aux_loss"][-1] < 0.9  # 不参与反向传播的话它会一直是 1.0


def test_lr_at_wsd_holds_then_decays_linearly():
    """cooldown_steps 给定时：预热之后保持 lr，最后 cooldown_steps 步线性降到 min_lr_ratio·lr（WSD）；不给时仍是余弦。"""
    kw = dict(lr=1.0, warmup_steps=10, total_steps=100, min_lr_ratio=0.1)
    wsd = [lr_at(s, cooldown_steps=20, **kw) for s in range(100)]
    assert wsd[9] == 1.0 and all(v == 1.0 for v in wsd[10:80])  # 平台
    assert wsd[80] == 1.0 and abs(wsd[90] - 0.55) < 1e-12 and wsd[99] > 0.1  # 线性：一半时在 1 与 0.1 正中间
    assert lr_at(100, cooldown_steps=20, **kw) == 0.1
    cosine = [lr_at(s, **kw) for s in range(100)]
    assert cosine[50] < 1.0 and cosine[:10] == wsd[:10]  # 默认余弦，预热两者相同


def test_after_step_sees_every_update_without_changing_the_run():
    """after_step 在每次更新之后调用（已完成的更新数从 1 起）；在回调里存副本不改变训练本身——
    同一个种子、带回调与不带回调训练出的参数完全相同（不像分段调用 train_model 那样每段新建优化器）。"""
    def run(after_step=None):
        torch.manual_seed(0)
        model = TinyLM()
        train_model(model, counting_batches(), steps=30, lr=1e-2, warmup_steps=5, min_lr_ratio=1.0,
                    eval_every=31, progress=False, after_step=after_step)
        return model

    calls, copies = [], {}

    def snapshot(n_done, model):
        calls.append(n_done)
        if n_done in (10, 30):
            copies[n_done] = {k: v.clone() for k, v in model.state_dict().items()}

    with_callback, plain = run(snapshot), run()
    assert calls == list(range(1, 31))
    assert all(torch.equal(copies[30][k], v) for k, v in plain.state_dict().items())
    assert all(torch.equal(a, b) for a, b in zip(with_callback.parameters(), plain.parameters()))
    assert not all(torch.equal(copies[10][k], v) for k, v in plain.state_dict().items())  # 第 10 步的副本是训练中途
