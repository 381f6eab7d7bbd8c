"""共享的噪声检验：一个比较结论只有在效应超出噪声时才算"成立"。

实验里的"A 比 B 好"通常只有几个种子（完整模式 3 个，quick 模式 1 个）。单看均值谁小，
噪声里的随机差异也会被当成结论——这正是本课程要避免的。这里给出三种判定：

    HOLDS            效应方向与声明一致，且超出噪声
    NOT_ESTABLISHED  差异在噪声以内：既不能说成立，也不能说相反
    FAILS            效应超出噪声，但方向与声明相反（不成立）

用法（配对：第 i 个 a 与第 i 个 b 来自同一个种子 / 同一批评估数据）：

    v = compare(loss_pre, loss_post, "less", unit="seeds")       # 声明：pre 的 loss 更低
    exp.conclude_verdict("Pre-LN 比 Post-LN 收敛得好", v)

判定规则（以 d_i = 声明方向上的差值，正数表示支持声明；SE = std(d, ddof=1)/√n；k = noise_multiplier(n)）：
- unit="seeds"（每对来自一个独立训练的种子，通常 2–5 对）：
  每一对都同号，且 |mean(d)| > k·SE。
  "每个种子都同号"防止一个大幅度的种子拉动均值；"k·SE"防止几对刚好同号但差值只有噪声大小。
  k 至少是 2，种子少时取单侧 95% 的 t 分位数（n=3 时 2.92）：只用"同号 + 2·SE"时，
  在没有效应、噪声正态的模拟里 3 个种子判为"成立"的比例是 9%（tests/test_common_noise.py 会测），
  换成 t 分位数后低于 5%。
- unit="batches"（quick 模式只有一个种子时，用同一模型在多批固定评估数据上的配对差值）：
  |mean(d)| > k·SE。它只量到"评估数据抽样"的噪声，量不到"换一个种子重新训练"的噪声，
  所以打印时说明用的是哪种噪声。
- unit="windows"（计时：同一进程里轮流计时的窗口，见 modules/common/timing.py）：规则同 batches。
- 只有一对（一个种子、没有可用的批次噪声）时无从估计噪声：一律 NOT_ESTABLISHED。

等价声明（"两种算法给出同一个数"）用 equivalent(a, b, margin)：差值的 ±k·SE 区间整个落在 ±margin 里才成立；
区间整个落在外面是 FAILS；其余 NOT_ESTABLISHED。margin 必须在看结果之前定好，写进声明。
"不差于"声明（"GQA 省一半 KV cache，loss 最多差 0.05"）用 noninferior(a, b, margin)：只有一侧的界，
a 比 b 好多少都不违背声明——双侧的 equivalent 会把"好得多"也判为不成立。
"失败率"声明（"不加 warmup 的 Post-LN 更常训不动"）的每个种子只有"失败 / 没失败"两种结果，
用 fewer_failures(a_failed, b_failed)：按种子配对的精确符号检验（McNemar），见它的 docstring。
"""
import math
from dataclasses import dataclass, field

HOLDS = "holds"
NOT_ESTABLISHED = "not_established"
FAILS = "fails"
STATUSES = (HOLDS, NOT_ESTABLISHED, FAILS)

NOISE_UNITS = {"seeds": "种子间噪声", "batches": "评估批次间噪声（单种子）",
               "windows": "交替计时窗口间噪声（同一进程，见 modules/common/timing.py）"}
DIRECTIONS = ("less", "greater")
# 单侧 95% 的 t 分位数（自由度 1–4）；自由度 ≥ 5 时它已不到 2.02，统一用 2
T_QUANTILE_95 = {1: 6.314, 2: 2.920, 3: 2.353, 4: 2.132}


def noise_multiplier(n: int) -> float:
    """n 对测量时"超出噪声"要求 |mean| 大于几个 SE：max(2, t_{0.95, n−1})。"""
    return T_QUANTILE_95.get(n - 1, 2.0)


