"""全参数指令微调（SFT）：在对话数据上继续训练，只对助手的回答计算 loss。

    python trainer/train_pretrain.py --quick && python trainer/train_full_sft.py --quick
    python trainer/train_full_sft.py --data_path sft_mini_512.jsonl --from_weight pretrain
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dataset.lm_dataset import SFTDataset  # noqa: E402
from trainer.train_pretrain import language_model_loss  # noqa: E402
from trainer.trainer_utils import (  # noqa: E402
    SAMPLES_DIR, Runtime, build_model, build_parser, load_tokenizer_or_exit, parse_args, run_main, seed_everything,
    supervised_tokens, train,
)


def main(argv=None):
    parser = build_parser("MiniMind 全参数 SFT", SAMPLES_DIR / "sft.jsonl", save_weight="full_sft",
                          learning_rate=1e-5, epochs=2, batch_size=16, max_seq_len=340, from_weight="pretrain")
    args = parse_args(parser, argv)
    runtime = Runtime(args)
    seed_everything(args.seed)
    tokenizer = load_tokenizer_or_exit(args)
    dataset = SFTDataset(args.data_path, tokenizer, args.max_seq_len, args.skip_bad_lines)
    model = build_model(args, tokenizer)
    if runtime.is_main:
        print(f"数据 {args.data_path}：{len(dataset)} 段对话；从 {args.from_weight} 开始；设备 {runtime.device}")
    train(args, runtime, model, dataset, language_model_loss, desc="sft", count_units=supervised_tokens)
    runtime.close()


if __name__ == "__main__":
    run_main(main)
