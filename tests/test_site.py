"""课程网站：严格构建通过、每个模块都有页面，并用无头 Chromium 在 127.0.0.1 上检查真实效果。

- 构建：整个文件只构建一次（mkdocs build --strict 到临时目录）。
- 浏览器：Playwright 驱动 Debian 的 /usr/bin/chromium（不下载浏览器）；站点由 tests/loopback_http.py 的回环服务器
  配上标准的 SimpleHTTPRequestHandler 提供（正确的 Content-Type；下载测试用的处理类只发 application/octet-stream）。
- 缺 Chromium / npm 包 / 网站依赖时：CI（环境变量 CI 为真）里失败，其他地方跳过并说明怎样安装。
- 截图存到 site-screenshots/（不进 git），供人查看。
"""
from __future__ import annotations

import contextlib
import functools
import os
import re
import subprocess
import sys
from http.server import SimpleHTTPRequestHandler
from pathlib import Path
from urllib.parse import urlparse

import pytest

from conftest import missing  # CI 里失败、其他地方跳过（测试见 tests/test_conftest.py）
from loopback_http import serve_with_handler

REPO_ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run"]
SCREENSHOTS = REPO_ROOT / "site-screenshots"
MODULES = sorted(p.parent for p in REPO_ROOT.glob("modules/*/*/README.md"))
QUIZZES = sorted(REPO_ROOT.glob("modules/*/*/quiz.md"))

pytestmark = pytest.mark.xdist_group("site")   # 同一个 worker：共用一次构建和一个浏览器


@pytest.fixture(scope="module")
def build_docs():
    """website/build_docs.py（生成 docs_dir 的脚本）作为模块导入。"""
    sys.path.insert(0, str(REPO_ROOT / "website"))
    try:
        import build_docs  # noqa: F401
    finally:
        sys.path.remove(str(REPO_ROOT / "website"))
    return build_docs


@pytest.fixture(scope="module")
def built_site(tmp_path_factory, build_docs) -> Path:
    """mkdocs build --strict 到临时目录；失败时把 mkdocs 的输出放进报错。"""
    try:
        import material  # noqa: F401
        import mkdocs_static_i18n  # noqa: F401
    except ImportError as exc:
        missing(f"缺网站依赖（{exc.name}）：pip install -r requirements-docs.txt（或 make install-dev）")
    if not (REPO_ROOT / "website" / "node_modules" / "katex").is_dir():
        missing("缺 KaTeX/mermaid 的 npm 包：在仓库根目录运行 `npm ci --prefix website`（需要 Node.js 与 npm）")
    work = tmp_path_factory.mktemp("site")
    site, docs = work / "site", work / "docs"          # 生成的 docs_dir 也放临时目录，不碰仓库里的 build/
    docs.mkdir()
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(site)],
                          cwd=REPO_ROOT, capture_output=True, text=True, encoding="utf-8",
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1", "SITE_DOCS_DIR": str(docs)})
    assert proc.returncode == 0, f"mkdocs build --strict 失败：\n{proc.stdout}\n{proc.stderr}"
    return site


# ---------------------------------------------------------------------------
# 不需要浏览器的检查
# ---------------------------------------------------------------------------

def test_every_module_has_its_pages_in_both_languages(built_site):
    assert MODULES, "仓库里没有找到任何模块"
    for module in MODULES:
        rel = module.relative_to(REPO_ROOT).as_posix()
        pages = [""] + [name for name in ("teaching", "code_guide", "quiz") if (module / f"{name}.md").is_file()]
        if list(module.glob("experiments/results/reference/*.json")):
            pages.append("results")
        for prefix in ("", "en/"):
            for page in pages:
                html = built_site / prefix / rel / page / "index.html"
                assert html.is_file(), f"{rel} 缺少页面 {prefix}{page or 'README'}"


def test_translated_pages_are_english_on_the_english_site(built_site):
    """有 X.en.md 的模块页面，英文站上是英文版，不是"暂无英文版"的回退页。"""
    checked = 0
    for module in MODULES:
        rel = module.relative_to(REPO_ROOT).as_posix()
        for name in ("README", "teaching", "code_guide", "quiz"):
            if not (module / f"{name}.en.md").is_file():
                continue
            page = "" if name == "README" else name
            html = (built_site / "en" / rel / page / "index.html").read_text(encoding="utf-8")
            assert "English version not available" not in html, f"{rel}/{name}.en.md 存在，英文站却显示回退页"
            checked += 1
    assert checked, "没有任何模块有英文版"


