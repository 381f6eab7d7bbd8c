"""实验 1：从零写一个字节级 BPE，再和 Hugging Face tokenizers 训练出的结果逐条对照。

语料与仓库分词器完全相同：trainer/train_tokenizer.py 的 iter_texts(DEFAULT_DATA)（dataset/samples 的
pretrain + sft + dpo，中英混合）；留出集是没有参与训练的 dataset/samples/lora_identity.jsonl。

  1. 从 UTF-8 字节出发，反复把出现最多的相邻一对合并成新 token（几十行，就在本文件里）；
  2. 打印最早的合并、词表增长时压缩率（字节/token）的变化、一句话在 0/10/100/N 次合并后的切分；
  3. 用 trainer/train_tokenizer.py::train_tokenizer 以相同的合并次数训练 HF 字节级 BPE，比较前 K 次合并、
     最终词表、留出句子的切分是否一致；
  4. 对照：不做 GPT-2 正则预切分时，合并会跨过空格把 "单词 + 空格 + 下一个词" 粘在一起。
BPE 训练是确定性的（没有随机数），所以完整模式也只跑一次。
"""
import json
import re
import sys
from collections import Counter
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[4]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import matplotlib.pyplot as plt  # noqa: E402
from tqdm import tqdm  # noqa: E402

from modules.common.experiment_base import Experiment  # noqa: E402
from modules.common.visualization import set_style  # noqa: E402
from trainer.train_tokenizer import DEFAULT_DATA, SPECIAL_TOKENS, iter_texts, train_tokenizer  # noqa: E402

HELD_OUT = REPO_ROOT / "dataset" / "samples" / "lora_identity.jsonl"
DEMO_SENTENCES = ("我是小笔记，一个在 MiniMind Notes 课程里用 LoRA 微调出来的小模型。",
                  "Introduce yourself.")
# GPT-2 的预切分正则（HF ByteLevel 用的就是它）：\p{L} 写成 [^\W\d_]，\p{N} 写成 \d（标准库 re 没有 \p{...}）
GPT2_SPLIT = re.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?[^\W\d_]+| ?\d+| ?(?:[^\s\w]|_)+|\s+(?!\S)|\s+""")


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2 的字节 → 可见字符表：可打印字节映射到自己，其余（空格、控制符……）挪到 U+0100 之后，如空格 → 'Ġ'。"""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    mapping = {b: chr(b) for b in printable}
    for n, b in enumerate(b for b in range(256) if b not in mapping):
        mapping[b] = chr(256 + n)
    return mapping


BYTE_TO_CHAR = bytes_to_unicode()
CHAR_TO_BYTE = {c: b for b, c in BYTE_TO_CHAR.items()}
# HF 的初始词表按这些可见字符的码位排序。用同样的顺序给 256 个字节编号，"次数并列时选 id 更小的一对" 才与 HF 一致
BYTE_OF_ID = sorted(range(256), key=lambda b: BYTE_TO_CHAR[b])
ID_OF_BYTE = {b: i for i, b in enumerate(BYTE_OF_ID)}


# ---------------------------------------------------------------- 从零实现的 BPE（训练 + 编码）

def word_counts(texts, presplit: bool = True) -> Counter:
    """{字节 id 序列: 出现次数}。presplit=True 先按 GPT-2 正则切成"词"，合并就不会跨过词边界。"""
    counts = Counter()
    for text in texts:
        for piece in (GPT2_SPLIT.findall(text) if presplit else [text]):
            counts[tuple(ID_OF_BYTE[b] for b in piece.encode("utf-8"))] += 1
    return counts


def pair_counts(words: Counter) -> Counter:
    """所有相邻 id 对的出现次数（每个词按它的频次加权）。"""
    stats = Counter()
    for word, n in words.items():
        for pair in zip(word, word[1:]):
            stats[pair] += n
    return stats


def merge(word: tuple, pair: tuple, new_id: int) -> tuple:
    """把 word 里从左到右不重叠的每个 pair 换成 new_id。"""
    out, i = [], 0
    while i < len(word):
        if i + 1 < len(word) and (word[i], word[i + 1]) == pair:
            out.append(new_id)
            i += 2
        else:
            out.append(word[i])
            i += 1
    return tuple(out)


