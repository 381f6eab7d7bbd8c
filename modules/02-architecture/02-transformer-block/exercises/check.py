"""检查 my_block.py：每个部分分别和 model/model_minimind.py 的对应实现比较，打印 PASS / FAIL / TODO。

    python exercises/check.py              # 检查 exercises/my_block.py（任意工作目录均可）
    python exercises/check.py --solution   # 检查参考答案 exercises/solutions/my_block.py
    python exercises/check.py --file PATH  # 检查任意文件

每个部分：用同一个小 MiniMindConfig 建你的实现和 model/ 的实现，把 model/ 的（随机）权重 load_state_dict 进你的，
喂同样的随机输入，检查输出形状、数值一致（atol 1e-5）；注意力和块还检查因果性（改未来的 token 不影响前面的输出）
和 GQA（n_kv_heads < n_heads）。各部分互不依赖：检查 GQAttention 时 apply_rope 换成参考实现，
检查 Block 时 RMSNorm / GQAttention / SwiGLU 换成参考实现。
结果：PASS；TODO（还在 raise NotImplementedError）；FAIL（数值不对或抛了别的异常，附一行原因和提示）。
全部 PASS 退出码 0，否则 1。
"""
import argparse
import importlib.util
import sys
from pathlib import Path

EXERCISES_DIR = Path(__file__).resolve().parent
REPO_ROOT = EXERCISES_DIR.parents[3]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402

from model.model_minimind import (  # noqa: E402
    Attention,
    FeedForward,
    MiniMindBlock,
    MiniMindConfig,
    RMSNorm,
    apply_rotary_pos_emb,
    precompute_freqs_cis,
)

ATOL = 1e-5
B, T = 2, 10


class CheckFailed(Exception):
    """某项检查没通过；消息里带原因和提示。"""


def small_config() -> MiniMindConfig:
    # 4 个 query 头、2 个 KV 头：GQA；hd = 16
    return MiniMindConfig(hidden_size=64, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                          vocab_size=128, max_position_embeddings=64, flash_attn=False)


def load_module(path: Path, name: str):
    """按文件路径导入（每次都是全新的模块对象，打补丁不会影响别的部分）。"""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def randomize_(module: torch.nn.Module) -> None:
    """把参考实现的权重换成随机值（norm 的 γ 不再是全 1），这样漏乘 weight 之类的错误也能查出来。"""
    with torch.no_grad():
        for p in module.parameters():
            if p.dim() == 1:
                p.uniform_(0.5, 1.5)
            else:
                p.normal_(0.0, 0.1)


def copy_weights(reference: torch.nn.Module, mine: torch.nn.Module) -> None:
    try:
        mine.load_state_dict(reference.state_dict(), strict=True)
    except RuntimeError as e:
        detail = " ".join(str(e).split())[:240]
        raise CheckFailed(f"权重加载不进来（参数名或形状与 model/ 不同）：{detail}") from None


def expect_close(name: str, mine: torch.Tensor, expected: torch.Tensor, hint: str) -> None:
    if not isinstance(mine, torch.Tensor):
        raise CheckFailed(f"{name} 应返回张量，实际是 {type(mine).__name__}")
    if mine.shape != expected.shape:
        raise CheckFailed(f"{name} 形状 {tuple(mine.shape)}，应为 {tuple(expected.shape)}")
    diff = (mine.float() - expected.float()).abs().max().item()
    if not diff <= ATOL:  # NaN 也算不通过
        raise CheckFailed(f"{name} 与 model/ 的最大差 {diff:.3g} > {ATOL:g}。提示：{hint}")


def expect_causal(forward, x: torch.Tensor) -> None:
    """改最后一个位置的输入，前 T-1 个位置的输出必须不变。"""
    changed = x.clone()
    changed[:, -1] = torch.randn_like(changed[:, -1]) * 3
    diff = (forward(changed)[:, :-1] - forward(x)[:, :-1]).abs().max().item()
    if diff > ATOL:
        raise CheckFailed(f"不满足因果性：改了最后一个 token，前面位置的输出变了 {diff:.3g}。"
                          "提示：把 j > i 的分数设成 -inf（因果 mask）再 softmax")