def test_quiz_pages_match_quiz_files_and_the_parser(built_site):
    from modules.common.quiz import parse_quiz

    quiz_pages = [p for p in built_site.rglob("index.html")
                  if not p.relative_to(built_site).parts[0] == "en" and 'class="quiz" data-quiz-id=' in
                  p.read_text(encoding="utf-8")]
    assert len(quiz_pages) == len(QUIZZES)
    for quiz in QUIZZES:
        html = (built_site / quiz.parent.relative_to(REPO_ROOT) / "quiz" / "index.html").read_text(encoding="utf-8")
        questions = parse_quiz(quiz)
        assert html.count('class="quiz-question"') == len(questions), quiz
        assert html.count("<details class=\"quiz-answer\"") == len(questions), "没有 JS 时答案应是 <details>"


def test_module_results_pages_show_reference_numbers_and_plots(built_site):
    import json
    from html import escape

    reference = next(m for m in MODULES if list(m.glob("experiments/results/reference/*.json")))
    html = (built_site / reference.relative_to(REPO_ROOT) / "results" / "index.html").read_text(encoding="utf-8")
    records = [json.loads(p.read_text(encoding="utf-8"))
               for p in sorted(reference.glob("experiments/results/reference/*.json"))]
    conclusions = [c for r in records for c in r.get("conclusions", [])]
    statuses = [c.get("status") or ("holds" if c["holds"] else "fails") for c in conclusions]
    for status, css in [("holds", "holds"), ("not_established", "unsettled"), ("fails", "fails")]:
        assert html.count(f'class="conclusion-{css}"') == statuses.count(status), status
    for record in records:
        for table in record.get("metrics", {}).get("tables", {}).values():
            for header in table["headers"]:
                assert escape(str(header), quote=False) in html, header
    for png in sorted(reference.glob("experiments/results/reference/*.png")):
        assert (built_site / reference.relative_to(REPO_ROOT) / "experiments/results/reference" / png.name).is_file()
        assert png.name in html


def test_home_page_module_grid_is_generated_from_the_repository(built_site):
    html = (built_site / "index.html").read_text(encoding="utf-8")
    grid = html[html.index('class="grid cards module-grid"'):]
    for module in MODULES:
        assert f'href="{module.relative_to(REPO_ROOT).as_posix()}/"' in grid, module


def external_resources(html: str) -> list[str]:
    """会被浏览器自动加载、却来自别的主机的标签：脚本、图片、框架，以及样式表/预加载/图标类的 <link>。"""
    found = []
    for m in re.finditer(r"<(script|img|iframe|source|link)\b[^>]*>", html, re.I):
        tag, name = m.group(0), m.group(1).lower()
        url = re.search(r"\b(?:src|href)\s*=\s*[\"']([^\"']*)", tag)
        if not url or not re.match(r"(?:https?:)?//", url.group(1)):
            continue
        rel = re.search(r"\brel\s*=\s*[\"']([^\"']*)", tag)
        if name != "link" or (rel and set(rel.group(1).lower().split()) &
                              {"stylesheet", "preload", "preconnect", "modulepreload", "icon"}):
            found.append(tag)
    return found


def test_external_resource_check_catches_cdn_tags():
    assert external_resources('<script src="https://unpkg.com/mermaid.min.js"></script>')
    assert external_resources('<link href="https://fonts.googleapis.com/css" rel="stylesheet">')
    assert external_resources('<link rel="preconnect" href="https://fonts.gstatic.com" crossorigin>')
    assert not external_resources('<a href="https://github.com">x</a><link rel="alternate" href="https://x/en/">')
    assert not external_resources('<script src="../assets/vendor/katex/katex.min.js"></script>')


def test_no_page_loads_anything_from_another_host(built_site):
    for html in built_site.rglob("*.html"):
        found = external_resources(html.read_text(encoding="utf-8"))
        assert not found, f"{html} 从别的主机加载资源：{found}"
    for css in built_site.rglob("*.css"):
        assert not re.search(r"url\(['\"]?(?:https?:)?//", css.read_text(encoding="utf-8")), css


# ---------------------------------------------------------------------------
# 链接改写：非页面文件指向 GitHub，缺失的 Markdown 仍让严格构建失败
# ---------------------------------------------------------------------------