@dataclass
class Verdict:
    """一次噪声检验的结果；to_dict() 写进实验 JSON 的结论记录。"""
    status: str
    unit: str
    n: int
    mean_delta: float  # 声明方向上的平均差值（>0 支持声明）
    se: float          # 差值均值的标准误（n=1 时为 nan）
    deltas: list = field(default_factory=list)
    margin: float | None = None  # 只有等价 / 不差于检验有
    one_sided: bool = False      # True：不差于检验（只有一侧的界）
    p_value: float | None = None  # 只有失败率检验（fewer_failures）有：单侧精确符号检验的 p 值

    @property
    def holds(self) -> bool:
        return self.status == HOLDS

    def describe(self) -> str:
        """一句话说明用了什么噪声、效应多大，附在结论的证据后面。"""
        noise = NOISE_UNITS[self.unit]
        if self.n < 2:
            return f"只有 1 对测量，无法估计噪声（{noise}）"
        if self.p_value is not None:  # 失败率检验：deltas 是每个种子的 b 失败 − a 失败（1 / 0 / −1）
            helped, hurt = sum(d > 0 for d in self.deltas), sum(d < 0 for d in self.deltas)
            return (f"失败率之差 {self.mean_delta:+.2f}（n={self.n} 个种子，结果不同的种子 {helped} 个支持、{hurt} 个相反；"
                    f"精确符号检验单侧 p={self.p_value:.3g}，p < {FAILURE_TEST_ALPHA} 才算超出噪声）")
        se = f"{self.se:.3g}" if math.isfinite(self.se) else "nan"
        k = noise_multiplier(self.n)
        text = f"Δ={self.mean_delta:+.3g}，{k:g}·SE={k * self.se:.3g}（{noise}，n={self.n}"
        if self.unit == "seeds":
            agree = sum(d > 0 for d in self.deltas)
            text += f"，{agree}/{self.n} 个种子方向一致"
        if self.margin is not None:
            text += f"，不差于界 {self.margin:g}" if self.one_sided else f"，等价界 ±{self.margin:g}"
        return text + f"，SE={se}）"

    def to_dict(self) -> dict:
        return {"status": self.status, "unit": self.unit, "n": self.n, "mean_delta": self.mean_delta,
                "se": self.se if math.isfinite(self.se) else None, "deltas": list(self.deltas),
                "margin": self.margin, "one_sided": self.one_sided, "p_value": self.p_value}


def _finite_floats(values, name: str) -> list[float]:
    values = [float(v) for v in values]
    if not values:
        raise ValueError(f"{name} 至少要有一个值")
    return values


def _mean_se(deltas: list[float]) -> tuple[float, float]:
    n = len(deltas)
    mean = sum(deltas) / n
    if n < 2:
        return mean, math.nan
    var = sum((d - mean) ** 2 for d in deltas) / (n - 1)
    return mean, math.sqrt(var / n)


def _check_unit(unit: str) -> None:
    if unit not in NOISE_UNITS:
        raise ValueError(f"unit 只能是 {sorted(NOISE_UNITS)} 之一，收到 {unit!r}")


def paired_deltas(a, b, direction: str) -> list[float]:
    """声明"a 比 b {direction}"时每一对的支持量：direction="less" 时是 b−a，"greater" 时是 a−b。"""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction 只能是 {DIRECTIONS} 之一，收到 {direction!r}")
    a, b = _finite_floats(a, "a"), _finite_floats(b, "b")
    if len(a) != len(b):
        raise ValueError(f"配对比较要求两边个数相同：a 有 {len(a)} 个，b 有 {len(b)} 个")
    return [(y - x) if direction == "less" else (x - y) for x, y in zip(a, b)]


def compare(a, b, direction: str, unit: str = "seeds") -> Verdict:
    """声明"a 比 b 更 {less|greater}"（a、b 按种子或评估批次配对），返回三态判定。

    NaN（发散）让这一对无法比较：任何一对是 NaN 都判为 NOT_ESTABLISHED，由调用者另写"发散"的结论；
    声明"发散的一边更差"时可以先用 diverged_as 把 NaN 换成一个不比发散更好的值。
    """
    _check_unit(unit)
    deltas = paired_deltas(a, b, direction)
    n = len(deltas)
    mean, se = _mean_se(deltas)
    if n < 2 or not all(math.isfinite(d) for d in deltas):
        return Verdict(NOT_ESTABLISHED, unit, n, mean, se, deltas)
    beyond_noise = abs(mean) > noise_multiplier(n) * se
    if unit == "seeds":
        same_sign_for = all(d > 0 for d in deltas)
        same_sign_against = all(d < 0 for d in deltas)
    else:  # 批次很多时不要求每一批同号，只看均值是否超出 k·SE
        same_sign_for = same_sign_against = True
    if beyond_noise and mean > 0 and same_sign_for:
        status = HOLDS
    elif beyond_noise and mean < 0 and same_sign_against:
        status = FAILS
    else:
        status = NOT_ESTABLISHED
    return Verdict(status, unit, n, mean, se, deltas)