# ---------------------------------------------------------------------------
# 各部分的检查
# ---------------------------------------------------------------------------
def check_rmsnorm(module, config):
    reference = RMSNorm(config.hidden_size, config.rms_norm_eps)
    randomize_(reference)
    mine = module.RMSNorm(config.hidden_size, config.rms_norm_eps)
    copy_weights(reference, mine)
    x = torch.randn(B, T, config.hidden_size) + 0.5
    expect_close("RMSNorm(x)", mine(x), reference(x),
                 "是在最后一维（dim=-1, keepdim=True）上求 mean(x²) 吗？乘了 self.weight 吗？")
    tiny = x * 1e-3  # mean(x²) ≈ 1e-6，比 eps 小：eps 放错位置或取值不对在这里会显形
    expect_close("RMSNorm(1e-3·x)", mine(tiny), reference(tiny),
                 "eps 要加在开方里面：rsqrt(mean(x²) + eps)，默认 1e-5")
    default = module.RMSNorm(config.hidden_size)
    expect_close("RMSNorm(dim) 默认 eps", default(tiny), RMSNorm(config.hidden_size)(tiny),
                 "构造函数的 eps 默认值应为 1e-5（与 model/ 相同）")


def check_precompute_rope(module, config):
    hd, max_len = config.head_dim, 32
    for theta in (1e6, 1e4):
        cos, sin = module.precompute_rope(hd, max_len, theta)
        ref_cos, ref_sin = precompute_freqs_cis(hd, max_len, theta)
        hint = "θ_i = theta^(-2i/hd)（i 从 0 到 hd/2-1），角度 = 位置 m × θ_i，再 cat([angles, angles], -1)"
        expect_close(f"cos (theta={theta:g})", cos, ref_cos, hint)
        expect_close(f"sin (theta={theta:g})", sin, ref_sin, hint)


def check_apply_rope(module, config):
    hd = config.head_dim
    q = torch.randn(B, T, config.num_attention_heads, hd)
    k = torch.randn(B, T, config.num_key_value_heads, hd)
    cos, sin = precompute_freqs_cis(hd, T, config.rope_theta)
    out = module.apply_rope(q, k, cos, sin)
    if not isinstance(out, tuple) or len(out) != 2:
        raise CheckFailed(f"apply_rope 应返回 (q, k) 两个张量，实际返回 {type(out).__name__}")
    ref_q, ref_k = apply_rotary_pos_emb(q, k, cos, sin)
    hint = "rotate_half([x1, x2]) = [-x2, x1]（前半/后半配对，不是奇偶交错）；cos/sin 变成 (T, 1, hd) 再广播"
    expect_close("旋转后的 q", out[0], ref_q, hint)
    expect_close("旋转后的 k", out[1], ref_k, hint)


class ReferenceAttention(Attention):
    """model/ 的 Attention，包成练习里的接口 forward(x, cos, sin) → (B, T, H)。"""

    def forward(self, x, cos, sin):
        return super().forward(x, (cos, sin))[0]


def check_attention(module, config):
    module.apply_rope = apply_rotary_pos_emb  # 只检查注意力本身
    reference = Attention(config)
    randomize_(reference)
    mine = module.GQAttention(config)
    copy_weights(reference, mine)
    expected_kv = (config.num_key_value_heads * config.head_dim, config.hidden_size)
    if tuple(mine.k_proj.weight.shape) != expected_kv:
        raise CheckFailed(f"k_proj.weight 形状应为 {expected_kv}（nkv·hd × H），GQA 的 K/V 头更少")
    x = torch.randn(B, T, config.hidden_size)
    cos, sin = precompute_freqs_cis(config.head_dim, T, config.rope_theta)
    with torch.no_grad():
        expect_causal(lambda inp: mine(inp, cos, sin), x)  # 先查因果性：漏了 mask 时给出最对症的提示
        expect_close("GQAttention(x)", mine(x, cos, sin), reference(x, (cos, sin))[0],
                     "缩放是 1/√hd 吗？先 RoPE 再复制 KV 头；KV 头要 repeat_interleave（不是 repeat）；最后过 o_proj")