def test_link_rewriting_maps_repository_paths(build_docs):
    ctx = build_docs.LinkContext(root=REPO_ROOT, pages=set(build_docs.source_pages()), source_url="https://x.test/r")
    src = "modules/01-foundation/01-normalization/README.md"
    assert build_docs.rewrite_target("teaching.md#实验", src, ctx) == "teaching.md#实验"
    assert build_docs.rewrite_target("../../../README.md", src, ctx) == "../../../index.md"
    assert build_docs.rewrite_target("../02-position-encoding/", src, ctx) == "../02-position-encoding/index.md"
    assert build_docs.rewrite_target("experiments/exp1_gradient_vanishing.py", src, ctx) == \
        f"https://x.test/r/blob/main/{src.rsplit('/', 1)[0]}/experiments/exp1_gradient_vanishing.py"
    assert build_docs.rewrite_target("../../../model/", src, ctx) == "https://x.test/r/tree/main/model"
    assert build_docs.rewrite_target("no_such_page.md", src, ctx) == "no_such_page.md"
    text = "[a](teaching.md) `[b](x.py)`\n```\n[c](../../../README.md)\n```"
    assert build_docs.rewrite_links(text, src, ctx) == text   # 代码里的 [x](y) 不是链接


def test_english_counterparts_become_the_english_pages(tmp_path, build_docs):
    """X.en.md 旁边有中文 X.md 时，英文站用它（不再是"暂无英文版"的回退页）；英文自测题的界面是英文。"""
    if not (REPO_ROOT / "website" / "node_modules" / "katex").is_dir():
        missing("缺 KaTeX/mermaid 的 npm 包：在仓库根目录运行 `npm ci --prefix website`（需要 Node.js 与 npm）")
    quiz_zh = (REPO_ROOT / "modules/01-foundation/01-normalization/quiz.md").read_text(encoding="utf-8")
    quiz_en = (quiz_zh.replace("<summary>答案与解析</summary>", "<summary>Answer and explanation</summary>")
               .replace("\n答案：", "\nAnswer: ").replace("\n解析：", "\nExplanation: "))
    module = tmp_path / "modules" / "01-tier" / "01-demo"
    module.mkdir(parents=True)
    files = {"README.md": "# 演示\n\n[讲义](teaching.md)\n", "teaching.md": "# 讲义\n\n中文正文\n",
             "teaching.en.md": "# Lesson\n\nEnglish text; see the [quiz](quiz.en.md).\n",
             "quiz.md": quiz_zh, "quiz.en.md": quiz_en}
    for name, text in files.items():
        (module / name).write_text(text, encoding="utf-8")
    docs = tmp_path / "docs"
    build_docs.generate(docs, root=tmp_path)
    site = docs / "modules" / "01-tier" / "01-demo"
    assert sorted(p.name for p in site.glob("*.md")) == ["index.en.md", "index.md", "quiz.en.md", "quiz.md",
                                                          "teaching.en.md", "teaching.md"]
    teaching = (site / "teaching.en.md").read_text(encoding="utf-8")
    assert "English text" in teaching and "English version not available" not in teaching
    assert "[quiz](quiz.md)" in teaching          # 链到中文页的位置，i18n 插件在英文站换成英文版
    assert "English version not available" in (site / "index.en.md").read_text(encoding="utf-8")  # 没译的页回退
    quiz = (site / "quiz.en.md").read_text(encoding="utf-8")
    assert quiz.count('class="quiz-question"') == len(build_docs.parse_quiz(module / "quiz.md"))
    assert "<summary>Answer and explanation</summary>" in quiz and "**Explanation**: " in quiz and "答案与解析" not in quiz
    assert "<summary>答案与解析</summary>" in (site / "quiz.md").read_text(encoding="utf-8")


def test_strict_build_fails_on_a_link_to_a_missing_page(tmp_path, built_site):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "index.md").write_text("# 首页\n\n[不存在的讲义](missing.md)\n", encoding="utf-8")
    (tmp_path / "mkdocs.yml").write_text("site_name: t\ndocs_dir: docs\n", encoding="utf-8")
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "out")],
                          cwd=tmp_path, capture_output=True, text=True, encoding="utf-8")
    assert proc.returncode != 0 and "missing.md" in proc.stdout + proc.stderr


