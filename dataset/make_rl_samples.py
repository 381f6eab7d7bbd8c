"""生成 RL 与推理 SFT 的小样本（可验证任务：取最大、取最小、数字母；见 trainer/rl/tasks.py），结果是确定的。

    python dataset/make_rl_samples.py

写出四个文件（留出集的题目互不重复，也不出现在另外三个文件里）：
    samples/reason_sft.jsonl  推理 SFT：{"conversations": [user, assistant]}，回答是
                              "<think>\\n草稿\\n</think>\\n<answer>\\n答案\\n</answer>"（MiniMind 推理模型的格式）
    samples/task_sft.jsonl    任务 SFT：同样的对话格式，回答只有答案，其中一半是该题的典型错误（最大与最小弄反、
                              数多一个）——RL 脚本 --quick 的起点在它上面训练，学到对错两种答法的混合，RL 再用验证器纠正
    samples/rl_train.jsonl    RL 训练用的 prompt：{"conversations": [user], "answer": 参考答案, "task": 任务名}
    samples/rl_eval.jsonl     同上格式的留出集，评测准确率用
    samples/rm_pairs.jsonl    奖励模型的偏好对（DPO 格式 {"chosen": [...], "rejected": [...]}）：同一道题，chosen 是正确答案，
                              rejected 是它的典型错误；train_reward.py --quick 用它（每 5 对留 1 对作留出集）
prompt 的格式与 MiniMind 的 RL 数据（rlaif.jsonl：只有问题、没有最后一轮助手回答）相同，另加 answer/task 两个可选字段。
"""
import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainer.rl.tasks import TASK_NAMES, make_problem, typical_mistake  # noqa: E402

SAMPLES_DIR = Path(__file__).resolve().parent / "samples"
N_REASON, N_SFT, N_TRAIN, N_EVAL, N_PAIRS = 600, 1500, 1200, 300, 1200  # 三个任务各占三分之一
TEACHER_MISTAKES = 0.5  # task_sft 里一半的回答是该题的典型错误：一个"不可靠的老师"


def reasoning_reply(problem) -> str:
    return f"<think>\n{problem.scratchpad}\n</think>\n<answer>\n{problem.answer}\n</answer>"


def problems(rng: random.Random, n: int, exclude: set, distinct: bool):
    """n 道题（任务轮流出），都不在 exclude 里；distinct 时彼此也不重复（留出集用）。"""
    out = []
    for _ in range(100 * n):  # 上限：题目空间太小时报错而不是死循环
        if len(out) == n:
            return out
        problem = make_problem(TASK_NAMES[len(out) % len(TASK_NAMES)], rng)
        if problem.question not in exclude:
            out.append(problem)
            if distinct:
                exclude.add(problem.question)
    raise ValueError(f"凑不出 {n} 道满足条件的题：题目空间太小")


def teacher_answer(problem, rng: random.Random) -> str:
    return typical_mistake(problem) if rng.random() < TEACHER_MISTAKES else problem.answer


def prompt_row(problem) -> dict:
    return {"conversations": [{"role": "user", "content": problem.question}], "answer": problem.answer,
            "task": problem.task}


def sft_row(problem, reply: str) -> dict:
    return {"conversations": [{"role": "user", "content": problem.question}, {"role": "assistant", "content": reply}]}


def preference_pairs(rng: random.Random, n: int, exclude: set) -> list:
    """n 个偏好对：chosen 答对，rejected 是同一题的典型错误（跳过典型错误恰好也对的题，如四个数全相同）。"""
    pairs = []
    while len(pairs) < n:
        for problem in problems(rng, n - len(pairs), exclude, distinct=False):
            wrong = typical_mistake(problem)
            if wrong != problem.answer:
                user = {"role": "user", "content": problem.question}
                pairs.append({"chosen": [user, {"role": "assistant", "content": problem.answer}],
                              "rejected": [user, {"role": "assistant", "content": wrong}]})
    return pairs


def build(seed: int = 20):
    """返回 {文件名: 行列表}。先出互不重复的留出集，训练用的几份数据都避开它的题目（彼此之间可以重复）。"""
    rng, held_out_questions = random.Random(seed), set()
    held_out = problems(rng, N_EVAL, held_out_questions, distinct=True)
    reason = problems(rng, N_REASON, held_out_questions, distinct=False)
    sft = problems(rng, N_SFT, held_out_questions, distinct=False)
    train = problems(rng, N_TRAIN, held_out_questions, distinct=False)
    rows = {"reason_sft.jsonl": [sft_row(p, reasoning_reply(p)) for p in reason],
            "task_sft.jsonl": [sft_row(p, teacher_answer(p, rng)) for p in sft],
            "rl_train.jsonl": [prompt_row(p) for p in train], "rl_eval.jsonl": [prompt_row(p) for p in held_out]}
    rows["rm_pairs.jsonl"] = preference_pairs(rng, N_PAIRS, held_out_questions)  # 最后生成：前面四份不受影响
    return rows


def main():
    SAMPLES_DIR.mkdir(exist_ok=True)
    for name, rows in build().items():
        with open(SAMPLES_DIR / name, "w", encoding="utf-8", newline="\n") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        print(f"dataset/samples/{name}: {len(rows)} 条")


if __name__ == "__main__":
    main()
