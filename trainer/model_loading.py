"""推理用的"选模型、加载模型"：trainer/eval_llm.py 与 scripts/（API 服务、网页对话、基准）共用同一套参数和加载逻辑。

    parser = argparse.ArgumentParser()
    add_model_args(parser)                      # --quick --weights --weight --save_dir --tokenizer --family ... --lora_weight
    args = parser.parse_args()
    resolve_model_args(args)                    # --quick 只填用户没有在命令行上给出的尺寸
    model, tokenizer = load_chat_model(args)    # 出错时抛 ModelLoadError（一句话说明原因和对策）

能加载：本仓库训练出的 .pth（旁边有同名 .json 配置）、MiniMind 官方发布的 .pth（两代都行，配置按 --family 等参数）、
scripts/convert_model.py 转出的 transformers 文件夹（--weights 指向该文件夹），以及叠加在它们之上的 LoRA 适配器。
"""
import argparse
import json
from pathlib import Path
from typing import Optional, Tuple

from model.checkpoint import CheckpointError, load_pretrained, load_state_dict_file
from model.model_lora import apply_lora, load_lora, merge_lora
from model.model_minimind import FAMILY_DEFAULTS, MiniMindConfig, MiniMindForCausalLM
from model.quantization import QUANTIZE_SCHEMES, quantize_model, weight_bytes
from model.tokenization import MiniMindTokenizer, TokenizerError, load_tokenizer
from model.device import get_device
from trainer.trainer_utils import QUICK_OVERRIDES, REPO_ROOT


class ModelLoadError(ValueError):
    """模型或适配器无法加载；消息说明原因和该怎么做。"""


