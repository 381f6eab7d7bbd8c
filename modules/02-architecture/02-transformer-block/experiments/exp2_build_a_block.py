"""实验 2：用自己写的 Block 拼出完整的 MiniMind，和 model/ 逐位对照（本模块的 capstone）。

三件事：
  1. 组装：嵌入 → L 个 Block → 最终 RMSNorm → 与嵌入共享权重的 lm_head。Block 等零件来自
     exercises/solutions/my_block.py（--impl solution，默认）或你的 exercises/my_block.py（--impl mine）。
     把 model/ 的 MiniMindForCausalLM（同配置、随机权重）的 state_dict 原样加载进来，比较 logits 的最大差。
  2. 形状追踪：一个 batch 走过第 0 个块，每个子模块的输出和注意力里每个改变形状的张量操作（view / transpose /
     matmul / softmax …）的形状，同时给出符号形式 (B, T, H)、(B, T, nh, hd)……
  3. 数参数：按公式手算每个部分（嵌入 / 注意力 / FFN / 归一化），对照 sum(p.numel())，
     配置是真实的 MiniMind2-26M（MiniMindConfig() 默认值）和实验用的小 LabConfig。
"""
import importlib.util
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[4]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.overrides import TorchFunctionMode  # noqa: E402

from model.model_minimind import MiniMindConfig, MiniMindForCausalLM  # noqa: E402
from modules.common.experiment_base import Experiment  # noqa: E402
from modules.common.lab_model import LabConfig  # noqa: E402
from modules.common.visualization import set_style  # noqa: E402

EXERCISES = Path(__file__).resolve().parents[1] / "exercises"
IMPLS = {"solution": EXERCISES / "solutions" / "my_block.py", "mine": EXERCISES / "my_block.py"}
LOGITS_ATOL = 1e-5
COMPONENTS = ("embedding", "attention", "ffn", "norms")
# 形状追踪记录的张量操作：只列改变形状的那几类
SHAPE_OPS = {"view", "reshape", "transpose", "repeat_interleave", "expand", "repeat", "matmul", "__matmul__",
             "softmax", "scaled_dot_product_attention", "chunk", "cat"}