# ---------------------------------------------------------------------------
# 浏览器
# ---------------------------------------------------------------------------

class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format, *args):
        pass


def serve_site(root: Path):
    """在 127.0.0.1 的随机端口上提供静态站点（正确的 Content-Type，目录返回 index.html）。"""
    return serve_with_handler(functools.partial(_QuietHandler, directory=str(root)))


@contextlib.contextmanager
def launch_chromium():
    """系统里的 Chromium（Playwright 驱动，不下载浏览器）；缺 Chromium 或 Playwright 时 CI 里失败、其他地方跳过。"""
    if not CHROMIUM.exists():
        missing(f"没有 {CHROMIUM}：sudo apt-get install chromium chromium-driver")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing("缺 Playwright for Python：pip install -r requirements-dev.txt（不要运行 playwright install）")
    SCREENSHOTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(scope="module")
def browser(built_site):
    with serve_site(built_site) as base, launch_chromium() as chromium:
        yield chromium, base


class Visit:
    """一个新页面：记下它发出的每个请求和控制台错误。"""

    def __init__(self, browser_and_base, javascript=True):
        chromium, self.base = browser_and_base
        self.context = chromium.new_context(viewport={"width": 1280, "height": 900}, locale="zh-CN",
                                            java_script_enabled=javascript)
        self.page = self.context.new_page()
        self.requests: list[str] = []
        self.errors: list[str] = []
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("response", lambda r: r.status >= 400 and self.errors.append(f"HTTP {r.status}: {r.url}"))

    def goto(self, path: str):
        self.page.goto(self.base + path, wait_until="networkidle")
        return self.page

    def check_clean(self):
        outside = [u for u in self.requests if not u.startswith(self.base + "/") and not u.startswith("data:")]
        assert not outside, f"请求离开了 127.0.0.1：{outside}"
        assert not self.errors, f"控制台有错误：{self.errors}"

    def shot(self, name: str, full_page=False):
        self.page.screenshot(path=str(SCREENSHOTS / name), full_page=full_page)


@pytest.fixture
def visit(browser):
    v = Visit(browser)
    yield v
    v.context.close()


def test_home_renders_with_the_module_grid(visit):
    page = visit.goto("/")
    cards = page.locator(".module-grid > ul > li")
    assert cards.count() == len(MODULES)
    assert page.locator(".module-grid").is_visible()
    page.locator(".module-grid").scroll_into_view_if_needed()
    visit.shot("home.png")
    visit.check_clean()


def test_lesson_math_is_rendered_by_katex(visit):
    lesson = next(m for m in MODULES if "$$" in (m / "teaching.md").read_text(encoding="utf-8"))
    page = visit.goto(f"/{lesson.relative_to(REPO_ROOT).as_posix()}/teaching/")
    page.wait_for_selector(".katex-display .katex")
    math = page.locator(".arithmatex")
    assert math.count() >= 1 and page.locator(".arithmatex .katex").count() == math.count(), "有公式没被 KaTeX 渲染"
    text = page.locator("article").inner_text()
    assert "$$" not in text and "\\frac" not in text, "页面上还有没渲染的 LaTeX"
    page.locator(".katex-display").first.scroll_into_view_if_needed()
    visit.shot("lesson_math.png")
    visit.check_clean()


def mermaid_svgs(page) -> int:
    """Material 把 .mermaid 渲染进一个 closed shadow root，页面脚本看不到；用 CDP（pierce）数里面的 <svg>。"""
    cdp = page.context.new_cdp_session(page)
    try:
        root = cdp.send("DOM.getDocument", {"depth": -1, "pierce": True})["root"]
    finally:
        cdp.detach()

    def walk(node, inside_mermaid=False):
        attrs = node.get("attributes", [])
        classes = dict(zip(attrs[::2], attrs[1::2])).get("class", "").split()
        inside_mermaid = inside_mermaid or "mermaid" in classes
        found = int(inside_mermaid and node.get("nodeName", "").lower() == "svg")
        for child in node.get("children", []) + node.get("shadowRoots", []) + \
                ([node["contentDocument"]] if "contentDocument" in node else []):
            found += walk(child, inside_mermaid)
        return found

    return walk(root)


