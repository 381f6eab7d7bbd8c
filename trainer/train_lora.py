"""LoRA 微调：冻结基座，只训练挂在方阵 Linear（q_proj、o_proj …）上的低秩适配器，最后只保存适配器。

    python trainer/train_lora.py --quick                                  # 在 --quick 的 SFT 模型上学"新身份"
    python trainer/train_lora.py --data_path lora_medical.jsonl --from_weight full_sft --lora_rank 8

保存的是 <save_dir>/<save_weight>_<hidden>.pth，里面只有 lora_A / lora_B（几十 KB）；
旁边的同名 .json 记下秩、alpha、目标层，对话时直接用：python trainer/eval_llm.py --quick --lora_weight out/lora_identity_128.pth
"""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dataset.lm_dataset import SFTDataset  # noqa: E402
from model.model_lora import apply_lora, lora_modules, save_lora  # noqa: E402
from trainer.train_pretrain import language_model_loss  # noqa: E402
from trainer.trainer_utils import (  # noqa: E402
    SAMPLES_DIR, Runtime, build_model, build_parser, load_tokenizer_or_exit, parse_args, run_main, seed_everything,
    supervised_tokens, train, weight_path,
)


def save_adapter(model, args, runtime):
    save_lora(model, weight_path(args))
    # 旁边的同名 .json 记下秩、alpha 与目标层：eval_llm.py --lora_weight 据此挂回适配器，不必重敲参数
    layer = lora_modules(model)[0]
    with open(weight_path(args).with_suffix(".json"), "w", encoding="utf-8") as f:
        json.dump({"lora_rank": layer.rank, "lora_alpha": layer.scaling * layer.rank,
                   "lora_targets": args.lora_targets, "from_weight": args.from_weight}, f, ensure_ascii=False, indent=2)


def main(argv=None):
    parser = build_parser("MiniMind LoRA 微调", SAMPLES_DIR / "lora_identity.jsonl", save_weight="lora_identity",
                          learning_rate=1e-4, epochs=10, batch_size=32, max_seq_len=340, from_weight="full_sft")
    parser.add_argument("--lora_rank", type=int, default=8, help="低秩矩阵的秩 r")
    parser.add_argument("--lora_targets", nargs="*", default=None,
                        help="挂 LoRA 的层名（如 q_proj v_proj）；默认所有方阵 Linear，与 MiniMind 相同")
    args = parse_args(parser, argv, quick_overrides=dict(epochs=16, batch_size=8, learning_rate=1e-2))
    if args.lora_rank <= 0:
        parser.error(f"--lora_rank 必须是正整数，收到 {args.lora_rank}")
    runtime = Runtime(args)
    seed_everything(args.seed)
    tokenizer = load_tokenizer_or_exit(args)
    dataset = SFTDataset(args.data_path, tokenizer, args.max_seq_len, args.skip_bad_lines)
    model = build_model(args, tokenizer)
    targets = apply_lora(model, rank=args.lora_rank, target_modules=args.lora_targets)
    if runtime.is_main:
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in model.parameters())
        print(f"LoRA r={args.lora_rank} 挂在 {len(targets)} 个 Linear 上：可训练 {trainable:,} / {total:,} 参数"
              f"（{100 * trainable / total:.2f}%）；数据 {len(dataset)} 段对话")
    train(args, runtime, model, dataset, language_model_loss, desc="lora", save=save_adapter,
          count_units=supervised_tokens)
    runtime.close()


if __name__ == "__main__":
    run_main(main)
