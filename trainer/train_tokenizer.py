"""训练一个字节级 BPE 分词器（与 MiniMind 相同的做法：特殊 token <|endoftext|> <|im_start|> <|im_end|> 占 id 0–2）。

    python trainer/train_tokenizer.py                                   # 用 dataset/samples/ 训练，写到 model/tokenizer/
    python trainer/train_tokenizer.py --data my_corpus.jsonl --vocab_size 6400 --out_dir out/tokenizer

语料可以是 .txt（每行一段）或 .jsonl（pretrain 的 {"text"}、SFT 的 {"conversations"}、DPO 的 {"chosen","rejected"} 都认）。
语料太小时 BPE 合并不到指定的词表大小就会停下，实际词表会更小（脚本会打印出来）。
"""
import argparse
import json
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # noqa: E402

from model.tokenization import DEFAULT_TOKENIZER_DIR, MiniMindTokenizer  # noqa: E402

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # id 0、1、2
# 我们自己的对话模板（ChatML 格式，与 MiniMind 训练数据的排版一致）：每条消息一段，末尾可加助手的开头
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
DEFAULT_DATA = [REPO_ROOT / "dataset" / "samples" / name for name in ("pretrain.jsonl", "sft.jsonl", "dpo.jsonl")]


def iter_texts(paths):
    """逐行产出语料文本；jsonl 里各种格式的消息内容都取出来。"""
    for path in paths:
        with open(path, encoding="utf-8") as f:
            for line_no, line in enumerate(f, 1):
                line = line.strip()
                if not line:
                    continue
                if path.suffix != ".jsonl":
                    yield line
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise SystemExit(f"错误：{path} 第 {line_no} 行不是合法 JSON（{e.msg}）")
                if "text" in row:
                    yield row["text"]
                for key in ("conversations", "chosen", "rejected"):
                    for message in row.get(key, []):
                        yield message["content"]


def train_tokenizer(paths, vocab_size: int) -> MiniMindTokenizer:
    tokenizer = Tokenizer(models.BPE())
    # 字节级：先把文本按 UTF-8 字节映射成 256 个可见字符，任何字符都能表示，不会有 <unk>
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(iter_texts(paths), trainer=trainer)
    config = {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
              "unk_token": "<|endoftext|>", "model_max_length": 32768, "chat_template": CHAT_TEMPLATE,
              "tokenizer_class": "PreTrainedTokenizerFast"}
    return MiniMindTokenizer(tokenizer, config, source="trained")


def main(argv=None):
    parser = argparse.ArgumentParser(description="训练字节级 BPE 分词器（MiniMind 的特殊 token 与对话模板）")
    parser.add_argument("--data", nargs="+", type=Path, default=DEFAULT_DATA, help="语料文件（.txt 或 .jsonl），可给多个")
    parser.add_argument("--vocab_size", type=int, default=6400, help="目标词表大小（含 3 个特殊 token）")
    parser.add_argument("--out_dir", type=Path, default=DEFAULT_TOKENIZER_DIR, help="输出目录")
    args = parser.parse_args(argv)
    if args.vocab_size < 256 + len(SPECIAL_TOKENS):
        parser.error(f"--vocab_size 至少要 {256 + len(SPECIAL_TOKENS)}（256 个字节 + 特殊 token）")
    missing = [str(p) for p in args.data if not p.is_file()]
    if missing:
        parser.error(f"找不到语料文件：{', '.join(missing)}")
    tok = train_tokenizer(args.data, args.vocab_size)
    for i, token in enumerate(SPECIAL_TOKENS):
        assert tok.tokenizer.token_to_id(token) == i
    tok.save(args.out_dir)
    print(f"词表大小 {tok.vocab_size}（目标 {args.vocab_size}）→ {args.out_dir}")


if __name__ == "__main__":
    main()
