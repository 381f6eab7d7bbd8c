"""实验公共工具箱（按需 `from modules.common.X import ...`，这里不导入任何重模块）。

子模块：
- device：选择计算设备（auto / cpu / cuda / mps）并给出可读描述。
- datasets：实验数据（TinyShakespeare、TinyStories 前缀、合成任务）的下载、校验与缓存；也是命令行工具。
- text_data：字符级分词器、训练/验证切分、随机取批。
- experiment_base：实验脚本的骨架 Experiment（命令行参数、随机种子、结果 JSON、结论打印）。
- visualization：统一风格的画图函数（注意力热力图、激活分布、梯度流、损失曲线、柱状对比）。
- training：实验共用的小训练循环 train_model 与学习率调度 lr_at。
"""
