"""实验 1–3 共用的 DPO 小工具：同一个分词器、同一份数据类（dataset/lm_dataset.py::DPODataset）、
同一个 DPO 损失（trainer/train_dpo.py 的 sequence_logprob / dpo_loss / make_dpo_step），没有任何副本。

    tokenizer = load_tokenizer()
    sft_data, dpo_data = SFTDataset(SFT_PATH, ...), DPODataset(DPO_PATH, ...)
    ref = train_reference(tokenizer, sft_data, seed, steps, device)     # 参考模型 = 在 sft.jsonl 上 SFT 过的小 MiniMind
    train_idx, heldout_idx = split_pairs(len(dpo_data))                 # 固定划分：留出的偏好对不参与训练
    policy, hist = train_dpo(ref, dpo_data, train_idx, seed, steps, beta, device, evaluate=...)
    stats = pair_stats(policy, ref, dpo_data, heldout_idx, beta, device)  # 奖励差、偏好准确率、到参考模型的 KL
"""
import copy
import json
import random
import re
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[4]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from dataset.lm_dataset import DPODataset, SFTDataset  # noqa: E402,F401
from dataset.make_samples import BAD_ANSWERS_EN, BAD_ANSWERS_ZH  # noqa: E402
from model.model_minimind import MiniMindConfig, MiniMindForCausalLM  # noqa: E402
from model.tokenization import load_tokenizer  # noqa: E402,F401
from modules.common.training import lr_at, train_model  # noqa: E402
from trainer.train_dpo import make_dpo_step, sequence_logprob  # noqa: E402

SAMPLES_DIR = REPO_ROOT / "dataset" / "samples"
SFT_PATH, DPO_PATH = SAMPLES_DIR / "sft.jsonl", SAMPLES_DIR / "dpo.jsonl"
SEQ_LEN = 80  # sft.jsonl 最长 74 个 token，dpo.jsonl 更短：都不截断
# 小号 MiniMind2：hidden 128、2 层、4 个 query 头共享 2 个 KV 头（GQA）
MODEL_SIZE = dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
REF_LR, REF_BATCH = 3e-3, 16  # 参考模型的 SFT（同 trainer/ 的 --quick：小模型用 3e-3）
DPO_LR, DPO_BATCH = 3e-4, 8  # batch 同 trainer/train_dpo.py 的 --quick（8 对）；学习率取 3e-4（1e-3 几步内 KL 就很大）
N_HELDOUT = 60  # 留出的偏好对：只用来评估
DEFAULT_BETA = 0.1  # 同 trainer/train_dpo.py 的默认 --beta


ADD_RANGE = 21  # 加法题的两个加数都取 0–20（同 dataset/make_samples.py::arithmetic）
N_ADDITION_HELDOUT = 160  # 没见过的加法题（留出）：每题一个偏好对，准确率的评估噪声 SE ≈ 0.04（22 对时约 0.1）
ADDITION_OFFSETS = (-2, -1, 1, 2)  # rejected = 正确结果 ± 1–2（同 dpo.jsonl 的算术对）


class Encoded:
    """数据集一次编码好的全部样本：构造时对每一条调用 dataset[i]（套对话模板 + 分词）并读出原始行，
    之后取第 i 条直接返回同一组张量（训练时不再每一步重新分词；数据文件读完即可删除）。
    rows / tokenizer 照旧可用，所以 pair_kind、pair_batch、make_lm_get_batch 不用区分两者。"""

    def __init__(self, dataset):
        self.rows = [dataset.rows[i] for i in range(len(dataset))]
        self.items = [dataset[i] for i in range(len(dataset))]
        self.tokenizer = dataset.tokenizer

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def new_model(tokenizer, seed: int) -> MiniMindForCausalLM:
    torch.manual_seed(seed)
    config = MiniMindConfig(**MODEL_SIZE, vocab_size=tokenizer.vocab_size, max_position_embeddings=128)
    return MiniMindForCausalLM(config)


def split_pairs(n: int, n_heldout: int = N_HELDOUT, seed: int = 0):
    """固定的随机划分（与实验种子无关）：返回 (train_idx, heldout_idx)。"""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return sorted(order[n_heldout:]), sorted(order[:n_heldout])


