# MiniMind Notes —— 只需 python3 (3.10+) 和 make。
# make quickstart：建 .venv、装依赖、跑 30 分钟导览（quick 模式）
# make test：装开发依赖（含 requirements-serve.txt：API 服务、网页对话、格式转换）并跑全部测试
# make site / make serve：构建课程网站到 site/ / 在本机预览（需要 Node.js 的 npm 取 KaTeX、mermaid）

PYTHON ?= python3
VENV   := .venv
VPY    := $(VENV)/bin/python
# 用 stamp 文件记录"依赖已按当前 requirements 安装"，requirements 变了就重装
STAMP_RUN := $(VENV)/.stamp-requirements
STAMP_DEV := $(VENV)/.stamp-requirements-dev
STAMP_DOCS := $(VENV)/.stamp-requirements-docs
# 网站的前端资源（KaTeX、mermaid）由 npm ci 按 website/package-lock.json 装到 website/node_modules/
SITE_ASSETS := website/node_modules/.package-lock.json

TOUR := \
	modules/01-foundation/01-normalization/experiments/exp1_gradient_vanishing.py \
	modules/01-foundation/02-position-encoding/experiments/exp1_rope_basics.py \
	modules/01-foundation/03-attention/experiments/exp1_attention_basics.py \
	modules/02-architecture/01-residual-connection/experiments/exp1_with_vs_without.py

.PHONY: help venv install install-dev quickstart tour test test-fast data bench clean site serve site-assets-if-npm

help:  ## 列出所有目标
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | sort

$(VPY):
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "需要 Python 3.10+，当前是 " + sys.version.split()[0])'
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip

$(STAMP_RUN): requirements.txt | $(VPY)
	$(VPY) -m pip install -q -r requirements.txt
	@touch $@

$(STAMP_DEV): requirements-dev.txt requirements.txt requirements-docs.txt requirements-serve.txt requirements-eval.txt | $(VPY)
	$(VPY) -m pip install -q -r requirements-dev.txt
	@touch $(STAMP_RUN) $(STAMP_DOCS) $@

$(STAMP_DOCS): requirements-docs.txt | $(VPY)
	$(VPY) -m pip install -q -r requirements-docs.txt
	@touch $@

$(SITE_ASSETS): website/package.json website/package-lock.json
	@command -v npm >/dev/null 2>&1 || { echo "需要 Node.js 和 npm 来取 KaTeX、mermaid（Debian/Ubuntu：sudo apt-get install npm）"; exit 1; }
	cd website && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

# 测试前装好网站资源；没有 npm 时只提示（网站测试在本机跳过、在 CI 里失败）
site-assets-if-npm:
	@if command -v npm >/dev/null 2>&1; then $(MAKE) --no-print-directory $(SITE_ASSETS); \
	else echo "没有 npm：tests/test_site.py 会跳过（CI 里会失败）"; fi

venv: $(VPY)  ## 只创建 .venv

install: $(STAMP_RUN)  ## 安装运行依赖

install-dev: $(STAMP_DEV)  ## 安装运行 + 测试依赖

tour: $(STAMP_RUN)  ## 30 分钟导览：四个入门实验（quick 模式）
	@for exp in $(TOUR); do \
		echo "==> $$exp --quick"; \
		$(VPY) $$exp --quick || exit 1; \
	done

quickstart: install tour  ## 一步到位：建环境 + 跑导览

test: $(STAMP_DEV) site-assets-if-npm  ## 全部测试（实验测试并行跑）
	$(VPY) -m pytest tests -n 2 --dist loadgroup --durations=20

test-fast: $(STAMP_DEV) site-assets-if-npm  ## 除实验外的全部测试（< 2 分钟）
	$(VPY) -m pytest tests -m "not experiment"

data: $(STAMP_RUN)  ## 下载全部实验数据到 data/（或 $$MINIMIND_DATA_DIR）
	$(VPY) modules/common/datasets.py --download-all

site: $(STAMP_DOCS) $(SITE_ASSETS)  ## 构建课程网站到 site/（mkdocs build --strict：坏链接让构建失败）
	@mkdir -p build/site-docs
	NO_MKDOCS_2_WARNING=1 $(VPY) -m mkdocs build --strict

serve: site  ## 构建后在 http://127.0.0.1:8000 预览网站（Ctrl+C 停止）
	$(VPY) -m http.server 8000 --bind 127.0.0.1 --directory site

bench: $(STAMP_RUN)  ## 模型速度基准（训练/生成 tokens/s）
	$(VPY) -m model.bench

clean:  ## 删除实验输出与缓存（不删 .venv 和 data/）
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
	find modules -path '*/experiments/results/*' ! -name .gitkeep -type f -delete
