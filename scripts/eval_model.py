"""评测你的模型：留出文本的困惑度与 bpb、选择题准确率（三种打分）、可验证任务的 pass@k，以及 lm-eval 的任务。

    python scripts/eval_model.py --quick --weight pretrain                 # 默认：自带的留出文本 + 两套选择题
    python scripts/eval_model.py --weights out/pretrain_512.pth --mc_data my_ceval.jsonl --mc_mode letter
    python scripts/eval_model.py --weights MiniMind2.pth --tokenizer path/to/minimind_tokenizer --bpb_data my.txt
    python scripts/eval_model.py --quick --weight grpo --gen_data dataset/samples/rl_eval.jsonl --eval_samples 8
    python scripts/eval_model.py --quick --weight pretrain --lm_eval_tasks minimind_mc_zh   # 需要 requirements-eval.txt

选模型的参数与 trainer/eval_llm.py 相同（trainer/model_loading.py）：本仓库的 .pth、MiniMind 发布的 .pth（两代）、
转出的 transformers 文件夹、--lora_weight。结果打印成表格，完整结果（含逐题对错）写到 --output 的 JSON。
逻辑在 trainer/evaluation/（打分、bpb、选择题、lm-eval 适配器）和 trainer/rl/evaluate.py（pass@k）。
"""
import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dataset.rl_dataset import RLPromptDataset  # noqa: E402
from trainer.evaluation.items import EvalDataError, load_mc_items, load_texts  # noqa: E402
from trainer.evaluation.multiple_choice import MC_MODES, evaluate_mc  # noqa: E402
from trainer.evaluation.perplexity import evaluate_text  # noqa: E402
from trainer.evaluation.report import format_table  # noqa: E402
from trainer.model_loading import ModelLoadError, add_model_args, load_chat_model, resolve_model_args, weights_path  # noqa: E402
from trainer.rl.evaluate import evaluate_tasks  # noqa: E402
from trainer.rl.startup import QUICK_RL  # noqa: E402
from trainer.trainer_utils import QUICK_OVERRIDES, REPO_ROOT, SAMPLES_DIR, fail  # noqa: E402

DEFAULT_BPB = [SAMPLES_DIR / "eval_text.jsonl"]
DEFAULT_MC = [SAMPLES_DIR / "eval_mc_zh.jsonl", SAMPLES_DIR / "eval_mc_en.jsonl"]
LM_EVAL_TASK_DIR = SAMPLES_DIR / "lm_eval_tasks"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="评测模型：bpb、选择题、pass@k、lm-eval",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_model_args(p)  # --quick --weights --weight --save_dir --tokenizer --family ... --lora_weight
    p.set_defaults(weight="pretrain")
    p.add_argument("--bpb_data", type=Path, nargs="+", default=None,
                   help="留出文本（.txt 整个文件一篇，.jsonl 每行 {\"text\": ...}）；四项评测都没指定时用自带的 eval_text.jsonl")
    p.add_argument("--mc_data", type=Path, nargs="+", default=None,
                   help="选择题 jsonl（C-Eval 格式：question、A–D、answer）；都没指定时用自带的中英文两套")
    p.add_argument("--mc_mode", choices=[*MC_MODES, "all"], default="all",
                   help="选项打分：sum 对数概率之和、norm 按字符数归一化、letter 比较答案字母")
    p.add_argument("--gen_data", type=Path, default=None, help="生成式精确匹配：可验证任务的留出集（如 rl_eval.jsonl）")
    p.add_argument("--eval_samples", type=int, default=0, help="生成式：每题再采样 k 条，报 pass@k 与多数投票 maj@k")
    p.add_argument("--max_gen_len", type=int, default=None, help="生成式：每条最多生成多少 token（默认 256，--quick 时 12）")
    p.add_argument("--temperature", type=float, default=1.0, help="生成式采样的温度")
    p.add_argument("--thinking", type=int, choices=[0, 1], default=1, help="生成式：对话模板是否开启 <think>")
    p.add_argument("--lm_eval_tasks", nargs="+", default=None,
                   help="用 lm-evaluation-harness 跑的任务名（本地任务在 --lm_eval_include 里，如 minimind_mc_zh）")
    p.add_argument("--lm_eval_include", type=Path, default=LM_EVAL_TASK_DIR, help="本地 lm-eval 任务 YAML 所在目录")
    p.add_argument("--limit", type=int, default=None, help="每个文件 / 任务只评前 N 条（调试用）")
    p.add_argument("--max_seq_len", type=int, default=None, help="打分窗口的 token 数（默认 512，--quick 时 64）")
    p.add_argument("--stride", type=int, default=None, help="bpb 滑动窗口每次推进的 token 数（默认 max_seq_len 的一半）")
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0, help="生成式采样的种子")
    p.add_argument("--output", type=Path, default=None, help="结果 JSON（默认 <save_dir>/eval/<权重名>.json）")
    args = p.parse_args(argv)
    if args.max_seq_len is None:
        args.max_seq_len = QUICK_OVERRIDES["max_seq_len"] if args.quick else 512
    if args.max_gen_len is None:
        args.max_gen_len = QUICK_RL["max_gen_len"] if args.quick else 256
    if args.stride is not None and not 1 <= args.stride < args.max_seq_len:
        p.error(f"--stride 要在 1 和 --max_seq_len - 1 之间，收到 {args.stride}")
    if min(args.max_seq_len, args.batch_size, args.max_gen_len) <= 1 or args.eval_samples < 0 or args.temperature <= 0:
        p.error("需要 --max_seq_len、--batch_size、--max_gen_len 大于 1，--eval_samples >= 0，--temperature > 0")
    if args.limit is not None and args.limit <= 0:
        p.error(f"--limit 必须是正整数，收到 {args.limit}")
    if args.bpb_data is None and args.mc_data is None and args.gen_data is None and args.lm_eval_tasks is None:
        args.bpb_data, args.mc_data = DEFAULT_BPB, DEFAULT_MC
    try:
        return resolve_model_args(args)
    except ModelLoadError as e:
        p.error(str(e))