def add_model_args(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """选择模型的参数。尺寸参数默认 None：解析后由 resolve_model_args 按 --quick / --family 补上。"""
    p.add_argument("--quick", action="store_true", help="加载 --quick 训练出的小模型（hidden_size=128，2 层）")
    p.add_argument("--weights", type=Path, default=None,
                   help="权重 .pth 路径，或 scripts/convert_model.py 转出的 transformers 文件夹（优先于 --weight）")
    p.add_argument("--weight", default="full_sft", help="<save_dir> 里的权重名前缀：pretrain / full_sft / dpo …")
    p.add_argument("--save_dir", type=Path, default=REPO_ROOT / "out")
    p.add_argument("--tokenizer", type=Path, default=None,
                   help="分词器目录（默认 model/tokenizer/；transformers 文件夹默认用文件夹里的）")
    p.add_argument("--family", choices=["minimind2", "minimind3"], default="minimind2",
                   help="没有 .json 配置时（如官方 .pth）按哪一代建模型")
    p.add_argument("--hidden_size", type=int, default=None, help="默认：--quick 时 128，否则按 --family（512 / 768）")
    p.add_argument("--num_hidden_layers", type=int, default=None, help="默认：--quick 时 2，否则 8")
    p.add_argument("--use_moe", type=int, choices=[0, 1], default=0)
    p.add_argument("--lora_weight", type=Path, default=None,
                   help="叠加的 LoRA 适配器 .pth（train_lora.py 的输出）；秩、alpha、目标层从旁边的 .json 读取")
    p.add_argument("--merge_lora", action="store_true", help="把 LoRA 增量合并进基座权重（推理零额外开销）")
    p.add_argument("--device", default="auto", help="auto / cpu / cuda / mps")
    p.add_argument("--quantize", choices=["none", *QUANTIZE_SCHEMES], default="none",
                   help="加载后只量化权重：int8 每个输出通道一个 scale，int4 每 32 个输入一个 scale；"
                        "词嵌入和与之共享权重的 lm_head 保持浮点（见 model/quantization.py）")
    return p


def add_draft_args(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """投机解码的草稿模型参数（eval_llm.py 与 API 服务共用）；加载见 load_draft_model，检查在 resolve_model_args。"""
    p.add_argument("--draft_weights", type=Path, default=None,
                   help="投机解码的草稿模型（更小的 MiniMind，同一个分词器）：它先猜、目标模型一次前向验证，贪心结果不变")
    p.add_argument("--draft_hidden_size", type=int, default=None,
                   help="草稿权重旁边没有 .json 时（官方 .pth）的 hidden_size，默认按 --family")
    p.add_argument("--draft_num_hidden_layers", type=int, default=None, help="同上，草稿的层数，默认 8")
    p.add_argument("--num_draft_tokens", type=int, default=4, help="投机解码每轮草稿提出的 token 数 γ")
    return p


def resolve_model_args(args: argparse.Namespace) -> argparse.Namespace:
    """补上没有在命令行上给出的尺寸：--quick 用训练脚本 --quick 的尺寸，否则用 --family 的默认值。"""
    if args.hidden_size is None:
        args.hidden_size = QUICK_OVERRIDES["hidden_size"] if args.quick else FAMILY_DEFAULTS[args.family]["hidden_size"]
    if args.num_hidden_layers is None:
        args.num_hidden_layers = QUICK_OVERRIDES["num_hidden_layers"] if args.quick else 8
    for name in ("hidden_size", "num_hidden_layers"):
        if getattr(args, name) <= 0:
            raise ModelLoadError(f"--{name} 必须是正整数，收到 {getattr(args, name)}")
    if getattr(args, "num_draft_tokens", 1) <= 0:
        raise ModelLoadError(f"--num_draft_tokens 必须是正整数，收到 {args.num_draft_tokens}")
    if args.quantize != "none" and args.lora_weight is not None:  # 挂了 LoRA 的层（合并后也是）不是 nn.Linear，量化不到
        raise ModelLoadError("--quantize 不能和 --lora_weight 一起用：请先用 scripts/convert_model.py --lora_weight … "
                             "--out_dir DIR 把适配器合并成完整模型，再 --weights DIR --quantize")
    return args


def weights_path(args: argparse.Namespace) -> Path:
    """--weights，或 MiniMind 的命名 <save_dir>/<weight>_<hidden>[_moe].pth。"""
    return args.weights or args.save_dir / f"{args.weight}_{args.hidden_size}{'_moe' if args.use_moe else ''}.pth"


def is_hf_folder(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file()


def load_base_model(args: argparse.Namespace, tokenizer: MiniMindTokenizer) -> MiniMindForCausalLM:
    """按参数加载基座（不含 LoRA），放在 CPU 上。"""
    path = weights_path(args)
    if is_hf_folder(path):
        from model.hf_format import HFFormatError, load_hf_folder  # 只有加载 transformers 文件夹时才需要 safetensors
        try:
            model = load_hf_folder(path)
        except HFFormatError as e:
            raise ModelLoadError(str(e)) from None
    else:
        config_file = path.with_suffix(".json")
        if config_file.is_file():
            with open(config_file, encoding="utf-8") as f:
                saved = json.load(f)
            if "lora_rank" in saved:
                raise ModelLoadError(f"{path} 是 LoRA 适配器而不是完整模型：请用 --lora_weight {path}，"
                                     "--weights/--weight 指向它的基座（如 full_sft）")
            config = MiniMindConfig.from_dict(saved)
        else:
            config = MiniMindConfig(family=args.family, hidden_size=args.hidden_size,
                                    num_hidden_layers=args.num_hidden_layers, use_moe=bool(args.use_moe),
                                    vocab_size=tokenizer.vocab_size)
        try:
            model = load_pretrained(path, config)
        except CheckpointError as e:
            raise ModelLoadError(str(e)) from None
    if model.config.vocab_size != tokenizer.vocab_size:
        raise ModelLoadError(f"权重 {path} 的词表大小是 {model.config.vocab_size}，分词器 {tokenizer.source} 是 "
                             f"{tokenizer.vocab_size}：请用训练这份权重时的分词器（--tokenizer）")
    return model


def load_draft_model(args: argparse.Namespace, target: MiniMindForCausalLM,
                     tokenizer: MiniMindTokenizer) -> MiniMindForCausalLM:
    """投机解码的草稿模型（args.draft_weights）：一个更小的 MiniMind，必须与目标模型用同一个分词器。

    加载方式与目标相同（load_base_model）：.pth 旁边有 .json 就按它建模型；官方 .pth 没有 .json 时按 --family
    和 args.draft_hidden_size / args.draft_num_hidden_layers（None 时取该家族的默认 512·8 / 768·8）；也可以是
    transformers 文件夹。词表与分词器不一致时报 ModelLoadError。放到目标模型所在的设备上，eval 模式。
    """
    draft_args = argparse.Namespace(**{
        **vars(args), "weights": Path(args.draft_weights), "use_moe": 0,
        "hidden_size": args.draft_hidden_size or FAMILY_DEFAULTS[args.family]["hidden_size"],
        "num_hidden_layers": args.draft_num_hidden_layers or 8})
    draft = load_base_model(draft_args, tokenizer)  # 检查了词表 = 分词器的词表，目标也检查过，所以两者一致
    return draft.to(next(target.parameters()).device).eval()


def lora_config_path(adapter: Path) -> Path:
    """train_lora.py 在适配器旁边写的同名 .json（秩、alpha、目标层）。"""
    return Path(adapter).with_suffix(".json")


def attach_lora(model: MiniMindForCausalLM, adapter: Path, merge: bool = False) -> dict:
    """按适配器旁边的 .json 挂上 LoRA 并加载权重；merge=True 时合并进基座。返回读到的 LoRA 设置。

    没有 .json 的旧适配器：秩和目标层从权重的形状和键名推出，alpha 取 MiniMind 的默认值（= 秩）。
    """
    adapter = Path(adapter)
    try:
        weights = load_state_dict_file(adapter)
    except CheckpointError as e:
        raise ModelLoadError(str(e)) from None
    if not weights or not all("lora_" in k for k in weights):
        raise ModelLoadError(f"{adapter} 不是 LoRA 适配器（应只含 lora_A / lora_B，由 trainer/train_lora.py 保存）")
    side = lora_config_path(adapter)
    if side.is_file():
        with open(side, encoding="utf-8") as f:
            settings = json.load(f)
    else:
        first_a = next(v for k, v in weights.items() if k.endswith("lora_A"))  # (r, in)
        settings = {"lora_rank": first_a.shape[0], "lora_alpha": float(first_a.shape[0]), "lora_targets": None}
    # 目标层以适配器里实际的键为准（默认规则"所有方阵 Linear"展开后就是这些名字）
    targets = sorted({k.split(".")[-2] for k in weights})
    try:
        apply_lora(model, rank=int(settings["lora_rank"]), alpha=float(settings["lora_alpha"]), target_modules=targets)
        load_lora(model, adapter)
    except (ValueError, KeyError) as e:
        raise ModelLoadError(f"LoRA 适配器 {adapter} 与基座不匹配：{e}") from None
    for p in model.parameters():
        p.requires_grad = False
    if merge:
        merge_lora(model)
    return {**settings, "lora_targets": targets}


def load_chat_model(args: argparse.Namespace) -> Tuple[MiniMindForCausalLM, MiniMindTokenizer]:
    """分词器 + 模型（+ LoRA），移到 --device，eval 模式。"""
    path = weights_path(args)
    tokenizer_path: Optional[Path] = args.tokenizer
    if tokenizer_path is None and is_hf_folder(path) and (path / "tokenizer.json").is_file():
        tokenizer_path = path
    try:
        tokenizer = load_tokenizer(tokenizer_path)
        device = get_device(args.device)
    except (TokenizerError, ValueError) as e:
        raise ModelLoadError(str(e)) from None
    model = load_base_model(args, tokenizer)
    if args.lora_weight is not None:
        attach_lora(model, args.lora_weight, merge=args.merge_lora)
    if args.quantize != "none":
        quantize_loaded_model(model, args)
    return model.to(device).eval(), tokenizer


def quantize_loaded_model(model: MiniMindForCausalLM, args: argparse.Namespace) -> None:
    """--quantize：在 CPU 上把加载好的浮点权重量化，打印一行权重字节数的变化。"""
    before = weight_bytes(model)
    try:
        quantize_model(model, **QUANTIZE_SCHEMES[args.quantize])
    except ValueError as e:
        raise ModelLoadError(f"--quantize {args.quantize} 用不了：{e}") from None
    print(f"--quantize {args.quantize}：权重 {before / 2**20:.1f} MiB → {weight_bytes(model) / 2**20:.1f} MiB")
