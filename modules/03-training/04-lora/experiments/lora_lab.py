"""实验 1–3 共用的 LoRA 小工具：同一个分词器、同一份数据代码、同一个 LoRA 实现、同一个 loss。

    tokenizer = load_tokenizer()                                  # model/tokenizer/（词表 2364）
    tasks = load_tasks(tokenizer)                                 # 旧任务 pretrain.jsonl + 新任务 sft.jsonl（对话）
    base, _ = pretrain_base(tasks, seed, steps, device)           # "基座"：在 pretrain.jsonl 上预训练的小 MiniMind
    model, hist, targets = finetune(base, tasks, seed, steps, device, rank=8)   # rank=None 表示全参数微调
    task_loss(model, tasks["new"], device)                        # 新任务（留出对话）的 loss
    task_loss(model, tasks["old"], device)                        # 旧任务（留出预训练文本）的 loss：看遗忘
    batch_losses(model, tasks["new"], device, batch_size=1)       # 逐条样本的 loss：quick 单种子时的配对噪声

LoRA 用的是 model/model_lora.py 的 apply_lora / merge_lora / unmerge_lora；评估用 trainer/train_pretrain.py 的
language_model_loss（trainer/train_lora.py 训练用的也是它）；训练循环是 modules/common/training.py::train_model，
它每步算的同样是 out.loss + out.aux_loss。
"""
import copy
import random
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[4]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402

from dataset.lm_dataset import PretrainDataset, SFTDataset  # noqa: E402
from model.model_lora import apply_lora  # noqa: E402
from model.model_minimind import MiniMindConfig, MiniMindForCausalLM  # noqa: E402
from model.tokenization import load_tokenizer  # noqa: E402,F401
from modules.common.training import train_model  # noqa: E402
from trainer.train_pretrain import language_model_loss  # noqa: E402

SAMPLES_DIR = REPO_ROOT / "dataset" / "samples"
PRETRAIN_PATH, SFT_PATH = SAMPLES_DIR / "pretrain.jsonl", SAMPLES_DIR / "sft.jsonl"
PRETRAIN_SEQ_LEN, SFT_SEQ_LEN = 48, 80  # 样本最长 42 / 74 个 token：都不截断
# 小号 MiniMind2：hidden 128、2 层、4 个 query 头共享 2 个 KV 头（GQA），FFN 中间维 384
MODEL_SIZE = dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
PRETRAIN_LR, BATCH = 3e-3, 16
FULL_LR, LORA_LR = 3e-3, 1e-2  # 同 trainer/ 的 --quick：全参 SFT 3e-3，LoRA 1e-2（适配器从 0 起步，常用更大的 lr）
N_HELDOUT_NEW = 48  # 新任务留出的对话：不参与训练，只算 loss
ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
FFN = ("gate_proj", "up_proj", "down_proj")


def new_model(tokenizer, seed: int) -> MiniMindForCausalLM:
    torch.manual_seed(seed)
    config = MiniMindConfig(**MODEL_SIZE, vocab_size=tokenizer.vocab_size, max_position_embeddings=128)
    return MiniMindForCausalLM(config)


def split_heldout(n: int, n_heldout: int, seed: int = 0):
    """固定的随机划分（与实验种子无关）：返回 (train_idx, heldout_idx)。"""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return sorted(order[n_heldout:]), sorted(order[:n_heldout])


