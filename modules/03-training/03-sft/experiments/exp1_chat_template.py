"""实验 1：一段对话怎样变成 token id 和 loss 掩码？

全部用仓库里真实的代码：model/tokenization.py 的对话模板 + dataset/lm_dataset.py 的 SFTDataset.encode_messages
（trainer/train_full_sft.py 训练时用的就是它）。
  1. 取一段样本对话（默认：第一段带 system 提示的多轮对话），打印渲染后的模板文本，
     再逐 token 列出：token | id | 属于谁 | 算不算 loss；
  2. 对 sft.jsonl 的全部对话独立核对标签：按 <|im_start|> 切出每个 token 的角色（不看 labels），
     统计每种角色有多少 token 进了 loss；把 labels 里连续的非 -100 段解码，必须恰好等于
     "助手回答 + <|im_end|>"；
  3. 一段典型对话里有多大比例的 token 真正被训练；
  4. 可选：如果 ../shared/fixtures 里有 MiniMind2 与 minimind-3 的官方分词器，同一段对话用它们的模板再渲染一次
     （minimind-3 会在回答前插入空的 <think></think> 块）。
这个实验不训练模型、没有随机性，quick 与完整模式结果相同。
"""
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[4]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from dataset.lm_dataset import IGNORE_INDEX, SFTDataset, assistant_labels  # noqa: E402
from model.tokenization import load_tokenizer  # noqa: E402
from modules.common.experiment_base import Experiment  # noqa: E402
from modules.common.visualization import set_style  # noqa: E402
from sft_lab import SFT_PATH, SFT_SEQ_LEN, token_roles  # noqa: E402

FIXTURES_DIR = REPO_ROOT.parent / "shared" / "fixtures"
ROLE_COLORS = {"header": "#bbbbbb", "system": "#8da0cb", "user": "#fc8d62", "assistant": "#66c2a5", "pad": "#ffffff"}


def add_args(parser):
    parser.add_argument("--index", type=int, default=None,
                        help="展示 sft.jsonl 里第几段对话（从 0 起；默认第一段带 system 提示的多轮对话）")
    parser.add_argument("--max-seq-len", type=int, default=SFT_SEQ_LEN,
                        help=f"截断/补齐长度（默认 {SFT_SEQ_LEN}，不截断任何样本；调小可以看到截断怎样破坏标签）")


def show_token(tokenizer, token_id: int) -> str:
    """单个 token 的可读形式：能独立解码就显示文本（换行写成 \\n），半个汉字的字节片段显示 BPE 原始符号。"""
    text = tokenizer.decode([token_id], skip_special_tokens=False)
    if "\ufffd" in text:
        return tokenizer.tokenizer.id_to_token(token_id) + " (bytes)"
    return text.replace("\n", "\\n")


def learned_segments(ids, labels, tokenizer) -> list:
    """labels 里连续的非 -100 段，各自解码成文本（保留特殊 token）。"""
    segments, current = [], []
    for token, label in zip(ids, labels):
        if label != IGNORE_INDEX:
            current.append(token)
        elif current:
            segments.append(current)
            current = []
    if current:
        segments.append(current)
    return [tokenizer.decode(seg, skip_special_tokens=False) for seg in segments]


def audit(dataset) -> dict:
    """对所有对话核对标签：每种角色的 token 数与进 loss 的数，学到的片段是否恰好是助手回答 + <|im_end|>。"""
    tok = dataset.tokenizer
    per_role = {role: {"tokens": 0, "in_loss": 0} for role in ("header", "system", "user", "assistant")}
    exact, truncated, shares, mismatches = 0, 0, [], []
    for i in range(len(dataset)):
        messages = dataset.rows[i]["conversations"]
        item = dataset.encode_messages(messages)
        ids, labels = item["input_ids"].tolist(), item["labels"].tolist()
        roles = token_roles(ids, tok)
        for role, label in zip(roles, labels):
            if role != "pad":
                per_role[role]["tokens"] += 1
                per_role[role]["in_loss"] += label != IGNORE_INDEX
        n_real = sum(r != "pad" for r in roles)
        truncated += len(tok.encode(tok.apply_chat_template(messages))) > dataset.max_seq_len
        shares.append(sum(label != IGNORE_INDEX for label in labels) / n_real)
        expected = [m["content"] + tok.eos_token for m in messages if m["role"] == "assistant"]
        got = learned_segments(ids, labels, tok)
        if got == expected:
            exact += 1
        elif len(mismatches) < 3:
            mismatches.append({"index": i, "expected": expected, "got": got})
    return {"per_role": per_role, "n_conversations": len(dataset), "exact_match": exact, "truncated": truncated,
            "trained_share": shares, "mismatches": mismatches}