ARITHMETIC = re.compile(r"^\d+ (加|plus) \d+")
ADDITION_QUESTION = re.compile(r"^(?:What is )?(\d+) (加|plus) (\d+)")  # 问题或回答开头的 "a 加 b" / "What is a plus b"
PAIR_KINDS = ("refusal", "wrong_fact", "arithmetic")


def pair_kind(row: dict) -> str:
    """dpo.jsonl 里偏好对的三种来源（见 dataset/make_samples.py::dpo_pairs）：
    refusal = rejected 是"我不知道。"之类的敷衍话；wrong_fact = rejected 是别的问题的答案；
    arithmetic = rejected 是差 1–2 的算术结果。"""
    chosen, rejected = row["chosen"][-1]["content"], row["rejected"][-1]["content"]
    if ARITHMETIC.match(chosen):
        return "arithmetic"
    return "refusal" if rejected in BAD_ANSWERS_ZH + BAD_ANSWERS_EN else "wrong_fact"


def addition_text(a: int, op: str, b: int, result: int):
    """一道加法题的 (问题, 回答)，格式同 dataset/make_samples.py；op 是 "加"（中文）或 "plus"（英文）。"""
    if op == "加":
        return f"{a} 加 {b} 等于多少？", f"{a} 加 {b} 等于 {result}。"
    return f"What is {a} plus {b}?", f"{a} plus {b} is {result}."


def addition_split(sft_rows, dpo_rows, n_heldout: int = N_ADDITION_HELDOUT, seed: int = 0):
    """0–20 的全部加法题 (a, op, b)（21·21·2 = 882 道）分成两份（固定划分，与实验种子无关）：
    heldout = 从 sft.jsonl 与 dpo.jsonl 里都没出现过的题中随机取 n_heldout 道——两种参考模型和 DPO 都没见过；
    sft = 其余所有题（含 DPO 训练对里的题），给"会加法"的参考模型做 SFT。"""
    seen = set()
    for row in sft_rows:
        for message in row["conversations"]:
            match = ADDITION_QUESTION.match(message["content"])
            if message["role"] == "user" and match:
                seen.add((int(match[1]), match[2], int(match[3])))
    for row in dpo_rows:
        match = ADDITION_QUESTION.match(row["chosen"][-1]["content"])
        if match:
            seen.add((int(match[1]), match[2], int(match[3])))
    questions = [(a, op, b) for a in range(ADD_RANGE) for b in range(ADD_RANGE) for op in ("加", "plus")]
    unseen = [q for q in questions if q not in seen]
    random.Random(seed).shuffle(unseen)
    heldout = sorted(unseen[:n_heldout])
    return [q for q in questions if q not in set(heldout)], heldout


def addition_sft_rows(questions):
    """每道题一条单轮对话，回答是正确结果。"""
    rows = []
    for a, op, b in questions:
        question, answer = addition_text(a, op, b, a + b)
        rows.append({"conversations": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]})
    return rows


def addition_pair_rows(questions, seed: int = 0):
    """每道题一个偏好对：chosen = 正确结果，rejected = 正确结果 + 固定随机的 ±1 或 ±2（与实验种子无关）。"""
    rng = random.Random(seed)
    rows = []
    for a, op, b in questions:
        question, good = addition_text(a, op, b, a + b)
        bad = addition_text(a, op, b, a + b + rng.choice(ADDITION_OFFSETS))[1]
        prompt = [{"role": "user", "content": question}]
        rows.append({"chosen": prompt + [{"role": "assistant", "content": good}],
                     "rejected": prompt + [{"role": "assistant", "content": bad}]})
    return rows


def write_rows(path: Path, rows) -> Path:
    """把生成的对话 / 偏好对写成 jsonl（同 dataset/samples/ 的格式），好交给 SFTDataset / DPODataset 读。"""
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def trim(batch: dict, pad_id: int) -> dict:
    """裁掉 chosen 与 rejected 都是 padding 的尾部列（两者保持同一长度，make_dpo_step 要把它们拼在一起）。"""
    length = int(max((batch["chosen_ids"] != pad_id).sum(1).max(), (batch["rejected_ids"] != pad_id).sum(1).max()))
    return {k: v[:, :length] for k, v in batch.items()}