def load_tasks(tokenizer) -> dict:
    """旧任务 = 预训练文本（基座学过的），新任务 = 身份对话（基座没见过）；各自有训练/留出划分。"""
    old = PretrainDataset(PRETRAIN_PATH, tokenizer, PRETRAIN_SEQ_LEN)
    new = SFTDataset(SFT_PATH, tokenizer, SFT_SEQ_LEN)
    old_train, old_val = split_heldout(len(old), len(old) // 10)
    new_train, new_val = split_heldout(len(new), N_HELDOUT_NEW)
    return {"old": {"data": old, "train": old_train, "val": old_val},
            "new": {"data": new, "train": new_train, "val": new_val}}


def stack(items, pad_id: int = 0):
    """把若干条样本叠成 (B, T) 的 input_ids / labels，裁掉整列都是 padding 的尾部（省算力，不改 loss）。"""
    input_ids = torch.stack([it["input_ids"] for it in items])  # (B, max_seq_len)
    labels = torch.stack([it["labels"] for it in items])  # (B, max_seq_len)
    length = int((input_ids != pad_id).sum(dim=1).max())
    return input_ids[:, :length], labels[:, :length]


def make_get_batch(task: dict, batch_size: int, seed: int):
    """train_model 要的 get_batch(split)：用 torch.Generator 从 task 的 train / val 下标里随机抽样。"""
    generators = {"train": torch.Generator().manual_seed(seed), "val": torch.Generator().manual_seed(seed + 1)}
    data, pad_id = task["data"], task["data"].tokenizer.pad_token_id

    def get_batch(split):
        pool = task[split]
        picks = torch.randint(len(pool), (batch_size,), generator=generators[split]).tolist()
        return stack([data[pool[i]] for i in picks], pad_id)

    return get_batch


@torch.no_grad()
def batch_losses(model, task: dict, device, split: str = "val", batch_size: int = 32):
    """task[split] 按固定顺序切成若干批，返回 (每批的平均 loss, 每批的样本数)；确定性，不抽样。"""
    model.eval()
    data, pad_id, pool = task["data"], task["data"].tokenizer.pad_token_id, task[split]
    losses, sizes = [], []
    for start in range(0, len(pool), batch_size):
        input_ids, labels = stack([data[i] for i in pool[start:start + batch_size]], pad_id)
        loss, _ = language_model_loss(model, {"input_ids": input_ids.to(device), "labels": labels.to(device)})
        losses.append(loss.item())
        sizes.append(len(input_ids))
    model.train()
    return losses, sizes


def task_loss(model, task: dict, device, split: str = "val") -> float:
    """task[split] 全部样本上的平均 loss（language_model_loss，按批平均、按样本数加权）。"""
    losses, sizes = batch_losses(model, task, device, split)
    return sum(l * w for l, w in zip(losses, sizes)) / sum(sizes)


def check_finite(hist: dict, name: str, seed: int):
    if hist["diverged_at"] is not None:
        raise SystemExit(f"{name}（seed={seed}）在第 {hist['diverged_at']} 步发散；请调小学习率后重试")


def pretrain_base(tasks: dict, seed: int, steps: int, device, progress: bool = True):
    """在 pretrain.jsonl 上从随机初始化预训练出基座。返回 (model, history)。"""
    model = new_model(tasks["old"]["data"].tokenizer, seed)
    hist = train_model(model, make_get_batch(tasks["old"], BATCH, seed), steps=steps, lr=PRETRAIN_LR,
                       eval_batches=2, device=device, progress=progress, desc=f"pretrain base seed={seed}")
    check_finite(hist, "pretrain base", seed)
    return model, hist


def attach(base, rank=None, targets=None):
    """base 的一份拷贝；rank=None → 全参数可训练，否则 apply_lora(rank, targets)。返回 (model, 被替换的模块名)。"""
    model = copy.deepcopy(base)
    if rank is None:
        return model, []
    return model, apply_lora(model, rank=rank, target_modules=targets)


def finetune(base, tasks: dict, seed: int, steps: int, device, rank=None, targets=None, lr=None,
             progress: bool = True, eval_every=None):
    """在新任务上微调 base 的拷贝（base 不变）。返回 (model, history, 挂了 LoRA 的模块名)。"""
    model, replaced = attach(base, rank, targets)
    lr = lr if lr is not None else (FULL_LR if rank is None else LORA_LR)
    name = "full FT" if rank is None else f"LoRA r={rank}"
    torch.manual_seed(seed)
    hist = train_model(model, make_get_batch(tasks["new"], BATCH, seed), steps=steps, lr=lr, eval_batches=1,
                       eval_every=eval_every, device=device, progress=progress, desc=f"{name} seed={seed}")
    check_finite(hist, name, seed)
    return model, hist, replaced


def trainable_params(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def frozen_state(model) -> dict:
    """不可训练参数的一份拷贝（名字 → 张量），用来检查训练后它们是否逐位不变。"""
    return {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}


def make_train_step(model, get_batch, device):
    """返回 (step, optimizer)：step() 在一个固定的训练 batch 上做一步 AdamW（language_model_loss → backward → step）。
    计时用固定 batch，时间就不随 batch 里的长度变；会改动 model 的权重：请传一份拷贝。"""
    model.to(device).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    input_ids, labels = (t.to(device) for t in get_batch("train"))

    def step():
        loss, _ = language_model_loss(model, {"input_ids": input_ids, "labels": labels})
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step, optimizer


def training_state_bytes(model, optimizer) -> dict:
    """走过至少一步之后：AdamW 为每个可训练参数存的 exp_avg 与 exp_avg_sq（各一份同形状的 fp32 张量）的实际字节数，
    以及可训练参数的梯度字节数。"""
    state = sum(t.numel() * t.element_size() for s in optimizer.state.values()
                for k, t in s.items() if k in ("exp_avg", "exp_avg_sq"))
    grads = sum(p.grad.numel() * p.grad.element_size() for p in model.parameters() if p.grad is not None)
    return {"optimizer_state_bytes": state, "grad_bytes": grads}
