"""把仓库里的 Markdown 生成为 MkDocs 的 docs_dir（默认 build/site-docs/，不进 git）。

仓库文件是唯一的来源，这里只做"映射"，不重写内容：
- 页面：README.md → index.md（各目录同理），README_en.md → index.en.md，
  ROADMAP.md、docs/*.md、trainer/、dataset/、modules/README.md、每个模块的全部 .md。
- 链接：站内页面保持相对链接（README.md 改指 index.md）；仓库里存在但不是页面的文件或目录
  （.py、没有 README 的目录）改成 GitHub 上的地址；图片复制过来；不存在的目标原样保留，
  让 mkdocs build --strict 报错。
- 自测题：quiz.md 用终端答题器的同一个解析器 modules.common.quiz.parse_quiz 解析，
  生成可点击作答的页面（没有 JavaScript 时就是普通的 <details> 答案）。
- 每个模块生成 results.md（实验参考结果）：experiments/results/reference/ 里 JSON 的结论与表格 + PNG 图。
- 首页在"模块一览"下插入模块卡片，状态从仓库内容算出。
- 英文：仓库里 X.md 旁边有 X.en.md（根目录是 README_en.md）时，英文站用它（自测题同样做成可作答页面，
  界面文字是英文）；没有的页面生成 X.en.md = 中文内容 + 一条"暂无英文版"的提示（不进搜索索引，免得每个结果出现两遍）。
  英文文件里指向 Y.en.md 的链接在站点上改指 Y.md，由 i18n 插件换成英文版。

用法（通常由 website/hooks.py 在 mkdocs build 时调用）：
    python website/build_docs.py [--docs-dir build/site-docs]
"""
from __future__ import annotations

import argparse
import html
import json
import os
import posixpath
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, unquote

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from modules.common.quiz import CHOICE_TYPES, parse_quiz  # noqa: E402  （唯一的 quiz 解析器）

DEFAULT_DOCS_DIR = REPO_ROOT / "build" / "site-docs"
NODE_MODULES = REPO_ROOT / "website" / "node_modules"
ASSETS_DIR = REPO_ROOT / "website" / "assets"
DEFAULT_SOURCE_URL = "https://github.com/minimind-notes/minimind-notes"

TOP_LEVEL_PAGES = ["README.md", "README_en.md", "ROADMAP.md", "trainer/README.md", "dataset/README.md",
                   "modules/README.md"]
MODULE_PAGE_ORDER = ["README.md", "teaching.md", "code_guide.md", "quiz.md"]
# 模块内的导航标题（英文见 mkdocs.yml 的 nav_translations）
MODULE_NAV_TITLES = {"README.md": "概览", "teaching.md": "讲义", "code_guide.md": "代码导读", "quiz.md": "自测题",
                     "results.md": "实验参考结果"}
ASSET_SUFFIXES = {".png", ".jpg", ".jpeg", ".gif", ".svg", ".webp"}
# 从 npm 包里拷到站点的文件：(包内路径, 站点内路径)
VENDORED = [
    ("katex/dist/katex.min.js", "assets/vendor/katex/katex.min.js"),
    ("katex/dist/katex.min.css", "assets/vendor/katex/katex.min.css"),
    ("katex/dist/contrib/auto-render.min.js", "assets/vendor/katex/contrib/auto-render.min.js"),
    ("katex/dist/fonts", "assets/vendor/katex/fonts"),
    ("mermaid/dist/mermaid.min.js", "assets/vendor/mermaid/mermaid.min.js"),
]
KIND_LABELS = {"single": "单选", "multiple": "多选", "predict": "预测", "short": "简答"}
KIND_LABELS_EN = {"single": "single choice", "multiple": "multiple choice", "predict": "predict", "short": "short answer"}
EN_FALLBACK_NOTE = (
    '!!! info "English version not available"\n'
    "    This page has no English translation yet; the Chinese original is shown below. "
    "The [English home page]({home}) gives an overview of the course in English.\n"
)

