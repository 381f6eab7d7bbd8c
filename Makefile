# MiniMind Notes —— 只需 python3 (3.10+) 和 make。
# make quickstart：建 .venv、装依赖、跑 30 分钟导览（quick 模式）
# make test：装开发依赖并跑全部测试

PYTHON ?= python3
VENV   := .venv
VPY    := $(VENV)/bin/python
# 用 stamp 文件记录"依赖已按当前 requirements 安装"，requirements 变了就重装
STAMP_RUN := $(VENV)/.stamp-requirements
STAMP_DEV := $(VENV)/.stamp-requirements-dev

TOUR := \
	modules/01-foundation/01-normalization/experiments/exp1_gradient_vanishing.py \
	modules/01-foundation/02-position-encoding/experiments/exp1_rope_basics.py \
	modules/01-foundation/03-attention/experiments/exp1_attention_basics.py \
	modules/02-architecture/01-residual-connection/experiments/exp1_with_vs_without.py

.PHONY: help venv install install-dev quickstart tour test test-fast data bench clean

help:  ## 列出所有目标
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | sort

$(VPY):
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "需要 Python 3.10+，当前是 " + sys.version.split()[0])'
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip

$(STAMP_RUN): requirements.txt | $(VPY)
	$(VPY) -m pip install -q -r requirements.txt
	@touch $@

$(STAMP_DEV): requirements-dev.txt requirements.txt | $(VPY)
	$(VPY) -m pip install -q -r requirements-dev.txt
	@touch $(STAMP_RUN) $@

venv: $(VPY)  ## 只创建 .venv

install: $(STAMP_RUN)  ## 安装运行依赖

install-dev: $(STAMP_DEV)  ## 安装运行 + 测试依赖

tour: $(STAMP_RUN)  ## 30 分钟导览：四个入门实验（quick 模式）
	@for exp in $(TOUR); do \
		echo "==> $$exp --quick"; \
		$(VPY) $$exp --quick || exit 1; \
	done

quickstart: install tour  ## 一步到位：建环境 + 跑导览

test: $(STAMP_DEV)  ## 全部测试（实验测试并行跑）
	$(VPY) -m pytest tests -n 2 --dist loadgroup --durations=20

test-fast: $(STAMP_DEV)  ## 除实验外的全部测试（< 2 分钟）
	$(VPY) -m pytest tests -m "not experiment"

data: $(STAMP_RUN)  ## 下载全部实验数据到 data/（或 $$MINIMIND_DATA_DIR）
	$(VPY) modules/common/datasets.py --download-all

bench: $(STAMP_RUN)  ## 模型速度基准（训练/生成 tokens/s）
	$(VPY) -m model.bench

clean:  ## 删除实验输出与缓存（不删 .venv 和 data/）
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
	find modules -path '*/experiments/results/*' ! -name .gitkeep -type f -delete
