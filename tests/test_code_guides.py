"""code_guide.md 里的每段代码摘录都注明出处，并且与源文件当前的文本逐行一致——导读不会悄悄过时。

约定：```python 代码块的上一行（最近的非空行）写出处，形如 `model/model_minimind.py::RMSNorm` 或
`modules/common/lab_model.py`。块内可以用单独一行 `...` 表示省略；省略号隔开的每一段都必须是源文件里
连续的几行（含缩进），且各段在源文件中按先后顺序出现。
"""
import re
import textwrap

import pytest

from conftest import REPO_ROOT

SOURCE_RE = re.compile(r"`((?:model|modules|trainer|dataset)/[\w./-]+\.py)(?:::[\w.]+)?`")
ELISION = {"...", "# ..."}


def excerpts(md_text):
    """产出 (行号, 出处路径或 None, 代码行列表)。"""
    lines = md_text.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].strip().startswith("```python"):
            start = i
            j = i + 1
            while j < len(lines) and not lines[j].strip().startswith("```"):
                j += 1
            prev = next((lines[k] for k in range(start - 1, -1, -1) if lines[k].strip()), "")
            found = SOURCE_RE.findall(prev)
            yield start + 1, (found[-1] if found else None), lines[start + 1:j]
            i = j + 1
        else:
            i += 1


def check_excerpt(source_lines, code_lines):
    """返回 None（一致）或一条说明哪里不一致的消息。"""
    chunks, current = [], []
    for line in code_lines:
        if line.strip() in ELISION:
            if current:
                chunks.append(current)
            current = []
        else:
            current.append(line.rstrip())
    if current:
        chunks.append(current)
    source = [line.rstrip() for line in source_lines]
    pos = 0
    for chunk in chunks:
        while chunk and not chunk[0].strip():
            chunk = chunk[1:]
        while chunk and not chunk[-1].strip():
            chunk = chunk[:-1]
        if not chunk:
            continue
        hit = next((k for k in range(pos, len(source) - len(chunk) + 1) if source[k:k + len(chunk)] == chunk), None)
        if hit is None:
            return f"这一段在源文件里找不到（或顺序不对）：{chunk[0].strip()!r} …"
        pos = hit + len(chunk)
    return None


def check_guide(path, root):
    problems = []
    for line_no, src, code in excerpts(path.read_text(encoding="utf-8")):
        if src is None:
            problems.append(f"{path.relative_to(root)}:{line_no}: 代码块上一行没有写出处（如 `model/model_minimind.py::RMSNorm`）")
            continue
        source_path = root / src
        if not source_path.is_file():
            problems.append(f"{path.relative_to(root)}:{line_no}: 出处 {src} 不存在")
            continue
        msg = check_excerpt(source_path.read_text(encoding="utf-8").splitlines(), code)
        if msg:
            problems.append(f"{path.relative_to(root)}:{line_no}: 与 {src} 不一致：{msg}")
    return problems


GUIDES = sorted((REPO_ROOT / "modules").glob("*/*/code_guide.md"))


@pytest.mark.parametrize("path", GUIDES, ids=[p.parent.name for p in GUIDES])
def test_code_guide_excerpts_match_source(path):
    problems = check_guide(path, REPO_ROOT)
    assert not problems, "\n".join(problems)
    assert any(True for _ in excerpts(path.read_text(encoding="utf-8"))), f"{path} 没有任何代码摘录"


def test_checker_catches_stale_excerpt(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "m.py").write_text("def f(x):\n    y = x + 1\n    return y\n\n\ndef g():\n    pass\n",
                                             encoding="utf-8")
    good = textwrap.dedent("""\
        `model/m.py::f`
        ```python
        def f(x):
        ...
            return y
        ```
        """)
    stale = good.replace("return y", "return y * 2")
    unsourced = "some text\n```python\ndef g():\n```\n"
    out_of_order = "`model/m.py`\n```python\ndef g():\n...\ndef f(x):\n```\n"
    for text, expect in ((good, None), (stale, "找不到"), (unsourced, "出处"), (out_of_order, "找不到")):
        guide = tmp_path / "code_guide.md"
        guide.write_text(text, encoding="utf-8")
        problems = check_guide(guide, tmp_path)
        if expect is None:
            assert problems == []
        else:
            assert problems and expect in problems[0], problems