RESULTS_NOTE = ('!!! success "实验参考结果"\n'
                '    各实验完整模式的结论（✓/✗）、数值表与图见 [实验参考结果](results.md)。\n')
RESULTS_NOTE_EN = ('!!! success "Reference results"\n'
                   "    Each experiment's full-mode conclusions (✓/✗), tables and plots are on the "
                   "[reference results](results.md) page (printed in Chinese, as the scripts print them).\n")

FENCE_RE = re.compile(r"^\s*(`{3,}|~{3,})")
CODE_SPAN_RE = re.compile(r"(`+)(?!`).+?(?<!`)\1(?!`)")
MD_LINK_RE = re.compile(r"(?P<head>!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?)(?P<target>[^\s<>()]+)(?P<tail>>?(?:\s+\"[^\"]*\")?\s*\))")
HTML_LINK_RE = re.compile(r"(?P<head><(?:a|img|source)\b[^>]*?\b(?:href|src)\s*=\s*[\"'])(?P<target>[^\"']+)(?P<tail>[\"'])",
                          re.IGNORECASE)
SCHEME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
CORE_QUESTION_RE = re.compile(r"^\*\*核心问题\*\*[：:]\s*(.+)$")


# ---------------------------------------------------------------------------
# 源文件与页面路径
# ---------------------------------------------------------------------------

def module_dirs(root: Path = REPO_ROOT) -> list[Path]:
    """modules/<层>/<模块>/：有 README.md 的模块目录（新模块自动出现）。"""
    return sorted(p.parent for p in root.glob("modules/*/*/README.md"))


def source_pages(root: Path = REPO_ROOT) -> list[str]:
    """进入站点的仓库 Markdown（相对仓库根目录的 posix 路径）；X.en.md 是 X.md 的英文版，不单独成页。"""
    pages = [p for p in TOP_LEVEL_PAGES if (root / p).is_file()]
    pages += sorted(p.relative_to(root).as_posix() for p in root.glob("docs/*.md") if not is_english(p.name))
    for module in module_dirs(root):
        pages += sorted(p.relative_to(root).as_posix() for p in module.glob("*.md") if not is_english(p.name))
    return pages


def is_english(name: str) -> bool:
    return name.endswith(".en.md")


def english_source(repo_rel: str, root: Path = REPO_ROOT) -> str | None:
    """中文页 X.md 的英文版 X.en.md（存在时）；根目录 README.md 的英文版是单独成页的 README_en.md，不算在这里。"""
    if repo_rel in ("README.md", "README_en.md"):
        return None
    english = repo_rel[:-len(".md")] + ".en.md"
    return english if (root / english).is_file() else None


def site_path(repo_rel: str) -> str:
    """仓库路径 → docs_dir 里的路径：README 成为所在目录的 index。"""
    if repo_rel == "README_en.md":
        return "index.en.md"
    head, name = posixpath.split(repo_rel)
    return posixpath.join(head, "index.md") if name == "README.md" else repo_rel


def page_url_dir(repo_rel: str) -> str:
    """页面在站点上的 URL 目录（use_directory_urls）：a/index.md → a，a/b.md → a/b；英文首页在 en/。"""
    if repo_rel == "README_en.md":
        return "en"
    stem = posixpath.splitext(site_path(repo_rel))[0]
    return posixpath.dirname(stem) if posixpath.basename(stem) == "index" else stem


# ---------------------------------------------------------------------------
# 链接改写
# ---------------------------------------------------------------------------

@dataclass
class LinkContext:
    root: Path
    pages: set[str]                      # 进入站点的仓库 Markdown
    source_url: str                      # GitHub 仓库地址，如 https://github.com/org/repo
    branch: str = "main"
    assets: set[str] = field(default_factory=set)   # 需要拷进 docs_dir 的图片（仓库路径）