def pair_batch(dataset, indices, device) -> dict:
    """DPODataset 的若干条 → {chosen_ids, chosen_labels, rejected_ids, rejected_labels}，每个 (B, T)。"""
    items = [dataset[i] for i in indices]
    batch = {k: torch.stack([it[k] for it in items]) for k in items[0]}
    return {k: v.to(device) for k, v in trim(batch, dataset.tokenizer.pad_token_id).items()}


def make_lm_get_batch(dataset, indices, batch_size: int, seed: int, key: str = ""):
    """train_model 要的 get_batch(split)：从 indices 里按 torch.Generator 抽样，返回 (input_ids, labels)。

    dataset 是 SFTDataset 时 key=""（用 input_ids/labels）；是 DPODataset 时 key="chosen_"（只取 chosen 回答，
    即"只在好答案上做 SFT"的对照组）。train 与 val 用不同的随机流，都从同一批 indices 里抽。
    """
    generators = {"train": torch.Generator().manual_seed(seed), "val": torch.Generator().manual_seed(seed + 1)}
    pad_id = dataset.tokenizer.pad_token_id

    def get_batch(split):
        picks = torch.randint(len(indices), (batch_size,), generator=generators[split]).tolist()
        items = [dataset[indices[i]] for i in picks]
        input_ids = torch.stack([it[key + "ids" if key else "input_ids"] for it in items])  # (B, SEQ_LEN)
        labels = torch.stack([it[key + "labels" if key else "labels"] for it in items])  # (B, SEQ_LEN)
        length = int((input_ids != pad_id).sum(1).max())
        return input_ids[:, :length], labels[:, :length]

    return get_batch


def check_finite(hist: dict, name: str, seed: int):
    if hist["diverged_at"] is not None:
        raise SystemExit(f"{name}（seed={seed}）在第 {hist['diverged_at']} 步发散；请减少步数或换一个 --seed 重试")


