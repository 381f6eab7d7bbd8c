"""实验 1–3 共用的 SFT 小工具：同一个分词器、同一份数据代码（dataset/lm_dataset.py）、同一个训练循环。

    tokenizer = load_tokenizer()                                   # model/tokenizer/（词表 2364）
    sft_data = SFTDataset(SFT_PATH, tokenizer, SFT_SEQ_LEN)         # trainer/train_full_sft.py 用的那个类
    train_idx, heldout_idx = split_heldout(len(sft_data))
    base = pretrain(tokenizer, seed, steps, device)                 # 在 pretrain.jsonl 上预训练的小 MiniMind
    model, hist = finetune(base, sft_data, train_idx, heldout_idx, seed, steps, device, all_tokens=False)
    answers = answer_prompts(model, tokenizer, prompts)  # prompts 来自 load_sft_data()

没有自己的 loss、自己的 mask：标签一律来自 SFTDataset（只对助手回答算 loss），
"所有 token 都算 loss" 的对照组只是把同一批 input_ids 里非 padding 的位置全部放进 labels。
"""
import copy
import random
import re
import sys
from collections import Counter
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[4]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from dataset.lm_dataset import IGNORE_INDEX, PretrainDataset, SFTDataset  # noqa: E402,F401
from dataset.make_samples import FACTS, GREETINGS, sft_conversations  # noqa: E402
from model.model_minimind import MiniMindConfig, MiniMindForCausalLM  # noqa: E402
from model.tokenization import load_tokenizer  # noqa: E402,F401
from modules.common.training import train_model  # noqa: E402

SAMPLES_DIR = REPO_ROOT / "dataset" / "samples"
PRETRAIN_PATH, SFT_PATH = SAMPLES_DIR / "pretrain.jsonl", SAMPLES_DIR / "sft.jsonl"
PRETRAIN_SEQ_LEN, SFT_SEQ_LEN = 48, 80  # 样本最长 42 / 74 个 token：都不截断
# 小号 MiniMind2：hidden 128、2 层、4 个 query 头共享 2 个 KV 头（GQA），约 0.7M 参数（其中词嵌入 0.3M）
MODEL_SIZE = dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
PRETRAIN_LR, PRETRAIN_BATCH = 3e-3, 16
SFT_LR, SFT_BATCH = 3e-3, 16  # 同 trainer/ 的 --quick：小模型用 3e-3
N_HELDOUT = 48  # 留出的对话：不参与 SFT，只用来提问和算 loss
# 完整模式另外多问的问题：用 dataset/make_samples.py 的同一个生成器、另一个随机种子新抽对话，取问题原文不在
# 训练集里的前 96 段的第一个问题（见 fresh_prompts）。评估问题从 48 个变成 144 个，每个种子上的评估噪声约降到 1/√3
N_FRESH_PROMPTS, FRESH_DRAW_SEED = 96, 100
MAX_NEW_TOKENS = 48  # 最长的参考回答约 30 个 token

ARITHMETIC = re.compile(r"^\d+ (加|减|plus|minus) \d+")
FACT_ANSWERS = {a for zq, za, eq, ea in FACTS for a in (za, ea)}
GREETING_ANSWERS = {a for _, a in GREETINGS}


def add_step_args(parser):
    """实验 2、3 共用的步数参数。"""
    parser.add_argument("--pretrain-steps", type=int, default=None, help="预训练步数（默认 quick 120 / 完整 200）")
    parser.add_argument("--sft-steps", type=int, default=None, help="每次 SFT 的步数（默认 quick 80 / 完整 100）")


def step_counts(exp) -> tuple:
    """(预训练步数, SFT 步数)：命令行给了就用它，否则按 quick / 完整模式取默认值。"""
    pretrain_steps = exp.args.pretrain_steps or (120 if exp.quick else 200)
    sft_steps = exp.args.sft_steps or (80 if exp.quick else 100)
    if pretrain_steps < 1 or sft_steps < 1:
        raise SystemExit(f"--pretrain-steps 与 --sft-steps 必须 >= 1（收到 {pretrain_steps}、{sft_steps}）")
    return pretrain_steps, sft_steps