def other_templates(messages) -> dict:
    """用官方分词器（若存在）渲染同一段对话；返回 {名字: {"text", "think_tokens_in_loss"}}，缺文件时为空。"""
    found = {}
    for name, folder in (("MiniMind2", "minimind_tokenizer"), ("minimind-3", "minimind3_tokenizer")):
        path = FIXTURES_DIR / folder
        if not (path / "tokenizer.json").is_file():
            print(f"（跳过 {name} 的官方模板：没有 {path}）")
            continue
        tok = load_tokenizer(path)
        text = tok.apply_chat_template(messages)
        ids = tok.encode(text)
        labels = assistant_labels(ids, tok)
        think_ids = set(tok.encode("<think>") + tok.encode("</think>"))
        found[name] = {"text": text, "n_tokens": len(ids),
                       "in_loss": sum(label != IGNORE_INDEX for label in labels),
                       "think_tokens_in_loss": sum(label in think_ids for label in labels if label != IGNORE_INDEX)}
    return found


def pick_sample(dataset, index):
    if index is not None:
        if not 0 <= index < len(dataset):
            raise SystemExit(f"--index 必须在 0 到 {len(dataset) - 1} 之间（sft.jsonl 有 {len(dataset)} 段对话），收到 {index}")
        return index
    for i in range(len(dataset)):
        messages = dataset.rows[i]["conversations"]
        if messages[0]["role"] == "system" and sum(m["role"] == "user" for m in messages) >= 2:
            return i
    return 0