def test_mermaid_diagram_renders_as_svg(visit):
    lesson = next(m for m in MODULES if "```mermaid" in (m / "teaching.md").read_text(encoding="utf-8"))
    page = visit.goto(f"/{lesson.relative_to(REPO_ROOT).as_posix()}/teaching/")
    diagram = page.locator("div.mermaid").first            # Material 把 <pre class="mermaid"> 换成 div
    diagram.wait_for(timeout=20000)
    for _ in range(100):
        if mermaid_svgs(page):
            break
        page.wait_for_timeout(200)
    assert mermaid_svgs(page) >= 1, "mermaid 图没有渲染成 SVG"
    assert diagram.bounding_box()["height"] > 50
    diagram.scroll_into_view_if_needed()
    visit.shot("mermaid.png")
    visit.check_clean()


def test_quiz_marks_wrong_answers_and_scores_right_ones(visit):
    from modules.common.quiz import parse_quiz

    quiz = next(q for q in QUIZZES if sum(x.kind == "single" for x in parse_quiz(q)) >= 2)
    singles = [x for x in parse_quiz(quiz) if x.kind == "single"]
    page = visit.goto(f"/{quiz.parent.relative_to(REPO_ROOT).as_posix()}/quiz/")
    page.evaluate("localStorage.clear()")
    page.reload(wait_until="networkidle")
    score = page.locator(".quiz-score .quiz-score-text").first
    assert score.inner_text().startswith("得分：0 / ")

    first, second = singles[0], singles[1]
    q = page.locator(f"#q{first.number}")
    wrong = next(letter for letter in first.options if letter not in first.answer_letters)
    q.locator(f'.quiz-option[data-option="{wrong}"]').click()
    assert "wrong" in q.locator(f'.quiz-option[data-option="{wrong}"]').get_attribute("class")
    assert q.locator("details.quiz-answer").get_attribute("open") is not None
    assert q.locator("details.quiz-answer p").last.is_visible()     # 解析展开可见
    before = score.inner_text()
    q.locator(f'.quiz-option[data-option="{first.answer_letters[0]}"]').click()
    assert score.inner_text() != before and "已完成 1 题" in score.inner_text()
    assert "quiz-incorrect" in q.get_attribute("class")        # 第一次选错，不计分

    q2 = page.locator(f"#q{second.number}")
    q2.locator(f'.quiz-option[data-option="{second.answer_letters[0]}"]').click()
    assert score.inner_text().startswith("得分：1 / ") and "quiz-correct" in q2.get_attribute("class")
    q.scroll_into_view_if_needed()
    visit.shot("quiz.png")

    open_ended = next((x for x in parse_quiz(quiz) if x.kind in ("predict", "short")), None)
    if open_ended is not None:                                  # 预测/简答：先看答案，再自评
        q3 = page.locator(f"#q{open_ended.number}")
        assert q3.locator("details.quiz-answer").get_attribute("open") is None
        q3.locator(".quiz-show").click()
        assert q3.locator("details.quiz-answer").get_attribute("open") is not None
        q3.locator(".quiz-self-right").click()
        assert score.inner_text().startswith("得分：2 / ") and "已完成 3 题" in score.inner_text()
    expected = "得分：2 / " if open_ended is not None else "得分：1 / "

    page.reload(wait_until="networkidle")                      # 进度存在 localStorage 里
    final = page.locator(".quiz-score").last
    assert final.locator(".quiz-score-text").inner_text().startswith(expected)
    final.scroll_into_view_if_needed()
    visit.shot("quiz_score.png")
    visit.check_clean()


def test_chinese_search_finds_the_normalization_lesson(visit):
    page = visit.goto("/")
    page.locator("input.md-search__input").click()
    # 中文字符由 Playwright 以"输入法插入"送达，没有按键事件；Material 在 keyup 时才读输入框，补一个 End
    page.keyboard.type("归一化")
    page.keyboard.press("End")
    results = page.locator(".md-search-result__item a")
    results.first.wait_for(timeout=20000)
    hrefs = [results.nth(i).get_attribute("href") for i in range(results.count())]
    assert any("/modules/01-foundation/01-normalization/" in h for h in hrefs), hrefs
    visit.shot("search.png")
    visit.check_clean()


def test_language_switch_reaches_an_english_page(visit):
    page = visit.goto("/")
    page.locator(".md-header__option .md-select").first.hover()
    page.locator("a.md-select__link[hreflang='en']").first.click()
    page.wait_for_load_state("networkidle")
    assert page.url.rstrip("/").endswith("/en")
    assert page.locator("html").get_attribute("lang") == "en"
    assert page.locator("h1").first.inner_text().startswith("MiniMind Notes")
    assert page.locator(".module-grid").is_visible()
    visit.shot("english_home.png")
    visit.check_clean()


