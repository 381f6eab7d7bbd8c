"""MiniMind 权重 ↔ Hugging Face transformers 文件夹：转出去以后 transformers、vLLM、SGLang、llama.cpp、ollama 都能加载。

    python scripts/convert_model.py --quick --out_dir out/minimind-hf                 # out/full_sft_128.pth → 文件夹
    python scripts/convert_model.py --weights MiniMind2.pth --tokenizer path/to/tokenizer --out_dir out/MiniMind2-hf
    python scripts/convert_model.py --from_hf out/MiniMind2-hf --out_pth out/from_hf_512.pth   # 反过来：.pth + 同名 .json

选模型的参数与 trainer/eval_llm.py 相同（可带 --lora_weight，会先合并进权重）。
MiniMind2 稠密 → LlamaForCausalLM，minimind-3 稠密 → Qwen3ForCausalLM，minimind-3 MoE → Qwen3MoeForCausalLM；
不能精确对应的变体（MiniMind2 MoE、MiniMind2 YaRN）给出一句原因后退出。逻辑在 model/hf_format.py。
"""
import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.checkpoint import save_checkpoint  # noqa: E402
from model.hf_format import HFFormatError, load_hf_folder, save_hf_folder  # noqa: E402
from model.model_minimind import MiniMindForCausalLM  # noqa: E402
from trainer.model_loading import ModelLoadError, add_model_args, load_chat_model, resolve_model_args  # noqa: E402
from trainer.trainer_utils import fail  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="MiniMind ↔ transformers 格式转换", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_model_args(p)
    p.add_argument("--out_dir", type=Path, default=None, help="MiniMind → transformers：输出文件夹（不能已存在）")
    p.add_argument("--from_hf", type=Path, default=None, help="transformers → MiniMind：输入的 transformers 文件夹")
    p.add_argument("--out_pth", type=Path, default=None, help="与 --from_hf 一起用：输出的 .pth（同名 .json 是配置）")
    args = p.parse_args(argv)
    if (args.out_dir is None) == (args.from_hf is None):
        p.error("请二选一：--out_dir DIR（MiniMind → transformers）或 --from_hf DIR --out_pth FILE（反过来）")
    if args.from_hf is not None and args.out_pth is None:
        p.error("--from_hf 需要 --out_pth（输出的 .pth 路径）")
    if args.quantize != "none":  # 量化后的层是 qweight/scale，transformers 的 Llama 结构认不出来
        p.error("--quantize 只用于推理，转换请用浮点权重（去掉 --quantize）")
    try:
        resolve_model_args(args)
    except ModelLoadError as e:
        p.error(str(e))
    args.device, args.merge_lora = "cpu", True
    return args


def main(argv=None):
    args = parse_args(argv)
    try:
        if args.out_dir is not None:
            model, tokenizer = load_chat_model(args)
            if args.lora_weight is not None:  # LoRA 已合并进 weight：换回普通 Linear，只留基座的参数名
                plain = MiniMindForCausalLM(model.config)
                plain.load_state_dict({k: v for k, v in model.state_dict().items() if "lora_" not in k})
                model = plain
            out = save_hf_folder(model, tokenizer, args.out_dir)
            arch = json.loads((out / "config.json").read_text(encoding="utf-8"))["architectures"][0]
            print(f"已写出 {out}（{model.config.family}{' MoE' if model.config.use_moe else ''} → {arch}）")
        else:
            if not (args.from_hf / "config.json").is_file():
                fail(f"{args.from_hf} 里没有 config.json：--from_hf 需要一个 transformers 模型文件夹")
            model = load_hf_folder(args.from_hf)
            save_checkpoint(model, args.out_pth)
            model.config.save(args.out_pth.with_suffix(".json"))
            print(f"已写出 {args.out_pth} 和 {args.out_pth.with_suffix('.json')}")
    except (HFFormatError, ModelLoadError) as e:
        fail(str(e))
    except ImportError as e:
        fail(f"缺少转换的依赖（{e.name}）：pip install -r requirements-serve.txt")


if __name__ == "__main__":
    main()