def load_sft_data(n_fresh: int = 0):
    """分词器、SFT 样本、训练/留出下标、评估问题的 prompt（实验 2、3 用同一份切分）。

    评估问题 = 48 段留出对话的第一个问题，n_fresh > 0 时再加 n_fresh 个新抽的问题（见 fresh_prompts）。"""
    tokenizer = load_tokenizer()
    data = SFTDataset(SFT_PATH, tokenizer, SFT_SEQ_LEN)
    train_idx, heldout_idx = split_heldout(len(data))
    prompts = heldout_prompts([data.rows[i] for i in heldout_idx])
    if n_fresh > 0:
        prompts += fresh_prompts(n_fresh, {p["messages"][-1]["content"] for p in heldout_prompts(
            [data.rows[i] for i in train_idx])})
    return tokenizer, data, train_idx, heldout_idx, prompts


def new_model(tokenizer, seed: int) -> MiniMindForCausalLM:
    torch.manual_seed(seed)
    config = MiniMindConfig(**MODEL_SIZE, vocab_size=tokenizer.vocab_size, max_position_embeddings=128)
    return MiniMindForCausalLM(config)


def split_heldout(n: int, n_heldout: int = N_HELDOUT, seed: int = 0):
    """固定的随机划分（与实验种子无关）：返回 (train_idx, heldout_idx)。"""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return sorted(order[n_heldout:]), sorted(order[:n_heldout])


def stack(items, all_tokens: bool = False, pad_id: int = 0):
    """把数据集的若干条样本叠成 (B, T) 的 input_ids / labels，并裁掉整列都是 padding 的尾部（省算力，不改 loss）。

    all_tokens=True：对照组——labels = input_ids，只有 padding 位置是 -100（用户、系统的话也算 loss）。
    """
    input_ids = torch.stack([it["input_ids"] for it in items])  # (B, max_seq_len)
    labels = torch.stack([it["labels"] for it in items])  # (B, max_seq_len)
    if all_tokens:
        labels = input_ids.masked_fill(input_ids == pad_id, IGNORE_INDEX)
    length = int((input_ids != pad_id).sum(dim=1).max())
    return input_ids[:, :length], labels[:, :length]


def make_get_batch(dataset, train_idx, val_idx, batch_size: int, seed: int, all_tokens: bool = False):
    """train_model 要的 get_batch(split)：按 torch.Generator 随机抽样。

    验证集总是用数据集自带的 labels（SFT 里 = 只算助手回答），两种训练方式因此在同一把尺子上比较。
    """
    generators = {"train": torch.Generator().manual_seed(seed), "val": torch.Generator().manual_seed(seed + 1)}
    pools = {"train": list(train_idx), "val": list(val_idx)}
    pad_id = dataset.tokenizer.pad_token_id

    def get_batch(split):
        pool = pools[split]
        picks = torch.randint(len(pool), (batch_size,), generator=generators[split]).tolist()
        return stack([dataset[pool[i]] for i in picks], all_tokens and split == "train", pad_id)

    return get_batch