def test_language_switch_keeps_the_current_page(visit):
    """lang.js：从中文的某一页切到英文，落在同一页的英文版；再切回来，回到原来那页。"""
    path = "/modules/01-foundation/01-normalization/quiz/"
    page = visit.goto(path)
    for lang, expected in (("en", "/en" + path), ("zh", path)):
        page.locator(".md-header__option .md-select").first.hover()
        page.locator(f"a.md-select__link[hreflang='{lang}']").first.click()
        page.wait_for_load_state("networkidle")
        assert urlparse(page.url).path == expected
        assert page.locator("html").get_attribute("lang") == lang
    visit.check_clean()


def test_results_page_shows_reference_plots_and_the_english_fallback_has_a_note(visit):
    module = next(m for m in MODULES if list(m.glob("experiments/results/reference/*.png")))
    rel = module.relative_to(REPO_ROOT).as_posix()
    page = visit.goto(f"/{rel}/results/")
    images = page.locator("article img")
    assert images.count() == len(list(module.glob("experiments/results/reference/*.png")))
    assert page.evaluate("[...document.querySelectorAll('article img')].every(i => i.complete && i.naturalWidth > 0)")
    assert page.locator(".conclusion-holds, .conclusion-unsettled, .conclusion-fails").count() >= 1
    visit.shot("results.png")

    page = visit.goto(f"/en/{rel}/results/")                   # 没有英文版的页面（参考结果页总是中文）：中文内容 + 提示
    assert page.locator("html").get_attribute("lang") == "en"
    assert page.locator(".admonition.info").first.inner_text().startswith("English version not available")
    visit.shot("english_fallback.png")
    visit.check_clean()


def test_english_quiz_page_is_english_and_scores_an_answer(visit):
    """有 quiz.en.md 的模块：英文站的自测页是英文题目、英文界面，点对一题得 1 分。"""
    from modules.common.quiz import parse_quiz

    english = sorted(REPO_ROOT.glob("modules/*/*/quiz.en.md"))
    assert english, "还没有任何 quiz.en.md（tests/test_translations.py 的 TRANSLATED 里至少有一份）"
    quiz = english[0]
    single = next(x for x in parse_quiz(quiz) if x.kind == "single")
    page = visit.goto(f"/en/{quiz.parent.relative_to(REPO_ROOT).as_posix()}/quiz/")
    page.evaluate("localStorage.clear()")
    page.reload(wait_until="networkidle")
    assert page.locator("html").get_attribute("lang") == "en"
    assert page.locator(".admonition.info").count() == 0        # 不是"暂无英文版"的回退页
    score = page.locator(".quiz-score .quiz-score-text").first
    assert score.inner_text().startswith("Score: 0 / ")
    q = page.locator(f"#q{single.number}")
    opening = " ".join(word.strip("`") for word in single.prompt.split()[:3])
    assert opening in q.locator("h3").inner_text() and "single choice" in q.locator("h3").inner_text()
    q.locator(f'.quiz-option[data-option="{single.answer_letters[0]}"]').click()
    assert score.inner_text().startswith("Score: 1 / ") and "1 answered" in score.inner_text()
    assert q.locator("details.quiz-answer summary").inner_text() == "Answer and explanation"
    visit.shot("english_quiz.png")
    visit.check_clean()


def test_quiz_without_javascript_is_plain_details(browser):
    from modules.common.quiz import parse_quiz

    visit = Visit(browser, javascript=False)
    try:
        quiz = QUIZZES[0]
        page = visit.goto(f"/{quiz.parent.relative_to(REPO_ROOT).as_posix()}/quiz/")
        answers = page.locator("details.quiz-answer")
        assert answers.count() == len(parse_quiz(quiz))
        assert page.locator(".quiz-interactive").count() == 0 and page.locator(".quiz-controls").count() == 0
        first = answers.first
        assert first.get_attribute("open") is None
        first.locator("summary").click()                            # 点开就是答案与解析
        assert first.get_attribute("open") is not None and first.locator("p").last.is_visible()
        visit.shot("quiz_no_js.png")
        visit.check_clean()
    finally:
        visit.context.close()
