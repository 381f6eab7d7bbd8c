"""复制训练（replicates）：一个种子的值 = 同一个种子下 R 次训练的平均。

什么时候用：先在一个固定的基座（同一个主种子）上只换训练的随机性（批次顺序、初始化、采样），
量出单次训练之间的标准差；它和种子之间的差一样大时，单次训练的噪声会盖住效应，
这时每个种子平均 R 次训练再交给噪声检验（noise.compare 仍按主种子配对，n 不变）。
R 按 CPU 预算在看任何判定之前定下，不能看了结果再加。

第 r 次复制用种子 seed + REPLICATE_SEED_STRIDE·r（r = 0 就是种子本身，所以 R = 1 时结果与不复制完全相同）；
步长 1000 让它们与任何主种子（42–44、1–3 等）都不重合。
"""

REPLICATE_SEED_STRIDE = 1000


def replicate_seed(seed: int, r: int) -> int:
    """主种子 seed 的第 r 次复制用的种子。"""
    return seed + REPLICATE_SEED_STRIDE * r


def add_replicates_argument(parser, quick_default: int, full_default: int, what: str) -> None:
    """给实验加 --replicates；what 说明每次复制换了什么（写进 --help）。"""
    parser.add_argument("--replicates", type=int, default=None,
                        help=f"每个种子平均几次训练（{what}；默认 quick {quick_default} / 完整 {full_default}）")


def resolve_replicates(value, quick: bool, quick_default: int, full_default: int) -> int:
    """--replicates 的实际值：没给就按模式取默认；小于 1 时一行说明后退出。"""
    replicates = (quick_default if quick else full_default) if value is None else value
    if replicates < 1:
        raise SystemExit(f"--replicates 必须 >= 1（收到 {replicates}）")
    return replicates