def check_swiglu(module, config):
    reference = FeedForward(config)
    randomize_(reference)
    mine = module.SwiGLU(config)
    copy_weights(reference, mine)
    x = torch.randn(B, T, config.hidden_size)
    with torch.no_grad():
        expect_close("SwiGLU(x)", mine(x), reference(x), "down(silu(gate(x)) * up(x))：silu 作用在 gate 上，不是 up")


def check_block(module, config):
    module.RMSNorm = RMSNorm  # 只检查块的组装方式
    module.GQAttention = ReferenceAttention
    module.SwiGLU = FeedForward
    reference = MiniMindBlock(0, config)
    randomize_(reference)
    mine = module.Block(0, config)
    copy_weights(reference, mine)
    x = torch.randn(B, T, config.hidden_size)
    cos, sin = precompute_freqs_cis(config.head_dim, T, config.rope_theta)
    with torch.no_grad():
        expect_causal(lambda inp: mine(inp, cos, sin), x)
        expect_close("Block(x)", mine(x, cos, sin), reference(x, (cos, sin))[0],
                     "Pre-Norm：x = x + self_attn(input_layernorm(x))；x = x + mlp(post_attention_layernorm(x))；"
                     "加回主干的是未归一化的 x")


PARTS = [("RMSNorm", check_rmsnorm), ("precompute_rope", check_precompute_rope), ("apply_rope", check_apply_rope),
         ("GQAttention", check_attention), ("SwiGLU", check_swiglu), ("Block", check_block)]


def run_part(path: Path, name: str, check) -> tuple[str, str]:
    """返回 (状态, 说明)。"""
    torch.manual_seed(0)
    module = load_module(path, f"my_block_{name}")
    try:
        check(module, small_config())
    except NotImplementedError as e:
        return "TODO", str(e) or "还没实现"
    except CheckFailed as e:
        return "FAIL", str(e)
    except Exception as e:  # 学习者代码里的任何错误：只报一行，不打印 traceback
        message = str(e).strip().splitlines()[0] if str(e).strip() else ""
        return "FAIL", f"{type(e).__name__}: {message}"[:300]
    return "PASS", "与 model/ 一致"


def main() -> int:
    parser = argparse.ArgumentParser(description="逐部分检查 my_block.py 是否与 model/model_minimind.py 一致。")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--solution", action="store_true", help="检查参考答案 exercises/solutions/my_block.py")
    group.add_argument("--file", type=Path, help="检查指定的文件")
    args = parser.parse_args()
    if args.file is not None:
        path = args.file.expanduser().resolve()
    elif args.solution:
        path = EXERCISES_DIR / "solutions" / "my_block.py"
    else:
        path = EXERCISES_DIR / "my_block.py"

    if not path.is_file():
        print(f"找不到要检查的文件：{path}\n请确认路径，或用 --file 指定你的 my_block.py。", file=sys.stderr)
        return 1
    try:
        load_module(path, "my_block_import_check")
    except Exception as e:
        print(f"无法导入 {path}：{type(e).__name__}: {e}\n请先修好这个错误（语法错误、缩进、拼写）再检查。",
              file=sys.stderr)
        return 1

    print(f"检查文件：{path}\n")
    results = [(name, *run_part(path, name, check)) for name, check in PARTS]
    width = max(len(name) for name, _, _ in results)
    print(f"{'part'.ljust(width)}  result  detail")
    print(f"{'-' * width}  ------  ------")
    for name, status, detail in results:
        print(f"{name.ljust(width)}  {status.ljust(6)}  {detail}")
    passed = sum(status == "PASS" for _, status, _ in results)
    print(f"\n{passed}/{len(results)} 个部分通过。", end="")
    if passed == len(results):
        print("全部一致！下一步：python experiments/exp2_build_a_block.py --impl mine（在模块目录下运行）")
        return 0
    print("先完成 TODO，再按 FAIL 的提示修改。")
    return 1


if __name__ == "__main__":
    sys.exit(main())