def rewrite_target(target: str, src_rel: str, ctx: LinkContext) -> str:
    """一条相对链接在站点上的写法（见模块文档字符串）；外链、锚点、绝对路径原样返回。"""
    if SCHEME_RE.match(target) or target.startswith(("#", "/")):
        return target
    path, sep, fragment = target.partition("#")
    if not path:
        return target
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(src_rel), unquote(path)))
    if resolved.startswith("../") or resolved == "..":
        return target                    # 指向仓库之外：交给 strict 构建报错
    full = ctx.root / resolved
    src_dir = posixpath.dirname(site_path(src_rel)) or "."
    anchor = sep + fragment

    def relative(site_target: str) -> str:
        return quote(posixpath.relpath(site_target, src_dir)) + anchor

    to_english = resolved == "README_en.md" and src_rel != "README_en.md"
    to_chinese = resolved == "README.md" and src_rel == "README_en.md"
    if to_english or to_chinese:
        # 中文页 ↔ 英文首页：两种语言分别构建（/ 与 /en/），Markdown 链接跨不过去，改成站点 URL
        return posixpath.relpath("en" if to_english else ".", page_url_dir(src_rel)) + "/" + anchor
    if is_english(resolved) and resolved[:-len(".en.md")] + ".md" in ctx.pages:
        resolved = resolved[:-len(".en.md")] + ".md"     # 英文页互相链接：指向中文页的位置，i18n 插件换成英文版
    if resolved in ctx.pages:
        return relative(site_path(resolved))
    if full.is_dir() and f"{resolved}/README.md" in ctx.pages:
        return relative(site_path(f"{resolved}/README.md"))
    if full.is_file() and full.suffix.lower() in ASSET_SUFFIXES:
        ctx.assets.add(resolved)
        return target
    if full.exists():
        kind = "tree" if full.is_dir() else "blob"
        url_path = "" if resolved == "." else "/" + quote(resolved)
        return f"{ctx.source_url}/{kind}/{ctx.branch}{url_path}{anchor}"
    return target


def rewrite_links(text: str, src_rel: str, ctx: LinkContext) -> str:
    """改写代码块和行内代码之外的 Markdown 链接、图片与 HTML href/src。"""
    out, fence = [], None

    def fix(match: re.Match) -> str:
        return match["head"] + rewrite_target(match["target"], src_rel, ctx) + match["tail"]

    for line in text.split("\n"):
        m = FENCE_RE.match(line)
        if fence is None and m:
            fence = m.group(1)
        elif fence is not None:
            if re.match(rf"^\s*{re.escape(fence[0])}{{{len(fence)},}}\s*$", line):
                fence = None
        else:
            pieces, last = [], 0
            for span in CODE_SPAN_RE.finditer(line):      # 行内代码里的 [x](y) 不是链接
                pieces.append(HTML_LINK_RE.sub(fix, MD_LINK_RE.sub(fix, line[last:span.start()])))
                pieces.append(span.group(0))
                last = span.end()
            pieces.append(HTML_LINK_RE.sub(fix, MD_LINK_RE.sub(fix, line[last:])))
            line = "".join(pieces)
        out.append(line)
    return "\n".join(out)


# ---------------------------------------------------------------------------
# 模块状态（首页卡片）与实验参考结果页
# ---------------------------------------------------------------------------

@dataclass
class ModuleStatus:
    rel: str                 # modules/01-foundation/01-normalization
    tier: str                # 01-foundation
    name: str                # 01-normalization
    title: str               # README 的一级标题
    core_question: str
    docs: dict               # {"README.md": True, ...}
    experiments: int         # experiments/exp*.py 的个数
    references: int          # reference/*.json 的个数
    quiz_questions: int

    @property
    def complete(self) -> bool:
        return all(self.docs.values()) and self.experiments > 0 and self.references >= self.experiments


def first_heading(text: str) -> str:
    return next((line[2:].strip() for line in text.splitlines() if line.startswith("# ")), "")