def pretrain(tokenizer, seed: int, steps: int, device, progress: bool = True):
    """在 dataset/samples/pretrain.jsonl 上从随机初始化预训练（与 trainer/train_pretrain.py 同样的数据类与 loss）。"""
    data = PretrainDataset(PRETRAIN_PATH, tokenizer, PRETRAIN_SEQ_LEN)
    train_idx, val_idx = split_heldout(len(data), n_heldout=len(data) // 10)
    model = new_model(tokenizer, seed)
    hist = train_model(model, make_get_batch(data, train_idx, val_idx, PRETRAIN_BATCH, seed), steps=steps,
                       lr=PRETRAIN_LR, eval_batches=2, device=device, progress=progress, desc=f"pretrain seed={seed}")
    check_finite(hist, "pretrain", seed)
    return model, hist


def finetune(base, dataset, train_idx, val_idx, seed: int, steps: int, device, all_tokens: bool = False,
             progress: bool = True, eval_every=None, on_eval=None):
    """从 base 的一份拷贝开始做全参数 SFT；base 本身不变。返回 (model, history)。

    给了 on_eval 时，每次验证（每 eval_every 步）都先调用 on_eval(n_updates, model)（见 with_eval_hook），
    用来画训练途中的学习曲线。"""
    model = copy.deepcopy(base)
    torch.manual_seed(seed)
    name = "sft all-token" if all_tokens else "sft masked"
    get_batch = make_get_batch(dataset, train_idx, val_idx, SFT_BATCH, seed, all_tokens)
    if on_eval is not None:
        get_batch = with_eval_hook(get_batch, model, on_eval)
    hist = train_model(model, get_batch, steps=steps, lr=SFT_LR, eval_batches=3, eval_every=eval_every, device=device,
                       progress=progress, desc=f"{name} seed={seed}")
    check_finite(hist, name, seed)
    return model, hist


def with_eval_hook(get_batch, model, on_eval):
    """包装 get_batch，让 train_model 每次验证时先调用 on_eval(n_updates, model)，训练循环本身不改
    （同 02-pretraining 实验 1 的做法）：数取过几个训练批就知道做完了几步；每轮验证取第一个验证批时，
    模型刚更新完、已处于 eval 模式，正好拿来生成。on_eval 不碰训练与验证批的随机数，训练结果与不加钩子时相同。"""
    n_updates, last_hooked = 0, None

    def hooked(split):
        nonlocal n_updates, last_hooked
        if split == "train":
            n_updates += 1
        elif n_updates != last_hooked:
            last_hooked = n_updates
            on_eval(n_updates, model)
        return get_batch(split)

    return hooked


def check_finite(hist: dict, name: str, seed: int):
    if hist["diverged_at"] is not None:
        raise SystemExit(f"{name}（seed={seed}）在第 {hist['diverged_at']} 步发散；请减少步数或换一个 --seed 重试")


def token_roles(ids, tokenizer):
    """每个 token 属于谁：返回与 ids 等长的列表，元素是 "system"/"user"/"assistant"（消息正文与结尾的
    <|im_end|>\\n）、"header"（<|im_start|>角色\\n 这几个固定 token）或 "pad"。

    靠 <|im_start|> 切分消息，角色名从它后面的 token 读出来，不依赖数据集的 labels（用来独立检查 labels）。
    （三个角色头的前缀互不相同，截断在角色头中间时也能认出来。）
    """
    ids = list(ids)
    roles, role, i = [], "pad", 0
    while i < len(ids):
        if ids[i] == tokenizer.pad_token_id:
            roles.append("pad")
            i += 1
        elif ids[i] == tokenizer.bos_token_id:
            for name in ("system", "user", "assistant"):
                header = [tokenizer.bos_token_id] + tokenizer.encode(name + "\n")
                piece = ids[i:i + len(header)]
                if piece == header[:len(piece)]:  # 截断时角色头可能只剩前半截
                    role = name
                    roles += ["header"] * len(piece)
                    i += len(piece)
                    break
            else:
                raise ValueError(f"位置 {i} 的 <|im_start|> 后面不是 system/user/assistant 的角色头")
        else:
            roles.append(role)
            i += 1
    return roles


@torch.no_grad()
def role_losses(model, dataset, indices, device) -> dict:
    """在这些对话上，模型对各部分 token 的平均交叉熵（预测第 t 个 token 用位置 t-1 的 logits）。

    "user" / "system"：该角色的消息正文（含结尾的 <|im_end|>\n，不含角色头）；
    "assistant"：SFTDataset 的 labels 里计 loss 的 token（助手回答 + <|im_end|>），即 SFT 训练的目标本身。
    返回 {部分: token 平均}，外加 "per_conversation"：{部分: [每段对话里该部分的平均]}（没有该部分的对话记 None）；
    quick 模式只有一个种子时，按对话配对的差值就是噪声检验的单位。
    """
    model.eval()
    sums, counts = {}, {}
    per_conversation = {part: [] for part in ("system", "user", "assistant")}
    for start in range(0, len(indices), 16):
        items = [dataset[i] for i in indices[start:start + 16]]
        input_ids, labels = stack(items, pad_id=dataset.tokenizer.pad_token_id)  # (B, T)
        input_ids = input_ids.to(device)
        logits = model(input_ids).logits  # (B, T, V)
        nll = F.cross_entropy(logits[:, :-1].transpose(1, 2), input_ids[:, 1:], reduction="none")  # (B, T-1)
        for row, ids in enumerate(input_ids.tolist()):
            roles = token_roles(ids, dataset.tokenizer)
            row_nll = {part: [] for part in per_conversation}
            for t in range(1, len(ids)):
                trained = bool(labels[row, t] != IGNORE_INDEX)
                part = "assistant" if trained else roles[t]
                if trained or part in ("system", "user"):  # 助手消息里不计 loss 的 <|im_end|> 后换行不归类
                    row_nll[part].append(nll[row, t - 1].item())
            for part, values in row_nll.items():
                sums[part] = sums.get(part, 0.0) + sum(values)
                counts[part] = counts.get(part, 0) + len(values)
                per_conversation[part].append(sum(values) / len(values) if values else None)
    losses = {part: sums[part] / counts[part] for part in sums if counts[part]}
    losses["per_conversation"] = per_conversation
    return losses


def kind_of(answer: str) -> str:
    if ARITHMETIC.match(answer):
        return "arithmetic"
    if answer in FACT_ANSWERS:
        return "fact"
    return "greeting" if answer in GREETING_ANSWERS else "other"


def heldout_prompts(rows) -> list:
    """每段对话取到第一个助手回答为止：提示 = 之前的消息（可能有 system），参考答案 = 那个回答。"""
    prompts = []
    for row in rows:
        messages = row["conversations"]
        k = next(j for j, m in enumerate(messages) if m["role"] == "assistant")
        reference = messages[k]["content"]
        prompts.append({"messages": messages[:k], "reference": reference, "kind": kind_of(reference)})
    return prompts


def fresh_prompts(n: int, seen_questions: set) -> list:
    """用生成 sft.jsonl 的同一个函数（dataset/make_samples.py 的 sft_conversations）换一个随机种子新抽对话，
    跳过第一个问题原文在 seen_questions（训练集的第一个问题）里的，取前 n 段的第一个问题。
    算术题的数字是新抽的；事实与问候来自同一张题表，只是问法（前缀、语言）在训练集里没原样出现过。"""
    prompts = [p for p in heldout_prompts(sft_conversations(random.Random(FRESH_DRAW_SEED)))
               if p["messages"][-1]["content"] not in seen_questions]
    if n > len(prompts):
        raise ValueError(f"新抽的对话里只有 {len(prompts)} 个训练集没见过的问题，要了 {n}")
    return prompts[:n]


@torch.no_grad()
def answer_prompts(model, tokenizer, prompts, device, max_new_tokens: int = MAX_NEW_TOKENS, overrun: int = 0) -> list:
    """贪心解码回答每个提示（套对话模板 + "<|im_start|>assistant\\n"，同 trainer/eval_llm.py），逐条打分。

    同样长度的提示一起成批生成（不需要 padding，结果与逐条生成相同）。
    每条返回：answer（解码文本）、n_tokens（不含 <|im_end|>）、ended（在 max_new_tokens 内生成了 <|im_end|>）、
    clean（回答里没有 <|im_start|>/<|endoftext|>、也没有 user/assistant/system 角色头）、
    on_template（ended 且 clean）、exact（与参考答案完全相同）、f1（与参考答案的 token 重合度，见 token_f1）、
    question（回答以问号结尾而参考答案不是：模型在助手的位置上写出了一个用户式的问题）。
    overrun > 0 时生成不在 <|im_end|> 处停，多生成 overrun 个 token（贪心解码：<|im_end|> 之前的部分与停下时相同），
    并多返回 after_end（<|im_end|> 之后生成的文本）与 continues_user（它接着写出了 "<|im_start|>user"，
    即模型替用户写下一轮——推理时不在 <|im_end|> 停就会出现的失败）。
    """
    encoded = [tokenizer.encode(tokenizer.apply_chat_template(p["messages"], add_generation_prompt=True))
               for p in prompts]
    by_length = {}
    for i, ids in enumerate(encoded):
        by_length.setdefault(len(ids), []).append(i)
    results = [None] * len(prompts)
    eos, specials = tokenizer.eos_token_id, {tokenizer.bos_token_id, tokenizer.pad_token_id}
    for length, group in by_length.items():
        input_ids = torch.tensor([encoded[i] for i in group], device=device)  # (B, T)
        # overrun > 0 时传 eos_token_id=-1（不是任何 token）：不在 <|im_end|> 停
        out = model.generate(input_ids, max_new_tokens=max_new_tokens + overrun,
                             eos_token_id=eos if overrun == 0 else -1, do_sample=False)
        for row, i in enumerate(group):
            generated = out[row, length:].tolist()
            ended = eos in generated[:max_new_tokens]
            new = generated[:generated.index(eos)] if ended else generated[:max_new_tokens]
            text = tokenizer.decode(new, skip_special_tokens=False)
            clean = not specials & set(new) and not any(f"{r}\n" in text for r in ("user", "assistant", "system"))
            results[i] = {"prompt": prompts[i]["messages"][-1]["content"], "reference": prompts[i]["reference"],
                          "kind": prompts[i]["kind"], "answer": text, "n_tokens": len(new), "ended": ended,
                          "clean": clean, "on_template": ended and clean,
                          "exact": text.strip() == prompts[i]["reference"].strip(),
                          "question": text.strip().endswith(("?", "？"))
                          and not prompts[i]["reference"].strip().endswith(("?", "？")),
                          "n_reference_tokens": len(tokenizer.encode(prompts[i]["reference"])),
                          "f1": token_f1(new, tokenizer.encode(prompts[i]["reference"]))}
            if overrun > 0:
                after_end = tokenizer.decode(generated[len(new) + 1:], skip_special_tokens=False) if ended else ""
                results[i]["after_end"] = after_end
                results[i]["continues_user"] = after_end.lstrip().startswith("<|im_start|>user")
    return results


def token_f1(answer_ids, reference_ids) -> float:
    """SQuAD 式的 F1，但在 BPE token 上算：把两边看成 token 的多重集合，重合数对精确率、召回率取调和平均。
    完全答对为 1，毫不相干为 0；比完全匹配更能看出"像不像参考答案"。"""
    common = sum((Counter(answer_ids) & Counter(reference_ids)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(answer_ids), common / len(reference_ids)
    return 2 * precision * recall / (precision + recall)


def answer_metrics(answers) -> dict:
    """一组回答的汇总：以 <|im_end|> 结束的比例、守模板的比例、平均长度、平均 F1、以问题作答的比例、按题型的完全匹配率。"""
    n = len(answers)
    metrics = {"ended": sum(a["ended"] for a in answers) / n,
               "on_template": sum(a["on_template"] for a in answers) / n,
               "mean_tokens": sum(a["n_tokens"] for a in answers) / n,
               "mean_reference_tokens": sum(a["n_reference_tokens"] for a in answers) / n,
               "exact": sum(a["exact"] for a in answers) / n,
               "question": sum(a["question"] for a in answers) / n,
               "f1": sum(a["f1"] for a in answers) / n}
    if "continues_user" in answers[0]:
        metrics["continues_user"] = sum(a["continues_user"] for a in answers) / n
    for kind in ("fact", "arithmetic", "greeting"):
        group = [a for a in answers if a["kind"] == kind]
        metrics[f"exact_{kind}"] = sum(a["exact"] for a in group) / len(group) if group else None
        metrics[f"n_{kind}"] = len(group)
    return metrics