# ---------------------------------------------------------------------------
# 1. 用练习里的零件拼出完整模型；参数名与 MiniMindForCausalLM 相同，state_dict 可直接加载
# ---------------------------------------------------------------------------
class StackedBackbone(nn.Module):
    """嵌入 → L 个 Block → 最终 RMSNorm（对应 model/ 的 MiniMindModel）。"""

    def __init__(self, impl, config: MiniMindConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList([impl.Block(i, config) for i in range(config.num_hidden_layers)])
        self.norm = impl.RMSNorm(config.hidden_size, config.rms_norm_eps)
        cos, sin = impl.precompute_rope(config.head_dim, config.max_position_embeddings, config.rope_theta)
        self.register_buffer("cos", cos, persistent=False)  # (max_len, hd)；不进 state_dict，同 model/
        self.register_buffer("sin", sin, persistent=False)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        T = input_ids.shape[1]
        x = self.embed_tokens(input_ids)  # (B, T, H)
        for layer in self.layers:
            x = layer(x, self.cos[:T], self.sin[:T])  # (B, T, H)
        return self.norm(x)


class StackedCausalLM(nn.Module):
    """StackedBackbone + 与嵌入共享权重的 lm_head（对应 model/ 的 MiniMindForCausalLM）。"""

    def __init__(self, impl, config: MiniMindConfig):
        super().__init__()
        self.model = StackedBackbone(impl, config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.model.embed_tokens.weight = self.lm_head.weight  # 权重共享：V×H 只存一份

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.model(input_ids))  # (B, T, V)


def load_impl(path: Path):
    spec = importlib.util.spec_from_file_location("my_block_impl", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def reference_model(config: MiniMindConfig, seed: int) -> MiniMindForCausalLM:
    """model/ 的模型，随机权重；归一化的 γ 也随机化（不再是全 1），漏乘 weight 的实现会被查出来。"""
    torch.manual_seed(seed)
    model = MiniMindForCausalLM(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.uniform_(0.5, 1.5)
    return model


@torch.no_grad()
def logits_max_diff(impl, config: MiniMindConfig, seq_len: int, seed: int) -> float:
    reference = reference_model(config, seed)
    mine = StackedCausalLM(impl, config).eval()
    mine.load_state_dict(reference.state_dict(), strict=True)
    input_ids = torch.randint(0, config.vocab_size, (2, seq_len))  # (B, T)
    return (mine(input_ids) - reference(input_ids).logits).abs().max().item()


# ---------------------------------------------------------------------------
# 2. 形状追踪
# ---------------------------------------------------------------------------
class ShapeRecorder(TorchFunctionMode):
    """记录前向里每个改变形状的 torch 操作（属于哪个子模块、操作名、输出形状）。"""

    def __init__(self, rows: list, where: list):
        super().__init__()
        self.rows, self.where = rows, where

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = getattr(func, "__name__", "")
        if name in SHAPE_OPS and self.where and isinstance(out, torch.Tensor):
            self.rows.append((self.where[-1], f"op: {name}", tuple(out.shape)))
        return out


def trace_block_shapes(model: StackedCausalLM, input_ids: torch.Tensor) -> list[tuple[str, str, tuple]]:
    """一次前向：嵌入、第 0 个块（子模块输出 + 形状操作）、最终 norm、lm_head 的输出形状，按发生顺序。"""
    rows, where, handles = [], [], []
    watched = {"model.embed_tokens": model.model.embed_tokens, "model.norm": model.model.norm,
               "lm_head": model.lm_head, "layers.0": model.model.layers[0]}
    watched.update({f"layers.0.{n}": m for n, m in model.model.layers[0].named_modules() if n})
    for name, module in watched.items():
        handles.append(module.register_forward_pre_hook(lambda m, a, name=name: where.append(name)))

        def on_output(m, args, out, name=name):
            where.pop()
            rows.append((name, "output", tuple(out.shape)))
        handles.append(module.register_forward_hook(on_output))
    rows.append(("input", "input_ids", tuple(input_ids.shape)))
    try:
        with torch.no_grad(), ShapeRecorder(rows, where):
            model(input_ids)
    finally:
        for h in handles:
            h.remove()
    return rows


def symbolic(shape: tuple, symbols: dict[int, str]) -> str:
    return "(" + ", ".join(symbols.get(d, str(d)) for d in shape) + ")"


# ---------------------------------------------------------------------------
# 3. 参数量：公式 vs 代码
# ---------------------------------------------------------------------------
def hand_count(config: MiniMindConfig) -> dict[str, int]:
    """按公式手算（lm_head 与嵌入共享，只算一次）。"""
    H, L, V, I = config.hidden_size, config.num_hidden_layers, config.vocab_size, config.intermediate_size
    q_dim, kv_dim = config.num_attention_heads * config.head_dim, config.num_key_value_heads * config.head_dim
    counts = {"embedding": V * H,
              "attention": L * (H * q_dim + 2 * H * kv_dim + q_dim * H),  # q, k, v, o
              "ffn": L * 3 * H * I,  # gate, up, down
              "norms": L * 2 * H + H}  # 每层 2 个 RMSNorm 的 γ + 最终 norm
    counts["total"] = sum(counts.values())
    return counts


def code_count(model: nn.Module) -> dict[str, int]:
    """按参数名归类 p.numel()；named_parameters() 对共享的权重只列一次。"""
    counts = dict.fromkeys(COMPONENTS, 0)
    for name, p in model.named_parameters():
        if "embed_tokens" in name or name.startswith("lm_head"):
            counts["embedding"] += p.numel()
        elif ".self_attn." in name:
            counts["attention"] += p.numel()
        elif ".mlp." in name:
            counts["ffn"] += p.numel()
        else:
            counts["norms"] += p.numel()
    counts["total"] = sum(p.numel() for p in model.parameters())
    return counts


def formulas(config: MiniMindConfig) -> dict[str, str]:
    H, L, V, I = config.hidden_size, config.num_hidden_layers, config.vocab_size, config.intermediate_size
    nh, nkv, hd = config.num_attention_heads, config.num_key_value_heads, config.head_dim
    return {"embedding": f"V·H = {V}·{H}",
            "attention": f"L·(2·H·nh·hd + 2·H·nkv·hd) = {L}·(2·{H}·{nh * hd} + 2·{H}·{nkv * hd})",
            "ffn": f"L·3·H·I = {L}·3·{H}·{I}",
            "norms": f"L·2·H + H = {L}·2·{H} + {H}",
            "total": "sum"}


def main():
    def extra_args(parser):
        parser.add_argument("--impl", choices=sorted(IMPLS), default="solution",
                            help="用哪个 my_block.py：solution = 参考答案（默认），mine = 你的 exercises/my_block.py")

    exp = Experiment(__file__, description=(
        "Transformer 块实验 2：用 exercises/ 里的 Block 拼出完整 MiniMind，与 model/ 比较 logits，"
        "追踪一个块里的张量形状，并手算 / 代码数参数量（MiniMind2-26M 与小 LabConfig）。"), extra_args=extra_args)
    impl_path = IMPLS[exp.args.impl]
    configs = {"lab": LabConfig().to_minimind_config(), "minimind2-26m": MiniMindConfig()}

    try:
        impl = load_impl(impl_path)
        diffs = {name: logits_max_diff(impl, config, seq_len=32, seed=exp.seed) for name, config in configs.items()}
        mine_models = {name: StackedCausalLM(impl, config) for name, config in configs.items()}
    except NotImplementedError as e:
        print(f"\n{impl_path} 还没写完：{e}\n先运行 python {EXERCISES / 'check.py'}，全部 PASS 后再用 --impl mine。",
              file=sys.stderr)
        sys.exit(1)
    except Exception as e:
        print(f"\n{impl_path} 出错：{type(e).__name__}: {e}\n用 python {EXERCISES / 'check.py'} 逐部分定位问题。",
              file=sys.stderr)
        sys.exit(1)

    # ---- 1. logits 对照 ----
    exp.print_table(["config", "hidden", "layers", "heads / kv heads", "vocab", "max |logits diff|"],
                    [[name, c.hidden_size, c.num_hidden_layers, f"{c.num_attention_heads} / {c.num_key_value_heads}",
                      c.vocab_size, f"{diffs[name]:.3g}"] for name, c in configs.items()],
                    title=f"Assembled model ({exp.args.impl}) vs model/MiniMindForCausalLM, same weights")

    # ---- 2. 形状追踪（26M 配置，B=3、T=12：每个符号的取值互不相同，才能反推出符号）----
    config = configs["minimind2-26m"]
    B, T = 3, 12
    symbols = {B: "B", T: "T", config.hidden_size: "H", config.num_attention_heads: "nh",
               config.num_key_value_heads: "nkv", config.head_dim: "hd", config.intermediate_size: "I",
               config.vocab_size: "V", config.num_key_value_heads * config.head_dim: "nkv·hd"}
    torch.manual_seed(exp.seed)
    trace = trace_block_shapes(mine_models["minimind2-26m"], torch.randint(0, config.vocab_size, (B, T)))
    exp.print_table(["step", "where", "tensor", "shape", "symbolic"],
                    [[i, where, what, str(shape), symbolic(shape, symbols)] for i, (where, what, shape) in enumerate(trace)],
                    title=f"Shapes through block 0 of MiniMind2-26M (B={B}, T={T})")

    # ---- 3. 参数量 ----
    counts = {}
    for name, config in configs.items():
        hand = hand_count(config)
        reference = code_count(MiniMindForCausalLM(config))
        mine = code_count(mine_models[name])
        counts[name] = {"hand": hand, "model_code": reference, "mine_code": mine}
        exp.print_table(["component", "formula", "hand count", "model/ code", f"{exp.args.impl} code", "match"],
                        [[part, formulas(config)[part], hand[part], reference[part], mine[part],
                          hand[part] == reference[part] == mine[part]] for part in (*COMPONENTS, "total")],
                        title=f"Parameter count, {name} config")
    total_26m = counts["minimind2-26m"]["hand"]["total"]
    print(f"\nMiniMind2-26M 共 {total_26m:,} 个参数（{total_26m / 1e6:.2f}M）；"
          f"若不共享 lm_head 会多 {configs['minimind2-26m'].vocab_size * configs['minimind2-26m'].hidden_size:,} 个。")

    exp.save_metrics({"impl": exp.args.impl, "impl_path": str(impl_path),
                      "configs": {name: c.to_dict() for name, c in configs.items()},
                      "logits_max_diff": diffs, "logits_atol": LOGITS_ATOL,
                      "shape_trace": [{"where": w, "tensor": t, "shape": s, "symbolic": symbolic(s, symbols)}
                                      for w, t, s in trace],
                      "param_counts": counts})

    # ---- 图：参数构成 ----
    set_style()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for ax, (name, c) in zip(axes, counts.items()):
        values = [c["hand"][part] for part in COMPONENTS]
        bars = ax.bar(COMPONENTS, values, color=["C0", "C1", "C2", "C3"])
        total = c["hand"]["total"]
        ax.bar_label(bars, labels=[f"{v / 1e6:.3f}M\n({100 * v / total:.3g}%)" for v in values], fontsize=8)
        ax.set(ylabel="parameters", title=f"{name}: {total / 1e6:.2f}M parameters (tied lm_head)")
        ax.set_ylim(top=max(values) * 1.25)
    exp.save_figure(fig, "exp2_param_breakdown.png")

    # ---- 结论 ----
    for name in configs:
        exp.conclude(f"{name} 配置：拼出来的模型与 model/ 的 logits 一致（最大差 < {LOGITS_ATOL:g}）",
                     diffs[name] < LOGITS_ATOL, f"max |diff| = {diffs[name]:.3g}")
        c = counts[name]
        exp.conclude(f"{name} 配置：手算参数量 == model/ 代码数出的 == 拼出来的模型数出的（逐部分）",
                     all(c["hand"][k] == c["model_code"][k] == c["mine_code"][k] for k in (*COMPONENTS, "total")),
                     f"手算 {c['hand']['total']:,}，model/ {c['model_code']['total']:,}，"
                     f"{exp.args.impl} {c['mine_code']['total']:,}")
    c = counts["minimind2-26m"]["hand"]
    exp.conclude("MiniMind2-26M 的参数大头在 FFN（超过一半），其次依次是注意力、嵌入、归一化",
                 c["ffn"] > c["total"] / 2 and c["ffn"] > c["attention"] > c["embedding"] > c["norms"],
                 ", ".join(f"{k} {100 * c[k] / c['total']:.1f}%" for k in COMPONENTS))
    exp.finish()


if __name__ == "__main__":
    main()