def train_bpe(words: Counter, num_merges: int, progress: bool = True):
    """返回 (merges, vocab, history)：merges[i] = (pair, 次数)，新 token 的 id 是 256 + i；vocab: id → bytes；
    history[i] = 做完 i 次合并后语料的 token 总数。语料里已没有可合并的相邻对时提前停下（与 HF 相同）。"""
    vocab = {i: bytes([b]) for i, b in enumerate(BYTE_OF_ID)}
    merges = []
    history = [sum(len(w) * n for w, n in words.items())]
    for step in tqdm(range(num_merges), desc="BPE (scratch)", disable=not progress, leave=False):
        stats = pair_counts(words)
        if not stats:
            break
        pair = max(stats, key=lambda p: (stats[p], -p[0], -p[1]))  # 次数最多；并列时取 id 更小的一对（同 HF）
        new_id = 256 + step
        merged = Counter()
        for word, n in words.items():
            merged[merge(word, pair, new_id) if pair[0] in word else word] += n
        words = merged
        vocab[new_id] = vocab[pair[0]] + vocab[pair[1]]
        merges.append((pair, stats[pair]))
        history.append(sum(len(w) * n for w, n in words.items()))
    return merges, vocab, history


def encode(text: str, merges, vocab, num_merges=None) -> list[bytes]:
    """用前 num_merges 次合并切分 text：每个预切分的词里，反复应用 rank 最小（最早学到）的那次合并。"""
    rank = {pair: i for i, (pair, _) in enumerate(merges[:num_merges])}
    tokens = []
    for piece in GPT2_SPLIT.findall(text):
        ids = [ID_OF_BYTE[b] for b in piece.encode("utf-8")]
        while len(ids) >= 2:
            pair = min(zip(ids, ids[1:]), key=lambda p: rank.get(p, float("inf")))
            if pair not in rank:
                break
            ids = list(merge(tuple(ids), pair, 256 + rank[pair]))
        tokens.extend(vocab[i] for i in ids)
    return tokens


# ---------------------------------------------------------------- 与 HF 对照用的小工具

def show(token: bytes) -> str:
    """token 的可读形式：完整的 UTF-8 直接显示（空格显示成 ␣），半个汉字之类显示成 <e6 88>。"""
    try:
        return token.decode("utf-8").replace(" ", "␣").replace("\n", "\\n")
    except UnicodeDecodeError:
        return "<" + " ".join(f"{b:02x}" for b in token) + ">"


def hf_merges_and_vocab(hf_tok):
    """HF tokenizer.json 里的 merges 与词表（去掉特殊 token），都换回原始字节。"""
    model = json.loads(hf_tok.tokenizer.to_str())["model"]
    to_bytes = lambda s: bytes(CHAR_TO_BYTE[c] for c in s)  # noqa: E731
    merges = [(to_bytes(a), to_bytes(b)) for a, b in (m.split(" ") if isinstance(m, str) else m for m in model["merges"])]
    vocab = {to_bytes(t) for t in model["vocab"] if t not in SPECIAL_TOKENS}
    return merges, vocab


def hf_encode(hf_tok, text: str) -> list[bytes]:
    return [bytes(CHAR_TO_BYTE[c] for c in t) for t in hf_tok.tokenizer.encode(text, add_special_tokens=False).tokens]


def hf_presplit(hf_tok, text: str) -> list[str]:
    """HF ByteLevel 预切分的结果，换回原文片段（用来检查我们的 GPT2_SPLIT 与它一致）。"""
    return [text[a:b] for _, (a, b) in hf_tok.tokenizer.pre_tokenizer.pre_tokenize_str(text)]


def crosses_word_boundary(token: bytes) -> bool:
    """token 里有一个不在开头的空格（如 b"s a"），说明它把两个词粘在了一起——预切分后不可能出现。"""
    return b" " in token.lstrip(b" ")


