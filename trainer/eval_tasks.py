"""在可验证任务的留出集上评测一个模型：贪心 pass@1、pass@k（无偏估计）与 k 次采样的多数投票（见 trainer/rl/evaluate.py）。

    python trainer/eval_tasks.py --quick --weight grpo --eval_samples 8    # out/grpo_128.pth
    python trainer/eval_tasks.py --weights out/reason_512.pth --max_gen_len 256
"""
import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dataset.rl_dataset import RLPromptDataset  # noqa: E402
from trainer.model_loading import ModelLoadError, add_model_args, load_chat_model, resolve_model_args  # noqa: E402
from trainer.rl.evaluate import evaluate_tasks  # noqa: E402
from trainer.rl.startup import QUICK_RL  # noqa: E402
from trainer.trainer_utils import SAMPLES_DIR, fail  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="可验证任务的留出集评测", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_model_args(p)  # --quick --weights --weight --save_dir --tokenizer --family ...（与 eval_llm.py 共用）
    p.set_defaults(weight="grpo")
    p.add_argument("--data_path", type=Path, default=SAMPLES_DIR / "rl_eval.jsonl", help="留出集（带 answer/task）")
    p.add_argument("--max_gen_len", type=int, default=None, help="每条回答最多生成多少 token（默认 256，--quick 时 12）")
    p.add_argument("--eval_samples", type=int, default=0, help="k：每题再采样 k 条，报 pass@k 与 maj@k")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--thinking", type=int, choices=[0, 1], default=1)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.max_gen_len is None:
        args.max_gen_len = QUICK_RL["max_gen_len"] if args.quick else 256
    if args.max_gen_len <= 0 or args.eval_samples < 0 or args.temperature <= 0:
        p.error("需要 --max_gen_len > 0、--eval_samples >= 0、--temperature > 0")
    if not args.data_path.is_file():
        p.error(f"找不到留出集 {args.data_path}（--data_path）")
    try:
        return resolve_model_args(args)
    except ModelLoadError as e:
        p.error(str(e))


def main(argv=None):
    args = parse_args(argv)
    try:
        model, tokenizer = load_chat_model(args)
        dataset = RLPromptDataset(args.data_path, tokenizer, max_prompt_len=256, thinking=bool(args.thinking))
        metrics = evaluate_tasks(model, tokenizer, dataset, args.max_gen_len, num_samples=args.eval_samples,
                                 temperature=args.temperature, seed=args.seed)
    except (ModelLoadError, ValueError) as e:
        fail(str(e))
    print(json.dumps(metrics, ensure_ascii=False, indent=1))


if __name__ == "__main__":
    main()