def module_status(module: Path, root: Path = REPO_ROOT) -> ModuleStatus:
    readme = (module / "README.md").read_text(encoding="utf-8")
    core = next((m.group(1) for line in readme.splitlines() if (m := CORE_QUESTION_RE.match(line))), "")
    quiz = module / "quiz.md"
    return ModuleStatus(
        rel=module.relative_to(root).as_posix(),
        tier=module.parent.name,
        name=module.name,
        title=first_heading(readme),
        core_question=core,
        docs={name: (module / name).is_file() for name in MODULE_PAGE_ORDER},
        experiments=len(list(module.glob("experiments/exp*.py"))),
        references=len(list(module.glob("experiments/results/reference/*.json"))),
        quiz_questions=len(parse_quiz(quiz)) if quiz.is_file() else 0,
    )


def module_grid(statuses: list[ModuleStatus], english: bool) -> str:
    """Material 的 grid cards：每个模块一张卡片，状态由 module_status 算出。"""
    t = {
        "intro": ("The cards below are generated from the repository when the site is built "
                  "(files present, experiments, committed reference results, quiz questions)."
                  if english else "下面的卡片在构建网站时从仓库内容生成（有哪些文件、几个实验、几份参考结果、几道自测题）。"),
        "done": "complete" if english else "完成",
        "wip": "in progress" if english else "进行中",
        "teaching": "lesson" if english else "讲义",
        "code_guide": "code guide" if english else "代码导读",
        "quiz": "quiz" if english else "自测题",
        "exp": "experiments" if english else "个实验",
        "ref": "reference results" if english else "份参考结果",
        "q": "questions" if english else "题",
    }
    lines = [t["intro"], "", '<div class="grid cards module-grid" markdown>', ""]
    for s in statuses:
        base = s.rel + "/"
        state = t["done"] if s.complete else t["wip"]
        links = []
        for name, label in (("teaching.md", t["teaching"]), ("code_guide.md", t["code_guide"])):
            if s.docs[name]:
                links.append(f"[{label}]({base}{name})")
        if s.docs["quiz.md"]:
            links.append(f"[{t['quiz']}]({base}quiz.md) ({s.quiz_questions} {t['q']})")
        if s.references:
            links.append(f"[{s.references} {t['ref']}]({base}results.md)")
        lines += [
            f'-   <span class="module-tier">{s.tier}</span> **[{html.escape(s.title)}]({base}index.md)**'
            f' <span class="module-state" data-complete="{str(s.complete).lower()}">{state}</span>',
            "",
            f"    {s.core_question}",
            "",
            f"    {s.experiments} {t['exp']} · " + " · ".join(links),
            "",
        ]
    lines += ["</div>", ""]
    return "\n".join(lines)


def insert_module_grid(text: str, heading_re: str, grid: str) -> str:
    """把卡片插到"模块一览"标题下面；找不到这个标题就放在文末。"""
    m = re.search(heading_re, text, flags=re.MULTILINE)
    if not m:
        return text.rstrip("\n") + "\n\n" + grid
    return text[:m.end()] + "\n\n" + grid + text[m.end():]


def format_cell(value) -> str:
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            return str(value)
        if value == 0:
            return "0"
        return f"{value:.3g}" if abs(value) < 1e-3 or abs(value) >= 1e5 else f"{value:.4g}"
    if value is None:
        return "-"
    if isinstance(value, (list, dict)):
        value = json.dumps(value, ensure_ascii=False)
    return str(value).replace("|", "\\|").replace("\n", " ")


# 结论的三态（modules/common/noise.py）：成立 / 未确立（噪声以内）/ 不成立
CONCLUSION_MARKS = {"holds": ("✓", "holds"), "not_established": ("?", "unsettled"), "fails": ("✗", "fails")}


def conclusion_status(conclusion: dict) -> str:
    """JSON 里的 status；早于噪声检验的记录只有 holds，按成立/不成立两态读。"""
    return conclusion.get("status") or ("holds" if conclusion.get("holds") else "fails")