def load_data(args):
    """先读完所有评测文件再加载模型：坏行立刻报出来。"""
    texts = {str(f): load_texts(f)[:args.limit] for f in args.bpb_data or []}
    mc = {str(f): load_mc_items(f)[:args.limit] for f in args.mc_data or []}
    if args.gen_data is not None and not args.gen_data.is_file():
        raise EvalDataError(f"找不到评测文件 {args.gen_data}（--gen_data）")
    return texts, mc


def evaluate(args, model, tokenizer, texts, mc):
    """跑所有指定的评测 → (结果字典, 表格行)。"""
    results, rows = {}, []
    for name, docs in texts.items():
        r = evaluate_text(model, tokenizer, docs, max_len=args.max_seq_len, stride=args.stride,
                          batch_size=args.batch_size, progress=True)
        results.setdefault("bpb", {})[name] = r
        rows += [("bpb", name, "bpb", r["bpb"], "", r["bytes"]), ("bpb", name, "ppl", r["ppl"], "", r["tokens"])]
    modes = MC_MODES if args.mc_mode == "all" else (args.mc_mode,)
    for name, items in mc.items():
        r = evaluate_mc(model, tokenizer, items, modes, batch_size=args.batch_size, max_len=args.max_seq_len,
                        progress=True)
        results.setdefault("mc", {})[name] = r
        rows += [("mc", name, f"acc_{m}", r[m]["acc"], f"{r[m]['acc_stderr']:.4f}", r[m]["n"]) for m in modes]
    if args.gen_data is not None:
        dataset = RLPromptDataset(args.gen_data, tokenizer, max_prompt_len=256, thinking=bool(args.thinking))
        r = evaluate_tasks(model, tokenizer, dataset, args.max_gen_len, num_samples=args.eval_samples,
                           temperature=args.temperature, seed=args.seed, batch_size=args.batch_size, limit=args.limit)
        results["generate"] = {str(args.gen_data): r}
        rows += [("generate", str(args.gen_data), k, v, "", r["eval_n"]) for k, v in r.items()
                 if isinstance(v, float) and (k == "eval_accuracy" or k.startswith(("eval_pass", "eval_maj")))]
    if args.lm_eval_tasks:
        try:
            from trainer.evaluation.lm_eval_adapter import run_lm_eval
        except ImportError as e:
            raise EvalDataError(f"没有装 lm-eval（{e}）：pip install -r requirements-eval.txt") from None
        include = str(args.lm_eval_include.resolve()) if args.lm_eval_include.is_dir() else None
        # 自带任务 YAML 里的数据路径相对仓库根目录；自己的任务目录按当前目录解析
        root = str(REPO_ROOT) if args.lm_eval_include.resolve() == LM_EVAL_TASK_DIR.resolve() else None
        r = run_lm_eval(model, tokenizer, args.lm_eval_tasks, include_path=include, limit=args.limit,
                        batch_size=args.batch_size, max_len=args.max_seq_len, data_root=root)
        results["lm_eval"] = r
        for task, metrics in r.items():
            for key, value in metrics.items():
                metric = key.split(",")[0]
                if isinstance(value, float) and not metric.endswith("_stderr"):
                    se = metrics.get(key.replace(metric, f"{metric}_stderr"))
                    rows.append(("lm_eval", task, metric, value, f"{se:.4f}" if isinstance(se, float) else "",
                                 ""))
    return results, rows


def main(argv=None):
    args = parse_args(argv)
    try:
        texts, mc = load_data(args)
        model, tokenizer = load_chat_model(args)
        results, rows = evaluate(args, model, tokenizer, texts, mc)
    except (EvalDataError, ModelLoadError, ValueError) as e:
        fail(str(e))
    output = args.output or args.save_dir / "eval" / f"{weights_path(args).stem}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    record = {"weights": str(weights_path(args)), "lora_weight": str(args.lora_weight) if args.lora_weight else None,
              "max_seq_len": args.max_seq_len, "results": results}
    output.write_text(json.dumps(record, ensure_ascii=False, indent=1), encoding="utf-8")
    print(format_table(["eval", "data", "metric", "value", "stderr", "n"], rows))
    print(f"完整结果（含逐题对错）：{output}")


if __name__ == "__main__":
    main()
