"""评测你的模型：scripts/eval_model.py 的可导入部分，每个文件一个概念。

    loglik.py           批量算 log p(续写 | 上下文)：下面几种评测共用的唯一打分函数
    items.py            读评测文件（jsonl / txt），坏行报"文件:行号"
    perplexity.py       留出文本上的困惑度与 bits per byte（bpb）
    multiple_choice.py  选择题（C-Eval / CMMLU / ARC 格式）的三种打分：sum、norm、letter，准确率 ± 标准误
    lm_eval_adapter.py  把我们的模型包装成 lm-evaluation-harness 的 LM，跑它的任务（需要 requirements-eval.txt）
    report.py           结果表格

生成式精确匹配（pass@1 / pass@k / 多数投票）直接用 RL 的评测器 trainer/rl/evaluate.py，不在这里另写一份。
"""
