"""MkDocs hook：每次构建前从仓库 Markdown 重新生成 docs_dir，并把导航设成生成结果。

优先级设高，保证在 i18n 等插件读取配置之前完成（它们要看到生成好的文件和导航）。
"""
import shutil
import sys
from copy import deepcopy
from pathlib import Path

from mkdocs.plugins import event_priority

sys.path.insert(0, str(Path(__file__).resolve().parent))
import build_docs  # noqa: E402


@event_priority(100)
def on_config(config):
    extra = config.extra
    config.nav = build_docs.generate(
        Path(config.docs_dir),
        source_url=extra.get("source_url") or build_docs.DEFAULT_SOURCE_URL,
        branch=extra.get("source_branch") or "main",
    )
    return config


def on_post_build(config):
    """i18n 只在根目录写 sitemap.xml，而 Material 的语言切换会去取 en/sitemap.xml；缺了浏览器控制台报 404。
    把根目录那份（已含各语言页面的对应关系）复制到每个非默认语言的目录。"""
    site = Path(config.site_dir)
    i18n = config.plugins.get("i18n")
    locales = [lang.locale for lang in i18n.config.languages if not lang.default] if i18n else []
    for locale in locales:
        if not (site / locale).is_dir():
            continue                     # 这种语言还没构建（i18n 在默认语言之后逐个构建）
        for name in ("sitemap.xml", "sitemap.xml.gz"):
            if (site / name).is_file():
                shutil.copyfile(site / name, site / locale / name)


@event_priority(-200)
def on_page_context(context, page, config, nav):
    """i18n 把语言切换链接改成"本页的另一语言版本"，而 Material 会按每条 <link rel="alternate">
    去取 <链接>/sitemap.xml——页面目录里没有它，浏览器控制台报 404。改回各语言首页（i18n 算好的初始值）；
    切换时留在同一页由 website/assets/lang.js 负责。"""
    i18n = config.plugins.get("i18n")
    if i18n is not None and getattr(i18n, "extra_alternate", None):
        # i18n 写的是属性（config.extra.alternate），模板也按属性读
        config.extra.alternate = deepcopy(i18n.extra_alternate)
    return context