def main():
    def extra_args(parser):
        parser.add_argument("--merges", type=int, default=None,
                            help="合并次数（默认 quick 500，完整 3000；语料不够时提前停下）")
        parser.add_argument("--top-k", type=int, default=None, help="比较前 K 次合并（默认 quick 100，完整 500）")

    exp = Experiment(__file__, description=(
        "分词器实验 1：几十行从零实现字节级 BPE，展示合并过程与压缩率，\n"
        "并与 trainer/train_tokenizer.py（HF tokenizers）在同一语料、同样合并次数下逐条对照。"), extra_args=extra_args)
    num_merges = exp.args.merges if exp.args.merges is not None else (500 if exp.quick else 3000)
    top_k = exp.args.top_k if exp.args.top_k is not None else (100 if exp.quick else 500)
    if num_merges < 1:
        raise SystemExit(f"错误：--merges 必须 ≥ 1（收到 {num_merges}）")
    if not 1 <= top_k <= num_merges:
        raise SystemExit(f"错误：--top-k 必须在 1 到 --merges（{num_merges}）之间，收到 {top_k}")

    texts = list(iter_texts(DEFAULT_DATA))
    held_out = list(iter_texts([HELD_OUT]))
    corpus_bytes = sum(len(t.encode("utf-8")) for t in texts)
    print(f"训练语料：{len(texts)} 段，{corpus_bytes} 字节（{', '.join(p.name for p in DEFAULT_DATA)}）；"
          f"留出：{len(held_out)} 段（{HELD_OUT.name}）")

    # 1. 从零训练
    words = word_counts(texts)
    merges, vocab, history = train_bpe(words, num_merges)
    n = len(merges)
    print(f"预切分后 {len(words)} 个不同的词；完成 {n} 次合并（要求 {num_merges}）"
          + ("" if n == num_merges else "：语料里已没有可合并的相邻对，提前停下"))
    exp.print_table(["#", "pair", "→ token", "count"],
                    [[i + 1, f"{show(vocab[a])} + {show(vocab[b])}", show(vocab[256 + i]), c]
                     for i, ((a, b), c) in enumerate(merges[:15])], title="First merges (from scratch)")

    # 2. 词表增长 → 压缩率
    checkpoints = sorted({k for k in (0, 10, 30, 100, 300, 1000, 2000, n) if k <= n})
    held_text_bytes = sum(len(t.encode("utf-8")) for t in held_out)
    held_bpt = {k: held_text_bytes / sum(len(encode(t, merges, vocab, k)) for t in held_out) for k in checkpoints}
    train_bpt = [corpus_bytes / h for h in history]
    exp.print_table(["merges", "vocab (bytes+merges)", "bytes/token train", "bytes/token held-out"],
                    [[k, 256 + k, train_bpt[k], held_bpt[k]] for k in checkpoints], title="Compression vs merges")

    stages = {}
    for sentence in DEMO_SENTENCES:
        stages[sentence] = {k: [show(t) for t in encode(sentence, merges, vocab, k)]
                            for k in sorted({0, min(10, n), min(100, n), n})}
        print(f"\n「{sentence}」")
        for k, toks in stages[sentence].items():
            print(f"  {k:>5} 次合并，{len(toks):>3} 个 token：{' | '.join(toks)}")

    # 3. 同样合并次数的 HF 字节级 BPE（仓库的训练函数），逐条对照
    hf = train_tokenizer(DEFAULT_DATA, vocab_size=256 + len(SPECIAL_TOKENS) + num_merges)
    hf_merges, hf_vocab = hf_merges_and_vocab(hf)
    ours = [(vocab[a], vocab[b]) for (a, b), _ in merges]
    k = min(top_k, n, len(hf_merges))
    same_position = sum(a == b for a, b in zip(ours[:k], hf_merges[:k]))
    set_overlap = len(set(ours[:k]) & set(hf_merges[:k])) / k
    # 第一处不同的合并（从 1 数）；两边完全相同时为 None
    first_diff = next((i + 1 for i, (a, b) in enumerate(zip(ours, hf_merges)) if a != b),
                      None if len(ours) == len(hf_merges) else min(len(ours), len(hf_merges)) + 1)
    our_vocab = set(vocab.values())
    vocab_overlap = len(our_vocab & hf_vocab) / len(our_vocab | hf_vocab)
    agree = [encode(t, merges, vocab) == hf_encode(hf, t) for t in held_out]
    presplit_same = sum(GPT2_SPLIT.findall(t) == hf_presplit(hf, t) for t in texts + held_out)
    exp.print_table(["metric", "value"], [
        ["merges (scratch / HF)", f"{n} / {len(hf_merges)}"],
        [f"first {k} merges: same position", f"{same_position}/{k}"],
        [f"first {k} merges: set overlap", f"{set_overlap:.1%}"],
        ["first differing merge", first_diff or "none"],
        ["final vocab overlap (Jaccard)", f"{vocab_overlap:.1%}"],
        ["held-out texts tokenised identically", f"{sum(agree)}/{len(agree)}"],
        ["pre-split identical to HF ByteLevel", f"{presplit_same}/{len(texts) + len(held_out)}"],
    ], title="Scratch vs Hugging Face tokenizers")

    # 4. 对照：不预切分，合并会跨过空格
    raw_merges_n = min(100, num_merges) if exp.quick else min(300, num_merges)
    raw_merges, raw_vocab, _ = train_bpe(word_counts(texts, presplit=False), raw_merges_n)
    raw_tokens = [raw_vocab[256 + i] for i in range(len(raw_merges))]
    crossing = [show(t) for t in raw_tokens if crosses_word_boundary(t)]
    print(f"\n不预切分时前 {len(raw_tokens)} 次合并里有 {len(crossing)} 个跨词 token，例如：{' | '.join(crossing[:12])}")
    crossing_presplit = sum(crosses_word_boundary(vocab[256 + i]) for i in range(n))

    set_style()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    axes[0].plot(range(len(train_bpt)), train_bpt, label="train corpus (scratch)")
    axes[0].plot(checkpoints, [held_bpt[c] for c in checkpoints], "o-", label="held-out (scratch)")
    hf_held = held_text_bytes / sum(len(hf_encode(hf, t)) for t in held_out)
    axes[0].plot([len(hf_merges)], [hf_held], "k*", markersize=12, label="held-out (HF tokenizers)")
    axes[0].set(xlabel="number of merges", ylabel="UTF-8 bytes per token", title="Compression grows with merges")
    axes[0].legend()
    axes[1].plot(range(1, n + 1), [c for _, c in merges])
    axes[1].set(xscale="log", yscale="log", xlabel="merge index", ylabel="pair count when merged",
                title="Each new merge saves fewer tokens")
    exp.save_figure(fig, "exp1_bpe_from_scratch.png")

    exp.save_metrics({
        "corpus": {"texts": len(texts), "bytes": corpus_bytes, "unique_words": len(words),
                   "held_out_texts": len(held_out), "held_out_bytes": held_text_bytes},
        "num_merges_requested": num_merges, "num_merges": n, "hf_num_merges": len(hf_merges), "top_k": k,
        "first_merges": [{"pair": [show(vocab[a]), show(vocab[b])], "token": show(vocab[256 + i]), "count": c}
                         for i, ((a, b), c) in enumerate(merges[:30])],
        "hf_first_merges": [[show(a), show(b)] for a, b in hf_merges[:30]],
        "bytes_per_token_train": {str(c): train_bpt[c] for c in checkpoints},
        "bytes_per_token_held_out": {str(c): held_bpt[c] for c in checkpoints},
        "hf_bytes_per_token_held_out": hf_held,
        "stages": stages,
        "top_k_same_position": same_position, "top_k_set_overlap": set_overlap, "first_differing_merge": first_diff,
        "vocab_overlap": vocab_overlap, "held_out_agreement": sum(agree) / len(agree),
        "presplit_agreement": presplit_same / (len(texts) + len(held_out)),
        "no_presplit": {"merges": len(raw_tokens), "crossing_tokens": len(crossing), "examples": crossing[:20]},
        "presplit_crossing_tokens": crossing_presplit,
    })

    bpt_values = [held_bpt[c] for c in checkpoints]
    exp.conclude("每多学一批合并，留出文本的压缩率（字节/token）就更高",
                 holds=all(b > a for a, b in zip(bpt_values, bpt_values[1:])),
                 evidence=" → ".join(f"{c}:{held_bpt[c]:.2f}" for c in checkpoints))
    exp.conclude(f"从零实现与 HF tokenizers 的前 {k} 次合并相同（≥ 95%）", holds=set_overlap >= 0.95,
                 evidence=f"集合重合 {set_overlap:.1%}，同位置相同 {same_position}/{k}"
                          + (f"，第一次不同在第 {first_diff} 次合并" if first_diff else "，全部合并逐条相同"))
    exp.conclude("留出句子的切分与 HF 完全一致", holds=all(agree),
                 evidence=f"{sum(agree)}/{len(agree)} 段相同；最终词表 Jaccard 重合 {vocab_overlap:.1%}")
    exp.conclude("不做预切分时，BPE 会学出跨越空格的 token；预切分后一个也没有",
                 holds=len(crossing) > 0 and crossing_presplit == 0,
                 evidence=f"不预切分：前 {len(raw_tokens)} 次合并里 {len(crossing)} 个跨词；预切分：{crossing_presplit} 个")
    exp.finish()


if __name__ == "__main__":
    main()
