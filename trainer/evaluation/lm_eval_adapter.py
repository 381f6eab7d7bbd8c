"""把我们的模型接到 lm-evaluation-harness（lm-eval，版本见 requirements-eval.txt）上，跑它的任务。

lm-eval 把每道题拆成请求交给一个 LM 对象：loglikelihood（选择题）、loglikelihood_rolling（困惑度）、
generate_until（生成题）。MiniMindLM 实现这三个方法，打分用的是与 scripts/eval_model.py 同一个函数
（loglik.score_requests + multiple_choice.encode_request），所以同一批题目上两边的准确率应逐题一致——测试检查这一点。

    from trainer.evaluation.lm_eval_adapter import run_lm_eval
    results = run_lm_eval(model, tokenizer, ["minimind_mc_zh"], include_path="dataset/samples/lm_eval_tasks")

它也以 "minimind" 的名字注册在 lm-eval 里：import 本模块后 simple_evaluate(model="minimind",
model_args="weights=out/pretrain_512.pth") 会用 trainer/model_loading.py 加载模型（参数名同 scripts/eval_model.py）。
另一条路是 scripts/convert_model.py 转成 transformers 文件夹后用 lm-eval 自带的 --model hf（命令见 README）。
"""
import argparse
import os
from typing import List, Optional, Sequence

import lm_eval.models  # noqa: F401  先载入 lm-eval 自带的模型：注册表非空时它不再自动载入，先注册我们的会让 "hf" 找不到
import torch
from lm_eval import simple_evaluate
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from lm_eval.tasks import TaskManager

from trainer.evaluation.loglik import score_requests
from trainer.evaluation.multiple_choice import encode_request
from trainer.evaluation.perplexity import rolling_requests


@register_model("minimind")
class MiniMindLM(LM):
    def __init__(self, model=None, tokenizer=None, batch_size: int = 16, max_len: int = 512, **load_args):
        super().__init__()
        if model is None:  # 经 lm-eval 的 model_args 字符串创建：按 scripts/eval_model.py 的参数加载
            model, tokenizer = load_from_args(**load_args)
        self.model, self.tokenizer = model.eval(), tokenizer
        self.batch_size, self.max_len = int(batch_size), int(max_len)

    def loglikelihood(self, requests) -> List[tuple]:
        pairs = [encode_request(self.tokenizer, context, continuation) for context, continuation in
                 (r.args for r in requests)]
        return score_requests(self.model, pairs, self.batch_size, self.max_len, self.tokenizer.pad_token_id)

    def loglikelihood_rolling(self, requests) -> List[float]:
        """整段文本的对数概率：与 perplexity.evaluate_text 相同的滑动窗口（stride = max_len // 2）。"""
        out = []
        for (text,) in (r.args for r in requests):
            pieces = rolling_requests([self.tokenizer.bos_token_id] + self.tokenizer.encode(text),
                                      self.max_len, self.max_len // 2)
            scores = score_requests(self.model, pieces, self.batch_size, self.max_len, self.tokenizer.pad_token_id)
            out.append(sum(s for s, _ in scores))
        return out

    @torch.no_grad()
    def generate_until(self, requests) -> List[str]:
        """逐题贪心生成，遇到 until 里的任一字符串就截断。"""
        device = next(self.model.parameters()).device
        out = []
        for context, gen_kwargs in (r.args for r in requests):
            until = gen_kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            max_new = int(gen_kwargs.get("max_gen_toks", 64))
            ids = ([self.tokenizer.bos_token_id] + self.tokenizer.encode(context))[-(self.max_len - max_new):]
            full = self.model.generate(torch.tensor([ids], device=device), max_new_tokens=max_new, do_sample=False,
                                       eos_token_id=self.tokenizer.eos_token_id)
            text = self.tokenizer.decode(full[0, len(ids):].tolist())
            for stop in until:
                text = text.split(stop)[0]
            out.append(text)
        return out


def load_from_args(**load_args):
    """lm-eval 的 model_args（如 weights=out/pretrain_512.pth,family=minimind3,quick=True）→ (model, tokenizer)。
    按 scripts/eval_model.py 的模型参数解析（类型转换与校验同命令行）；lm-eval 额外传来的 max_batch_size 忽略。"""
    from trainer.model_loading import add_model_args, load_chat_model, resolve_model_args
    argv = []
    for key, value in load_args.items():
        if value is None or value is False or key == "max_batch_size":
            continue
        argv += [f"--{key}"] if value is True else [f"--{key}={value}"]
    args, unknown = add_model_args(argparse.ArgumentParser()).parse_known_args(argv)
    if unknown:
        raise ValueError(f"不认识的 model_args {unknown}；可用的与 scripts/eval_model.py 的模型参数同名")
    return load_chat_model(resolve_model_args(args))


def run_lm_eval(model, tokenizer, tasks: Sequence[str], include_path: Optional[str] = None, limit=None,
                batch_size: int = 16, max_len: int = 512, num_fewshot: Optional[int] = None,
                data_root: Optional[str] = None) -> dict:
    """用 lm-eval 跑 tasks，返回它的 results 字典（任务名 → {"acc,none": …, "acc_stderr,none": …}）。
    include_path 是放本地任务 YAML 的目录（如 dataset/samples/lm_eval_tasks）；本地任务的数据是仓库里的 jsonl，
    设 HF_DATASETS_OFFLINE=1 时完全不联网。YAML 里的 data_files 是相对路径：给了 data_root 时在那个目录里运行。"""
    manager = None
    if include_path:  # 只跑本地任务时不索引 lm-eval 自带的上千个任务（省下半分钟）
        manager = TaskManager(include_path=include_path, include_defaults=False)
        if not set(tasks) <= set(manager.all_tasks):
            manager = None
    manager = manager or TaskManager(include_path=include_path)
    lm = MiniMindLM(model, tokenizer, batch_size=batch_size, max_len=max_len)
    # 标准误：acc 这类取平均的指标，lm-eval 用闭式公式 std(ddof=1)/√n；bootstrap_iters 只影响其他聚合方式
    cwd = os.getcwd()
    try:
        os.chdir(data_root or cwd)
        out = simple_evaluate(model=lm, tasks=list(tasks), task_manager=manager, limit=limit, num_fewshot=num_fewshot,
                              bootstrap_iters=1000, log_samples=False)
    finally:
        os.chdir(cwd)
    return out["results"]