def train_reference(tokenizer, sft_data, seed: int, steps: int, device, progress: bool = True):
    """参考模型：从随机初始化在 sft.jsonl 上做 SFT（只对助手回答算 loss），之后冻结。返回 (model, history)。"""
    model = new_model(tokenizer, seed).to(device)
    indices = list(range(len(sft_data)))
    hist = train_model(model, make_lm_get_batch(sft_data, indices, REF_BATCH, seed), steps=steps, lr=REF_LR,
                       warmup_steps=max(1, steps // 20), eval_every=steps, eval_batches=1, device=device,
                       progress=progress, desc=f"reference SFT seed={seed}")
    check_finite(hist, "reference SFT", seed)
    return model.eval(), hist


def sft_on_chosen(ref, dpo_data, train_idx, seed: int, steps: int, device, lr: float = DPO_LR,
                  progress: bool = True):
    """对照组：从参考模型的拷贝出发，只在训练对的 chosen 回答上做 SFT（普通交叉熵）。返回 (model, history)。
    train_dpo 会冻结参考模型（requires_grad_(False)），所以拷贝要重新打开梯度。"""
    model = copy.deepcopy(ref).requires_grad_(True).train()
    torch.manual_seed(seed)
    hist = train_model(model, make_lm_get_batch(dpo_data, train_idx, DPO_BATCH, seed, key="chosen_"), steps=steps,
                       lr=lr, warmup_steps=max(1, steps // 20), eval_every=steps, eval_batches=1, device=device,
                       progress=progress, desc=f"SFT on chosen seed={seed}")
    check_finite(hist, "SFT on chosen", seed)
    return model.eval(), hist


def train_dpo(ref, dpo_data, train_idx, seed: int, steps: int, beta: float, device, lr: float = DPO_LR,
              evaluate=None, eval_every: int = 10, progress: bool = True, positive_lambda: float = 0.0):
    """从参考模型的拷贝出发做 DPO：损失来自 trainer/train_dpo.py::make_dpo_step（参考模型冻结）。
    positive_lambda > 0 换成 DPOP 的损失（trainer/train_dpo.py::dpo_loss，Pal et al. 2024），默认 0 是标准 DPO。

    优化：AdamW + modules/common/training.py::lr_at 的 warmup+余弦 + 梯度裁剪 1.0，与 trainer/ 相同；
    只有 weight_decay 不同：这里是 0，trainer 默认 0.01（--weight_decay）。
    evaluate(policy, step) 若给出，在第 0 步（训练前）、每 eval_every 步和最后一步调用，返回值按步收集。
    返回 (policy, history)：history = {"steps", "loss", "reward_margin", "reward_accuracy", "evals"}。
    """
    ref.eval().requires_grad_(False)
    policy = copy.deepcopy(ref).requires_grad_(True).train()
    compute_loss = make_dpo_step(ref, beta, positive_lambda)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed)
    history = {"steps": [], "loss": [], "reward_margin": [], "reward_accuracy": [], "evals": []}

    def run_eval(step):
        if evaluate is not None:
            policy.eval()
            with torch.no_grad():
                history["evals"].append({"step": step, **evaluate(policy)})
            policy.train()

    run_eval(0)
    for step in tqdm(range(steps), desc=f"DPO beta={beta} seed={seed}", disable=not progress, leave=False):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, lr=lr, warmup_steps=max(1, steps // 20), total_steps=steps)
        picks = torch.randint(len(train_idx), (DPO_BATCH,), generator=generator).tolist()
        loss, stats = compute_loss(policy, pair_batch(dpo_data, [train_idx[i] for i in picks], device))
        if not torch.isfinite(loss):
            raise SystemExit(f"DPO（beta={beta}, seed={seed}）在第 {step} 步损失为 {loss.item()}；请降低学习率或换一个 --seed")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        optimizer.step()
        history["steps"].append(step + 1)
        history["loss"].append(loss.item())
        history["reward_margin"].append(stats["reward_margin"])
        history["reward_accuracy"].append(stats["reward_accuracy"])
        if (step + 1) % eval_every == 0 or step + 1 == steps:
            run_eval(step + 1)
    return policy.eval(), history


@torch.no_grad()
def pair_logprobs(model, dpo_data, indices, device, chunk: int = 32) -> dict:
    """每个偏好对上，model 给 chosen / rejected 回答的序列对数概率（trainer/train_dpo.py::sequence_logprob）。"""
    model.eval()
    chosen, rejected = [], []
    for start in range(0, len(indices), chunk):
        batch = pair_batch(dpo_data, indices[start:start + chunk], device)
        chosen.append(sequence_logprob(model(batch["chosen_ids"]).logits, batch["chosen_labels"]))  # (B,)
        rejected.append(sequence_logprob(model(batch["rejected_ids"]).logits, batch["rejected_labels"]))  # (B,)
    return {"chosen": torch.cat(chosen), "rejected": torch.cat(rejected)}


@torch.no_grad()
def answer_kl_per_pair(policy, ref, dpo_data, indices, device, chunk: int = 32):
    """策略到参考模型的 KL，逐个偏好对：在 chosen 与 rejected 回答的每个位置（teacher forcing）精确计算下一个 token
    分布的 KL(π ‖ π_ref) = Σ_v π(v)·(log π(v) − log π_ref(v))。返回 (kl_sum, n_tokens)，各 (N,)：
    每对两个回答所有位置的 KL 之和与位置数。"""
    kl_sums, counts = [], []
    for start in range(0, len(indices), chunk):
        batch = pair_batch(dpo_data, indices[start:start + chunk], device)
        kl_sum, count = 0.0, 0
        for key in ("chosen", "rejected"):
            ids, labels = batch[f"{key}_ids"], batch[f"{key}_labels"]
            logp = policy(ids).logits[:, :-1].float().log_softmax(-1)  # (B, T-1, V)：位置 t 预测第 t+1 个 token
            logp_ref = ref(ids).logits[:, :-1].float().log_softmax(-1)  # (B, T-1, V)
            kl = (logp.exp() * (logp - logp_ref)).sum(-1)  # (B, T-1)
            mask = labels[:, 1:] != -100  # 只看回答位置（与 sequence_logprob 相同的掩码）
            kl_sum = kl_sum + (kl * mask).sum(1)  # (B,)
            count = count + mask.sum(1)  # (B,)
        kl_sums.append(kl_sum)
        counts.append(count)
    return torch.cat(kl_sums), torch.cat(counts)


@torch.no_grad()
def gradient_weight(policy, ref_logps: dict, dpo_data, indices, beta: float, device) -> float:
    """DPO 梯度里每一对的权重 σ(−β·Δ) 在这些偏好对上的平均（Rafailov et al. 2023 式 7：
    ∇L = −β·E[σ(−β·Δ)·(∇log π(y_c) − ∇log π(y_r))]）。≈ 0.5：损失还没饱和；→ 0：这一对不再推动参数。"""
    logps = pair_logprobs(policy, dpo_data, indices, device)
    delta = (logps["chosen"] - ref_logps["chosen"]) - (logps["rejected"] - ref_logps["rejected"])  # (N,)
    return torch.sigmoid(-beta * delta).mean().item()


def average_runs(runs: list):
    """同一个种子的 R 次复制训练（modules/common/replicates.py）→ 一份同样结构的平均结果：
    浮点数与浮点数列表逐项取平均，dict 逐键递归，整数（步数）在各次复制里相同、原样保留，None 保留。
    R = 1 时原样返回（quick 模式的结果与不复制完全相同）。"""
    first = runs[0]
    if len(runs) == 1:
        return first
    if isinstance(first, dict):
        return {key: average_runs([run[key] for run in runs]) for key in first}
    if isinstance(first, list):
        return [average_runs(list(items)) for items in zip(*runs)]
    if first is None or isinstance(first, int):
        if any(run != first for run in runs):
            raise ValueError(f"复制训练之间这一项应当相同：{runs}")
        return first
    return sum(runs) / len(runs)


def own_preference(logps: dict) -> list:
    """模型自己偏好哪个回答（与参考模型无关）：逐对 1.0 = log π(y_c) > log π(y_r)，否则 0.0。"""
    return (logps["chosen"] > logps["rejected"]).float().tolist()


def pair_stats(policy, ref, dpo_data, indices, beta: float, device, ref_logps: dict = None) -> dict:
    """一组偏好对上的 DPO 指标：
    margin = β·[(log π(y_c) − log π_ref(y_c)) − (log π(y_r) − log π_ref(y_r))] 的平均（隐式奖励差，同 dpo_loss），
    log_ratio_margin = margin / β（与 β 无关的"对数概率差的变化"），accuracy = margin > 0 的比例，
    chosen_logp / rejected_logp = 策略下的平均序列对数概率，kl = 所有回答位置平均的 KL（nat/token），
    accuracy_<kind> = 每种偏好对（pair_kind）各自的偏好准确率，
    per_pair = 逐对的值（与 indices 同序）：log_ratio（上面的 Δ）、chosen_logp、rejected_logp、
    kl（这一对两个回答的位置平均 KL）——单种子时噪声检验按偏好对配对用它们。"""
    ref_logps = ref_logps or pair_logprobs(ref, dpo_data, indices, device)
    logps = pair_logprobs(policy, dpo_data, indices, device)
    delta = (logps["chosen"] - ref_logps["chosen"]) - (logps["rejected"] - ref_logps["rejected"])  # (N,)
    kl_sum, n_tokens = answer_kl_per_pair(policy, ref, dpo_data, indices, device)  # (N,), (N,)
    kinds = [pair_kind(dpo_data.rows[i]) for i in indices]
    stats = {"margin": (beta * delta).mean().item(), "log_ratio_margin": delta.mean().item(),
             "accuracy": (delta > 0).float().mean().item(),
             "chosen_logp": logps["chosen"].mean().item(), "rejected_logp": logps["rejected"].mean().item(),
             "kl": (kl_sum.sum() / n_tokens.sum()).item(),
             "per_pair": {"log_ratio": delta.tolist(), "chosen_logp": logps["chosen"].tolist(),
                          "rejected_logp": logps["rejected"].tolist(), "kl": (kl_sum / n_tokens).tolist()}}
    for kind in PAIR_KINDS:
        picked = torch.tensor([k == kind for k in kinds], device=delta.device)
        stats[f"accuracy_{kind}"] = (delta[picked] > 0).float().mean().item() if picked.any() else None
    return stats