def main():
    exp = Experiment(__file__, extra_args=add_args, description=(
        "SFT 实验 1：对话模板与 loss 掩码。逐 token 展示一段对话的 id 与是否计 loss，\n"
        "并对 sft.jsonl 全部对话核对：用户/系统的 token 不进 loss，学到的恰好是助手回答 + <|im_end|>。"))
    if exp.args.max_seq_len < 8:
        raise SystemExit(f"--max-seq-len 至少为 8（收到 {exp.args.max_seq_len}）")
    tokenizer = load_tokenizer()
    dataset = SFTDataset(SFT_PATH, tokenizer, exp.args.max_seq_len)
    index = pick_sample(dataset, exp.args.index)
    messages = dataset.rows[index]["conversations"]

    # ---- 1. 一段对话：模板文本 → id → 掩码 ----
    text = tokenizer.apply_chat_template(messages)
    print(f"\nsft.jsonl 第 {index} 段对话渲染成的模板文本：\n{text}")
    item = dataset.encode_messages(messages)
    ids, labels = item["input_ids"].tolist(), item["labels"].tolist()
    roles = token_roles(ids, tokenizer)
    n_real = sum(r != "pad" for r in roles)
    exp.print_table(["pos", "token", "id", "role", "in loss"],
                    [[t, show_token(tokenizer, ids[t]), ids[t], roles[t], "yes" if labels[t] != IGNORE_INDEX else "-"]
                     for t in range(n_real)],
                    title=f"Conversation #{index}: {n_real} tokens (+{len(ids) - n_real} padding to {len(ids)})")

    # ---- 2. 全部对话的核对 ----
    result = audit(dataset)
    per_role = result["per_role"]
    shares = result["trained_share"]
    n = result["n_conversations"]
    total_real = sum(v["tokens"] for v in per_role.values())
    total_loss = sum(v["in_loss"] for v in per_role.values())
    exp.print_table(["role", "tokens", "in loss", "share in loss"],
                    [[role, v["tokens"], v["in_loss"], f"{v['in_loss'] / max(v['tokens'], 1):.1%}"]
                     for role, v in per_role.items()] + [["all", total_real, total_loss, f"{total_loss / total_real:.1%}"]],
                    title=f"All {n} conversations of sft.jsonl (max_seq_len={dataset.max_seq_len})")
    sorted_shares = sorted(shares)
    median = sorted_shares[len(shares) // 2]
    print(f"\n每段对话里被训练的 token 占比：中位数 {median:.1%}，最少 {sorted_shares[0]:.1%}，最多 {sorted_shares[-1]:.1%}；"
          f"学到的片段与助手回答完全一致的对话 {result['exact_match']}/{n}；被截断的对话 {result['truncated']}")

    # ---- 3. 可选：官方模板 ----
    templates = other_templates(messages)
    for name, t in templates.items():
        print(f"\n{name} 官方模板（{t['n_tokens']} 个 token，{t['in_loss']} 个进 loss，其中 <think>/</think> "
              f"{t['think_tokens_in_loss']} 个）：\n{t['text']}")

    exp.save_metrics({
        "sample": {"index": index, "messages": messages, "text": text, "n_tokens": n_real,
                   "tokens": [{"id": ids[t], "token": show_token(tokenizer, ids[t]), "role": roles[t],
                               "in_loss": labels[t] != IGNORE_INDEX} for t in range(n_real)]},
        "max_seq_len": dataset.max_seq_len,
        "per_role": per_role,
        "n_conversations": n,
        "exact_match": result["exact_match"],
        "truncated": result["truncated"],
        "mismatches": result["mismatches"],
        "trained_share": {"overall": total_loss / total_real, "median": median, "min": sorted_shares[0],
                          "max": sorted_shares[-1], "per_conversation": shares},
        "other_templates": templates,
    })

    # ---- 图：上 = 样本对话逐 token 的角色与掩码；左下 = 各角色 token 数；右下 = 被训练比例的分布 ----
    set_style()
    fig = plt.figure(figsize=(14, 7.5))
    grid = fig.add_gridspec(2, 2, height_ratios=[1, 1.4])
    ax = fig.add_subplot(grid[0, :])
    for t in range(n_real):
        ax.add_patch(plt.Rectangle((t, 1), 1, 1, color=ROLE_COLORS[roles[t]], ec="white"))
        if labels[t] != IGNORE_INDEX:
            ax.add_patch(plt.Rectangle((t, 0), 1, 1, color="black", ec="white"))
    ax.set_xlim(0, n_real)
    ax.set_ylim(0, 2)
    ax.set_yticks([0.5, 1.5], ["in loss", "role"])
    ax.set_xlabel("token position")
    ax.set_title(f"Conversation #{index}: who each token belongs to, and which tokens are trained (black)")
    ax.legend(handles=[Patch(color=c, label=r) for r, c in ROLE_COLORS.items() if r != "pad"],
              loc="upper center", bbox_to_anchor=(0.5, -0.35), ncol=4, fontsize=9)
    ax = fig.add_subplot(grid[1, 0])
    names = list(per_role)
    ax.bar(names, [per_role[r]["tokens"] for r in names], color=[ROLE_COLORS[r] for r in names], label="tokens")
    ax.bar(names, [per_role[r]["in_loss"] for r in names], color="black", width=0.4, label="in loss")
    ax.set_ylabel("tokens (all conversations)")
    ax.set_title("Tokens per role vs tokens in the loss")
    ax.legend()
    ax = fig.add_subplot(grid[1, 1])
    ax.hist(shares, bins=20, color=ROLE_COLORS["assistant"], edgecolor="white")
    ax.axvline(median, color="black", ls="--", label=f"median {median:.0%}")
    ax.set_xlabel("share of a conversation's tokens that are trained")
    ax.set_ylabel("conversations")
    ax.set_title("How much of each conversation is learned")
    ax.legend()
    fig.tight_layout()
    exp.save_figure(fig, "exp1_chat_template.png")

    # ---- 结论（由上面的核对算出）----
    prompt_in_loss = per_role["system"]["in_loss"] + per_role["user"]["in_loss"] + per_role["header"]["in_loss"]
    exp.conclude("用户、系统的 token 和角色头 <|im_start|>xxx\\n 的 loss 权重为 0",
                 prompt_in_loss == 0,
                 f"system {per_role['system']['in_loss']}/{per_role['system']['tokens']}、"
                 f"user {per_role['user']['in_loss']}/{per_role['user']['tokens']}、"
                 f"header {per_role['header']['in_loss']}/{per_role['header']['tokens']} 个 token 进了 loss")
    exp.conclude("进 loss 的 token 解码后恰好是每个助手回答 + <|im_end|>（所有对话）",
                 result["exact_match"] == n,
                 f"{result['exact_match']}/{n} 段对话完全一致；截断的对话 {result['truncated']} 段"
                 + (f"；第一个不一致：{result['mismatches'][0]}" if result["mismatches"] else ""))
    exp.conclude("一段典型对话里只有不到一半的 token 被训练",
                 median < 0.5,
                 f"被训练 token 占比的中位数 {median:.1%}（全体 {total_loss}/{total_real} = {total_loss / total_real:.1%}）")
    exp.finish()


if __name__ == "__main__":
    main()
