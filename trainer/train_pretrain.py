"""预训练：在纯文本上学"预测下一个 token"。

    python trainer/train_pretrain.py --quick                       # CPU 一分钟：小模型 + 自带样本
    python trainer/train_pretrain.py --data_path pretrain_hq.jsonl # MiniMind 的预训练数据，默认 26M 配置
    torchrun --nproc_per_node=2 trainer/train_pretrain.py --quick  # 多进程（CPU 上走 gloo）
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dataset.lm_dataset import PretrainDataset  # noqa: E402
from trainer.trainer_utils import (  # noqa: E402
    SAMPLES_DIR, Runtime, build_model, build_parser, load_tokenizer_or_exit, parse_args, run_main, seed_everything,
    supervised_tokens, train,
)


def language_model_loss(model, batch):
    out = model(batch["input_ids"], labels=batch["labels"])
    return out.loss + out.aux_loss, {"aux_loss": out.aux_loss.item()}  # aux_loss：MoE 的负载均衡项，稠密模型为 0


def main(argv=None):
    parser = build_parser("MiniMind 预训练", SAMPLES_DIR / "pretrain.jsonl", save_weight="pretrain",
                          learning_rate=5e-4, batch_size=32, max_seq_len=340)
    args = parse_args(parser, argv)
    runtime = Runtime(args)
    seed_everything(args.seed)
    tokenizer = load_tokenizer_or_exit(args)
    dataset = PretrainDataset(args.data_path, tokenizer, args.max_seq_len, args.skip_bad_lines)
    model = build_model(args, tokenizer)
    if runtime.is_main:
        skipped = f"，跳过坏行 {dataset.rows.skipped}" if args.skip_bad_lines else ""
        print(f"数据 {args.data_path}：{len(dataset)} 条{skipped}；模型 {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M 参数；"
              f"设备 {runtime.device}，精度 {runtime.dtype}，进程数 {runtime.world_size}")
    train(args, runtime, model, dataset, language_model_loss, desc="pretrain", count_units=supervised_tokens)
    runtime.close()


if __name__ == "__main__":
    run_main(main)