def results_page(status: ModuleStatus, root: Path = REPO_ROOT) -> str | None:
    """results.md：每份参考 JSON 的结论（✓/✗ + 证据）、表格与同名 PNG。没有参考结果时返回 None。"""
    reference = root / status.rel / "experiments" / "results" / "reference"
    records = sorted(reference.glob("*.json"))
    if not records:
        return None
    out = [f"# 实验参考结果：{status.name}", "",
           f"下面是[本模块](index.md)各实验完整模式的参考输出，由构建脚本读取 `{status.rel}/experiments/results/reference/` "
           "里提交的 JSON 与 PNG 生成。你本机运行的结果写在 `experiments/results/`，可以与这里对照。", ""]
    for path in records:
        record = json.loads(path.read_text(encoding="utf-8"))
        meta = record.get("metadata", {})
        out += [f"## {path.stem}", ""]
        facts = [f"模式 `{meta.get('mode', '?')}`"]
        if "seeds" in meta:
            facts.append(f"种子 {meta['seeds']}")
        elif "seed" in meta:
            facts.append(f"种子 {meta['seed']}")
        if "duration_s" in meta:
            facts.append(f"用时 {float(meta['duration_s']):.0f} s")
        if "device" in meta:
            facts.append(f"设备 {meta['device']}")
        if "torch" in meta:
            facts.append(f"torch {meta['torch']}")
        out += ["，".join(facts), ""]
        conclusions = record.get("conclusions", [])
        if conclusions:
            out += ["**结论**（由这次运行的测量得出）：", ""]
            for c in conclusions:
                status = conclusion_status(c)
                mark, css = CONCLUSION_MARKS[status]
                out.append(f'- <span class="conclusion-{css}">{mark}</span> {c.get("claim", "")}'
                           + (f" —— {c['evidence']}" if c.get("evidence") else ""))
            out.append("")
        for title, table in record.get("metrics", {}).get("tables", {}).items():
            headers = table.get("headers", [])
            if not headers:
                continue
            out += [f"**{title}**", "",
                    "| " + " | ".join(format_cell(h) for h in headers) + " |",
                    "|" + "---|" * len(headers)]
            out += ["| " + " | ".join(format_cell(v) for v in row) + " |" for row in table.get("rows", [])]
            out.append("")
        figures = meta.get("figures") or []
        pngs = [f for f in figures if (reference / f).is_file()] or \
            [p.name for p in sorted(reference.glob(f"{path.stem}*.png"))]
        for png in pngs:
            out += [f"![{path.stem}](experiments/results/reference/{png})", ""]
    return "\n".join(out)


# ---------------------------------------------------------------------------
# 交互式自测题
# ---------------------------------------------------------------------------

def quiz_page(quiz_path: Path, page_id: str, english: bool = False) -> str:
    """把 quiz.md（或英文版 quiz.en.md）渲染成可作答的页面：题干与解析仍是 Markdown（md_in_html），
    结构由 quiz.js 接管。两种语言共用 page_id：作答进度按模块存，切换语言不丢。"""
    kinds = KIND_LABELS_EN if english else KIND_LABELS
    summary, answer_label, explanation_label = (("Answer and explanation", "**Answer**: ", "**Explanation**: ")
                                                if english else ("答案与解析", "**答案**：", "**解析**："))
    questions = parse_quiz(quiz_path)
    lines = quiz_path.read_text(encoding="utf-8").splitlines()
    intro = "\n".join(lines[:questions[0].line - 1]).rstrip()
    out = [intro, "",
           f'<div class="quiz" data-quiz-id="{html.escape(page_id)}" data-total="{len(questions)}" markdown>', ""]
    for q in questions:
        first, _, rest = q.prompt.partition("\n")
        answer = ",".join(q.answer_letters) if q.kind in CHOICE_TYPES else ""
        out += [f'<div class="quiz-question" id="q{q.number}" data-number="{q.number}" data-kind="{q.kind}" '
                f'data-answer="{answer}" markdown>', "",
                f"### Q{q.number} <span class=\"quiz-kind\">{kinds[q.kind]}</span> {first}", "",
                rest.strip(), ""]
        if q.options:
            out.append('<ul class="quiz-options">')
            for letter, text in q.options.items():
                out.append(f'<li class="quiz-option" data-option="{letter}" markdown="span">'
                           f'<span class="quiz-letter">{letter}.</span> {text}</li>')
            out += ["</ul>", ""]
        out += ['<details class="quiz-answer" markdown>', f"<summary>{summary}</summary>", "",
                f"{answer_label}{q.answer}", "", f"{explanation_label}{q.explanation}", "", "</details>", "",
                "</div>", ""]
    score = (f"{len(questions)} questions. Open each question's “Answer and explanation” to check yourself."
             if english else f"共 {len(questions)} 题。打开每题的“答案与解析”对照自己的答案。")
    out += ['<div class="quiz-score" aria-live="polite" markdown>', score, "</div>", "", "</div>", ""]
    return "\n".join(out)