def exceeds(values, threshold: float, direction: str = "greater", unit: str = "seeds") -> Verdict:
    """声明"values 超过（greater）/低于（less）一个事先定好的常数 threshold"，例如准确率 > 0.5。"""
    values = _finite_floats(values, "values")
    return compare(values, [threshold] * len(values), direction, unit)


def equivalent(a, b, margin: float, unit: str = "seeds") -> Verdict:
    """声明"a 与 b 相差不超过 margin"：mean(a−b) ± k·SE 整个落在 (−margin, margin) 内才成立。

    与 compare 不同，等价检验两个方向都算：B 比 A 好很多同样让"差不多"不成立（FAILS）。
    """
    _check_unit(unit)
    if not margin > 0:
        raise ValueError(f"margin 必须为正，收到 {margin}")
    deltas = paired_deltas(a, b, "greater")  # a − b
    n = len(deltas)
    mean, se = _mean_se(deltas)
    if n < 2 or not all(math.isfinite(d) for d in deltas):
        return Verdict(NOT_ESTABLISHED, unit, n, mean, se, deltas, margin)
    k = noise_multiplier(n)
    low, high = mean - k * se, mean + k * se
    if -margin < low and high < margin:
        status = HOLDS
    elif high < -margin or low > margin:
        status = FAILS
    else:
        status = NOT_ESTABLISHED
    return Verdict(status, unit, n, mean, se, deltas, margin)


def noninferior(a, b, margin: float, direction: str = "less", unit: str = "seeds") -> Verdict:
    """声明"a 不比 b 差超过 margin"（direction="less"：a 越小越好，如 loss；"greater"：越大越好，如准确率）。

    等价于 compare(a, b ± margin, direction)：每一对的支持量是 margin − (a 比 b 差的量)，
    要超出噪声地为正才成立；a 比 b 差得超出 margin（超出噪声）是 FAILS。a 比 b 好，只会让声明更稳。
    """
    if not margin > 0:
        raise ValueError(f"margin 必须为正，收到 {margin}")
    shift = margin if direction == "less" else -margin
    shifted = [float(y) + shift for y in b]
    verdict = compare(a, shifted, direction, unit)
    verdict.margin, verdict.one_sided = margin, True
    return verdict


FAILURE_TEST_ALPHA = 0.05


def _sign_test_p(successes: int, trials: int) -> float:
    """单侧精确符号检验：在 p = 1/2 的二项分布下，trials 次里至少 successes 次的概率。"""
    return sum(math.comb(trials, k) for k in range(successes, trials + 1)) / 2 ** trials


def fewer_failures(a_failed, b_failed, unit: str = "seeds") -> Verdict:
    """声明"a 比 b 更少失败"（a_failed[i]、b_failed[i] 是同一个种子下两种做法是否失败，True / False）。

    每个种子的结果只有两种时，compare 的"每个种子同号"用不上：两边都失败或都成功的种子差值为 0，
    它们不提供 a、b 谁更好的信息。McNemar 的精确检验只看结果不同的种子：没有差别时，"b 失败而 a 成功"
    与"a 失败而 b 成功"各占一半，于是"支持声明的种子数"服从 Binomial(不同的种子数, 1/2)。
    单侧 p < 0.05 判为成立；反方向的单侧 p < 0.05 判为不成立；其余未确立。
    至少要有 5 个结果不同、且全部支持声明的种子才可能成立（0.5^5 = 0.031），所以失败率声明要用更多种子。
    """
    _check_unit(unit)
    a, b = [bool(x) for x in a_failed], [bool(x) for x in b_failed]
    if len(a) != len(b) or not a:
        raise ValueError(f"配对比较要求两边个数相同且不为空：a 有 {len(a)} 个，b 有 {len(b)} 个")
    deltas = [int(y) - int(x) for x, y in zip(a, b)]  # 1：只有 b 失败（支持声明）；−1：只有 a 失败
    n = len(deltas)
    mean, se = _mean_se([float(d) for d in deltas])
    helped, hurt = deltas.count(1), deltas.count(-1)
    p_for = _sign_test_p(helped, helped + hurt)
    p_against = _sign_test_p(hurt, helped + hurt)
    if p_for < FAILURE_TEST_ALPHA:
        status = HOLDS
    elif p_against < FAILURE_TEST_ALPHA:
        status = FAILS
    else:
        status = NOT_ESTABLISHED
    return Verdict(status, unit, n, mean, se, deltas, p_value=p_for)


