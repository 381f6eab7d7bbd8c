"""评测结果 → 一张对齐的文本表格（终端里看）；完整结果另存 JSON。"""
from typing import List, Sequence


def format_table(headers: Sequence[str], rows: List[Sequence]) -> str:
    """浮点数保留 4 位；列宽按最宽的单元格（中文按两个字符宽）。"""
    def cell(v):
        return f"{v:.4f}" if isinstance(v, float) else str(v)

    def width(s):
        return sum(2 if ord(ch) > 0x2E80 else 1 for ch in s)

    table = [[cell(h) for h in headers]] + [[cell(v) for v in r] for r in rows]
    widths = [max(width(r[i]) for r in table) for i in range(len(headers))]
    lines = ["  ".join(c + " " * (w - width(c)) for c, w in zip(r, widths)).rstrip() for r in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
