"""强化学习后训练（RL post-training）的可复用部件，每个文件一个概念：

    tasks.py        可验证任务：出题 + 判分（取最大、取最小、数字母）
    rewards.py      奖励：<answer> 里的答案对不对、think/answer 格式、长度惩罚，按权重相加；奖励模型接口
    value_head.py   MiniMind 主干 + 标量头：奖励模型（每条回答一个分数）与 PPO 的 critic（每个 token 一个价值）
    rollout.py      采样：一次 KV cache generate 采出所有 prompt 的全部 G 条回答；回答掩码；逐 token 对数概率
    losses.py       组内优势、裁剪的重要性比率、k3 KL、grpo/dapo/cispo、GAE、PPO 价值损失
    evaluate.py     留出集评测：贪心 pass@1、无偏 pass@k、k 次采样的多数投票
    startup.py      RL 脚本共用的命令行参数与起点检查点（--quick 时缺了就先训练它）
    bench_rollout.py 采样速度的基准（python -m trainer.rl.bench_rollout）：一组 G 条一次生成 vs 逐条生成

训练脚本（trainer/train_grpo.py、train_ppo.py、train_spo.py、train_reward.py、train_distill_reason.py）与评测脚本
trainer/eval_tasks.py 都很薄，
训练循环、检查点、续训、DDP 和日志都用 trainer/trainer_utils.py 的 train()。
"""