# ---------------------------------------------------------------------------
# 生成 docs_dir
# ---------------------------------------------------------------------------

def write_if_changed(path: Path, data: bytes) -> None:
    """内容没变就不写（mkdocs serve 按修改时间重建）。"""
    if path.is_file() and path.read_bytes() == data:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def english_fallback(zh_text: str, rel_in_site: str) -> str:
    """X.en.md：在一级标题后插入"暂无英文版"提示，正文照搬中文页。"""
    lines = zh_text.split("\n")
    at = next((i + 1 for i, line in enumerate(lines) if line.startswith("# ")), 0)
    home = posixpath.relpath("index.md", posixpath.dirname(rel_in_site) or ".")
    # 不进搜索索引：内容与中文页相同，搜索结果里出现两遍只会碍事
    front_matter = ["---", "search:", "  exclude: true", "---"]
    return "\n".join([*front_matter, *lines[:at], "", EN_FALLBACK_NOTE.format(home=home), *lines[at:]])


def vendored_files(node_modules: Path = NODE_MODULES) -> dict[str, Path]:
    """站点内路径 → npm 包里的文件。缺包时报清楚的错误，告诉怎样安装。"""
    files = {}
    for package_path, site_rel in VENDORED:
        src = node_modules / package_path
        if not src.exists():
            raise FileNotFoundError(f"缺少 {src}：先在仓库根目录运行 `npm ci --prefix website`（或 `make site`，它会自动装）")
        for f in ([src] if src.is_file() else sorted(p for p in src.rglob("*") if p.is_file())):
            files[posixpath.join(site_rel, f.relative_to(src).as_posix()) if src.is_dir() else site_rel] = f
    return files


def generate(docs_dir: Path = DEFAULT_DOCS_DIR, *, source_url: str = DEFAULT_SOURCE_URL, branch: str = "main",
             root: Path = REPO_ROOT) -> list:
    """生成 docs_dir，返回 MkDocs 的 nav（按仓库结构，模块自动出现）。"""
    docs_dir = Path(docs_dir)
    pages = source_pages(root)
    ctx = LinkContext(root=root, pages=set(pages), source_url=source_url.rstrip("/"), branch=branch)
    statuses = [module_status(m, root) for m in module_dirs(root)]
    module_readmes_with_results = {f"{s.rel}/README.md" for s in statuses if s.references}
    outputs: dict[str, bytes] = {}

    def add_page(rel_in_site: str, text: str, english_fallback_needed: bool, english: str | None = None) -> None:
        """english：英文版的页面内容（已改写链接）；没有时按需生成"暂无英文版"的回退页。"""
        outputs[rel_in_site] = text.encode("utf-8")
        stem, _ = posixpath.splitext(rel_in_site)
        if english is not None:
            outputs[stem + ".en.md"] = english.encode("utf-8")
        elif english_fallback_needed:
            outputs[stem + ".en.md"] = english_fallback(text, rel_in_site).encode("utf-8")

    module_paths = {root / s.rel for s in statuses}

    def page_text(rel: str, english: bool) -> str:
        src = root / rel
        if src.name in ("quiz.md", "quiz.en.md") and src.parent in module_paths:
            return quiz_page(src, posixpath.dirname(rel), english=english)
        return src.read_text(encoding="utf-8")

    for rel in pages:
        text = rewrite_links(page_text(rel, english=False), rel, ctx)
        english_rel = english_source(rel, root)
        english = rewrite_links(page_text(english_rel, english=True), english_rel, ctx) if english_rel else None
        if english is not None and rel in module_readmes_with_results:
            english = english.rstrip("\n") + "\n\n" + RESULTS_NOTE_EN
        if rel == "README.md":
            text = insert_module_grid(text, r"^## 模块一览\s*$", module_grid(statuses, english=False))
        elif rel == "README_en.md":
            text = insert_module_grid(text, r"^## Module overview\s*$", module_grid(statuses, english=True))
        if rel in module_readmes_with_results:
            text = text.rstrip("\n") + "\n\n" + RESULTS_NOTE
        add_page(site_path(rel), text, english_fallback_needed=rel not in ("README.md", "README_en.md"),
                 english=english)

    for s in statuses:
        page = results_page(s, root)
        if page is not None:
            page = rewrite_links(page, f"{s.rel}/results.md", ctx)
            add_page(f"{s.rel}/results.md", page, english_fallback_needed=True)

    for rel in sorted(ctx.assets):
        outputs[rel] = (root / rel).read_bytes()
    for site_rel, src in vendored_files().items():
        outputs[site_rel] = src.read_bytes()
    for src in sorted(p for p in ASSETS_DIR.rglob("*") if p.is_file()):
        outputs["assets/site/" + src.relative_to(ASSETS_DIR).as_posix()] = src.read_bytes()

    for rel, data in outputs.items():
        write_if_changed(docs_dir / rel, data)
    for stale in sorted(p for p in docs_dir.rglob("*") if p.is_file()):   # 删掉仓库里已不存在的旧页面
        if stale.relative_to(docs_dir).as_posix() not in outputs:
            stale.unlink()
    return build_nav(pages, statuses, set(outputs))


