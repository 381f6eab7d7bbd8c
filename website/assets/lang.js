// 语言切换留在同一页：中文站在 /，英文站在 /en/，每一页两种语言都有（没有英文原文的页面显示中文加提示）。
// 切换链接指向各语言的首页；这里把"当前页相对本语言首页的路径"接到目标语言首页后面。
// Material 自带的做法要查 sitemap.xml，而站点 URL 与实际访问地址不一致（本地预览、换域名）时会退回首页。
(function () {
  document.addEventListener("click", function (ev) {
    if (ev.metaKey || ev.ctrlKey || ev.shiftKey) return;   // 新标签页打开：交给浏览器
    var target = ev.target.closest && ev.target.closest("a.md-select__link[hreflang]");
    if (!target) return;
    var lang = document.documentElement.lang;
    var current = document.querySelector("a.md-select__link[hreflang='" + lang + "']");
    if (!current || target === current || location.href.indexOf(current.href) !== 0) return;
    var pagePath = location.pathname.slice(new URL(current.href).pathname.length);   // 如 modules/.../quiz/
    ev.preventDefault();
    ev.stopPropagation();   // 捕获阶段就拦下，Material 挂在 body 上的处理器不再跳回首页
    location.href = new URL(pagePath, target.href).href;
  }, true);
})();