def diverged_as(values, worst: float) -> list[float]:
    """把发散（NaN）的测量换成一个事先说明的"最差值"，让它能参加比较：compare 把含 NaN 的一对判为无法比较。

    只在声明是"这一边更差"时用，而且 worst 要真的不比发散更好——例如语言模型的 loss 按 ln V（均匀乱猜）计：
    输出 NaN 的模型比均匀乱猜还差，这样算只会让"更差"的声明更难成立，不会更容易。
    声明"这一边更好"时不能这样补（补进去的值会替发散的一方说好话）：那里 NaN 应当让结论无法确立。"""
    return [float(worst) if math.isnan(float(v)) else float(v) for v in values]


def weakest(verdicts) -> Verdict:
    """"每一对都要成立"的结论（"A 比其余每一个都好"、"每多一档预算 loss 都更低"、"每个 γ 上都相差不到 ±m"）
    由几次检验组成：全部成立才成立，任一次反向超出噪声就不成立，其余未确立。返回决定整条结论的那一次
    （verdicts 可以是列表或字典）：先按状态（FAILS < NOT_ESTABLISHED < HOLDS），同一状态里取最勉强的那次——
    比较（含不差于）取 |Δ| 相对 k·SE 最小的；等价检验取区间 |Δ| + k·SE 离界 ±margin 最近（或超出最多）的。"""
    verdicts = list(verdicts.values()) if isinstance(verdicts, dict) else list(verdicts)
    if not verdicts:
        raise ValueError("weakest 至少要有一个判定")
    order = {FAILS: 0, HOLDS: 2}

    def strength(v):
        bar = noise_multiplier(v.n) * v.se if math.isfinite(v.se) else math.inf
        if v.margin is not None and not v.one_sided:  # 等价：区间的远端离界还有多远（负数 = 已经越界）
            return order.get(v.status, 1), v.margin - (abs(v.mean_delta) + bar)
        return order.get(v.status, 1), abs(v.mean_delta) / bar if bar > 0 else math.inf

    return min(verdicts, key=strength)


def compare_runs(a_seeds, b_seeds, direction: str, a_batches=None, b_batches=None) -> Verdict:
    """实验里最常见的比较：完整模式（≥ 2 个种子）按种子配对；quick 模式只有一个种子时，
    退而用同一次运行里按评估批次（同一批数据）配对的值——没给批次值就只能判 NOT_ESTABLISHED。"""
    if len(list(a_seeds)) >= 2 or a_batches is None:
        return compare(a_seeds, b_seeds, direction, unit="seeds")
    return compare(a_batches, b_batches, direction, unit="batches")


def equivalent_runs(a_seeds, b_seeds, margin: float, a_batches=None, b_batches=None) -> Verdict:
    """"差不多"的 compare_runs：≥ 2 个种子时按种子配对做等价检验，只有一个种子时按评估批次配对。"""
    if len(list(a_seeds)) >= 2 or a_batches is None:
        return equivalent(a_seeds, b_seeds, margin, unit="seeds")
    return equivalent(a_batches, b_batches, margin, unit="batches")


def noninferior_runs(a_seeds, b_seeds, margin: float, direction: str = "less", a_batches=None, b_batches=None) -> Verdict:
    """"不差于"的 compare_runs：≥ 2 个种子时按种子配对，只有一个种子时按评估批次配对。"""
    if len(list(a_seeds)) >= 2 or a_batches is None:
        return noninferior(a_seeds, b_seeds, margin, direction, unit="seeds")
    return noninferior(a_batches, b_batches, margin, direction, unit="batches")