def build_nav(pages: list[str], statuses: list[ModuleStatus], outputs: set[str]) -> list:
    """导航：首页、路线图、模块（按层、按模块，页面顺序 README→讲义→代码导读→自测→参考结果）、实战、学习模板。"""
    nav: list = [{"首页": "index.md"}]
    if "ROADMAP.md" in pages:
        nav.append({"学习路线": "ROADMAP.md"})
    modules: list = ["modules/index.md"] if "modules/README.md" in pages else []
    tiers: dict[str, list] = {}
    for s in statuses:
        entries: list = [{MODULE_NAV_TITLES[name]: site_path(f"{s.rel}/{name}")}
                         for name in MODULE_PAGE_ORDER if s.docs[name]]
        others = sorted(p for p in pages if posixpath.dirname(p) == s.rel and posixpath.basename(p) not in MODULE_PAGE_ORDER)
        entries += [site_path(p) for p in others]           # 其他 Markdown：标题取自页面
        if f"{s.rel}/results.md" in outputs:
            entries.append({MODULE_NAV_TITLES["results.md"]: f"{s.rel}/results.md"})
        tiers.setdefault(s.tier, []).append({s.name: entries})
    modules += [{tier: items} for tier, items in tiers.items()]
    if modules:
        nav.append({"模块": modules})
    practice = [site_path(p) for p in ("trainer/README.md", "dataset/README.md") if p in pages]
    if practice:
        nav.append({"实战": practice})
    notes = [p for p in pages if p.startswith("docs/")]
    if notes:
        nav.append({"学习模板": notes})
    return nav


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="从仓库 Markdown 生成 MkDocs 的 docs_dir")
    parser.add_argument("--docs-dir", type=Path, default=DEFAULT_DOCS_DIR, help="输出目录（默认 build/site-docs）")
    parser.add_argument("--source-url", default=os.environ.get("SITE_REPO_URL", DEFAULT_SOURCE_URL),
                        help="非页面文件链接到的 GitHub 仓库地址")
    args = parser.parse_args(argv)
    try:
        nav = generate(args.docs_dir, source_url=args.source_url)
    except (FileNotFoundError, ValueError) as exc:
        print(f"错误：{exc}", file=sys.stderr)
        return 1
    print(f"已生成 {args.docs_dir}（导航 {len(nav)} 节）")
    return 0


if __name__ == "__main__":
    sys.exit(main())
