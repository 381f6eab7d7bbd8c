"""06-distillation 模块：共用工具的单元测试 + 三个实验的 --quick 在子进程里从别的工作目录运行，检查测得的效应。"""
import math
import subprocess
import sys

import pytest
import torch

from conftest import REPO_ROOT, exempt_conclusions, find_conclusion, load_experiment_module, run_quick_experiment

EXPERIMENTS = REPO_ROOT / "modules" / "03-training" / "06-distillation" / "experiments"


def load(name):
    return load_experiment_module(EXPERIMENTS, name)


def run_quick(script_name, tmp_path, env, *extra):
    return run_quick_experiment(EXPERIMENTS / script_name, tmp_path, env, extra)


def test_distill_student_uses_trainer_loss_and_evaluates_on_true_labels():
    lab = load("distill_lab")
    from trainer.train_distillation import distillation_loss
    teacher = lab.new_model(lab.TEACHER_SIZE, 20, seed=0).eval()
    student = lab.new_model(lab.STUDENT_SIZE, 20, seed=1)
    ids = torch.randint(0, 20, (2, 16), generator=torch.Generator().manual_seed(0))
    wrapped = lab.DistillStudent(student, teacher, temperature=2.0, alpha=0.5).train()
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    expected, _, _ = distillation_loss(student(ids).logits, teacher(ids).logits, ids, 2.0, 0.5)
    assert torch.allclose(wrapped(ids, ids).loss, expected)
    # α=0：就是普通的 next-token 交叉熵；评估模式：学生在真实标签上的 CE
    hard = lab.DistillStudent(student, teacher, temperature=1.0, alpha=0.0).train()
    assert torch.allclose(hard(ids, ids).loss, student(ids, labels=ids).loss, atol=1e-6)
    wrapped.eval()
    assert torch.allclose(wrapped(ids, ids).loss, student(ids, labels=ids).loss)


def test_student_result_does_not_depend_on_what_was_trained_before():
    """老师训练后残留的 .grad 曾被 train_model 的梯度裁剪算进总范数：同一个学生第二次训练的结果就变了。"""
    lab = load("distill_lab")
    data = torch.randint(0, 20, (64, 16), generator=torch.Generator().manual_seed(0))

    def batches(seed):
        g = torch.Generator().manual_seed(seed)

        def get_batch(split):
            idx = torch.randint(0, len(data), (4,), generator=g)
            return data[idx], data[idx]
        return get_batch

    teacher, _ = lab.train_teacher(lab.STUDENT_SIZE, 20, batches(0), 5, 0, "cpu")
    weights = []
    for alpha in (1.0, 0.0, 1.0):
        student = lab.new_model(lab.STUDENT_SIZE, 20, seed=1)
        lab.train_student(student, teacher, batches(1), 5, temperature=1.0, alpha=alpha, device="cpu")
        weights.append(torch.cat([p.detach().flatten() for p in student.parameters()]))
    assert torch.equal(weights[0], weights[2])
    assert not torch.equal(weights[0], weights[1])


def test_train_teacher_start_from_continues_a_copy():
    """start_from：在已有老师的拷贝上继续训练（实验 2 的 confident 老师），原老师不变。"""
    lab = load("distill_lab")
    data = torch.randint(0, 20, (64, 16), generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(0)

    def get_batch(split):
        idx = torch.randint(0, len(data), (4,), generator=g)
        return data[idx], data[idx]

    first, _ = lab.train_teacher(lab.STUDENT_SIZE, 20, get_batch, 5, 0, "cpu")
    before = [p.detach().clone() for p in first.parameters()]
    longer, hist = lab.train_teacher(lab.STUDENT_SIZE, 20, get_batch, 5, 0, "cpu", start_from=first)
    assert all(torch.equal(a, p) for a, p in zip(before, first.parameters()))
    assert not any(torch.equal(a, p) for a, p in zip(before, longer.parameters()) if p.dim() > 1)
    assert len(hist["train_loss"]) == 5 and not any(p.requires_grad for p in longer.parameters())


def test_evaluate_agreement_is_one_for_identical_models():
    lab = load("distill_lab")
    model = lab.new_model(lab.STUDENT_SIZE, 20, seed=0)
    batches = [(ids, ids) for ids in torch.randint(0, 20, (2, 3, 16)).unbind(0)]
    scores = lab.evaluate(model, model, batches)
    assert scores["agreement"] == 1.0
    assert math.isclose(scores["student_val_loss"], scores["teacher_val_loss"])
    # 另一份模型的输出头沿词表维度轮换一位（解除与词嵌入的共享）：每个 argmax 都变了，一致率接近 0
    other = lab.new_model(lab.STUDENT_SIZE, 20, seed=0)
    other.lm_head.weight = torch.nn.Parameter(other.lm_head.weight.detach().roll(1, dims=0).clone())
    assert lab.evaluate(other, model, batches)["agreement"] < 0.5


def test_t2_factor_keeps_gradient_scale_on_random_logits():
    """与实验 2 B 部分同一个函数：随机 logits 上，不乘 T² 的梯度 T 翻倍时约缩小 4 倍，乘 T² 时几乎不变。"""
    exp2 = load("exp2_temperature")
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 8, 30, generator=g), 3 * torch.randn(2, 8, 30, generator=g)
    labels = torch.randint(0, 30, (2, 8), generator=g)
    norms = exp2.kl_grad_norms(s, t, labels, [8.0, 16.0, 32.0])
    assert 0.2 < norms["without_T2"][2] / norms["without_T2"][1] < 0.3
    assert 0.9 < norms["with_T2"][2] / norms["with_T2"][1] < 1.1
    for T, a, b in zip(norms["T"], norms["without_T2"], norms["with_T2"]):
        assert math.isclose(b, T ** 2 * a, rel_tol=1e-4)


def test_average_replicates_averages_students_and_batches():
    """实验 2：一个种子的值是 R 个小转移集上学生的平均；逐批的值逐批平均（quick 模式仍能按批配对）。"""
    exp2 = load("exp2_temperature")
    scores = [{"sample_seed": 42, "student_val_loss": 3.0, "agreement": 0.4, "teacher_val_loss": 1.8,
               "student_val_batches": [2.0, 4.0], "agreement_batches": [0.3, 0.5], "teacher_val_batches": [1.8, 1.8]},
              {"sample_seed": 1042, "student_val_loss": 2.0, "agreement": 0.6, "teacher_val_loss": 1.8,
               "student_val_batches": [1.0, 3.0], "agreement_batches": [0.5, 0.7], "teacher_val_batches": [1.8, 1.8]}]
    averaged = exp2.average_replicates(scores)
    assert averaged["student_val_loss"] == 2.5 and math.isclose(averaged["agreement"], 0.5)
    assert averaged["student_val_batches"] == [1.5, 3.5] and averaged["teacher_val_loss"] == 1.8
    assert [r["sample_seed"] for r in averaged["replicates"]] == [42, 1042]
    assert exp2.average_replicates(scores[:1])["student_val_batches"] == [2.0, 4.0]


def test_transfer_set_and_precomputed_teacher():
    """转移集是训练切分里固定的 K 条序列；训练批只从这 K 条里抽；预存的老师 logits 与真实老师逐位相同。"""
    lab = load("distill_lab")
    text = "".join(chr(97 + (i * 7) % 26) for i in range(4000))
    sequences = lab.transfer_set(text, 5, seed=0)
    assert sequences.shape == (5, lab.BLOCK)
    assert torch.equal(sequences, lab.transfer_set(text, 5, seed=0))
    get_batch = lab.transfer_batches(sequences, text, seed=0)
    rows = {tuple(r.tolist()) for r in sequences}
    for _ in range(3):
        input_ids, labels = get_batch("train")
        assert input_ids.shape == (lab.BATCH, lab.BLOCK) and torch.equal(input_ids, labels)
        assert all(tuple(r.tolist()) in rows for r in input_ids)
    teacher = lab.new_model(lab.STUDENT_SIZE, 26, seed=0).eval()
    cached = lab.PrecomputedTeacher(teacher, sequences, chunk=2)
    input_ids, _ = get_batch("train")
    with torch.no_grad():
        assert torch.allclose(cached(input_ids).logits, teacher(input_ids).logits, atol=1e-5)
    val_ids, _ = get_batch("val")
    with pytest.raises(ValueError, match="转移集"):
        cached(val_ids)


def test_teacher_softness_grows_with_temperature():
    lab = load("distill_lab")
    teacher = lab.new_model(lab.STUDENT_SIZE, 20, seed=0).eval()  # 随机初始化：T=1 时熵约 2.93，已接近 ln 20
    batches = [(ids, ids) for ids in torch.randint(0, 20, (2, 3, 16), generator=torch.Generator().manual_seed(0))]
    soft = [lab.teacher_softness(teacher, batches, T) for T in (1.0, 4.0, 1000.0)]
    assert soft[0]["entropy"] < soft[1]["entropy"] < soft[2]["entropy"] <= math.log(20) + 1e-6
    assert soft[0]["mass_outside_top1"] < soft[1]["mass_outside_top1"]
    assert math.isclose(soft[2]["entropy"], math.log(20), rel_tol=1e-3)  # T→∞：均匀分布


@pytest.mark.parametrize("script, flag, value", [
    ("exp1_soft_vs_hard.py", "--steps", "3"), ("exp2_temperature.py", "--steps", "3"),
    ("exp3_teacher_size.py", "--steps", "3"), ("exp1_soft_vs_hard.py", "--small-transfer", "0"),
    ("exp2_temperature.py", "--extra-teacher-steps", "0"), ("exp2_temperature.py", "--replicates", "0")])
def test_bad_arguments_give_one_clear_line(tmp_path, script, flag, value):
    proc = subprocess.run([sys.executable, str(EXPERIMENTS / script), flag, value, "--output-dir", str(tmp_path)],
                          cwd=tmp_path, capture_output=True, text=True, encoding="utf-8", timeout=120)
    assert proc.returncode != 0
    assert flag in proc.stderr and "Traceback" not in proc.stderr


def assert_batch_verdict(c, status="holds"):
    """quick 模式只有一个种子：比较结论按同一组 8 个验证批逐批配对做噪声检验。"""
    assert c["status"] == status and c["noise"]["unit"] == "batches" and c["noise"]["n"] == 8, c


@pytest.mark.experiment
def test_exp1_soft_labels_rescue_the_small_transfer_set(tmp_path, experiment_env, char_unigram_entropy):
    record, stdout = run_quick("exp1_soft_vs_hard.py", tmp_path, experiment_env)
    m = record["metrics"]
    assert m["transfer_sequences"] == {"small": 16, "large": 4096}
    assert m["params"]["student"] < m["params"]["teacher"] / 4
    s = {regime: {name: {k: v["mean"] for k, v in d.items()} for name, d in by_name.items()}
         for regime, by_name in m["summary"].items()}
    small, large = s["small"], s["large"]
    assert set(small) == set(large) == {"hard", "soft", "mix"}
    teacher = m["teacher_val_loss"]["mean"]
    # 小转移集：硬标签学生背下了 16 条序列，验证 loss 比只会字符频率的一元模型（约 3.31）还差得多；
    # 学老师分布的学生没有过拟合成这样，离老师只差零点几
    assert small["hard"]["student_val_loss"] > char_unigram_entropy + 1.0, small
    assert teacher < small["soft"]["student_val_loss"] < char_unigram_entropy - 0.5, (small, teacher)
    assert small["soft"]["student_val_loss"] < small["hard"]["student_val_loss"] - 1.0, small
    assert small["mix"]["student_val_loss"] < small["hard"]["student_val_loss"] - 1.0, small
    assert small["soft"]["agreement"] > small["hard"]["agreement"] + 0.2, small
    # 大转移集：三个学生都学到了上下文，软标签仍然领先，但差距小得多
    assert all(teacher < v["student_val_loss"] < char_unigram_entropy - 0.5 for v in large.values()), (large, teacher)
    assert large["soft"]["student_val_loss"] < large["hard"]["student_val_loss"], large
    gain_small = small["hard"]["student_val_loss"] - small["soft"]["student_val_loss"]
    gain_large = large["hard"]["student_val_loss"] - large["soft"]["student_val_loss"]
    assert gain_small > 5 * gain_large > 0, (gain_small, gain_large)
    # 五条比较都经噪声检验，在 quick 种子 42、1、7 上都成立
    for fragment in ("一致率高于硬标签学生", "小转移集上，软标签学生在真实标签上", "小转移集上，各半混合",
                     "对照：大转移集", "好处（val loss 之差）在小转移集上大于大转移集"):
        assert_batch_verdict(find_conclusion(record, fragment))
    assert "agreement" in stdout


@pytest.mark.experiment
def test_exp2_t2_factor_and_temperature_sweep(tmp_path, experiment_env, char_unigram_entropy):
    record, _ = run_quick("exp2_temperature.py", tmp_path, experiment_env)
    m = record["metrics"]
    rel = m["grad_norms"]["relative_mean"]
    assert m["grad_T"] == [1.0, 2.0, 4.0, 8.0, 16.0]
    # 不乘 T²：单调下降，T=8→16 约 1/4，T=16 时不到 T=1 的 2%；对数斜率接近 -2
    without, with_t2 = rel["without_T2"], rel["with_T2"]
    assert all(a > b for a, b in zip(without, without[1:]))
    assert 0.15 < without[-1] / without[-2] < 0.35
    assert without[-1] < 0.02
    assert -2.5 < m["grad_norms"]["loglog_slope_T2_to_T16"]["without_T2"] < -1.5
    # 乘 T²：T=2 之后几乎不变，且与 T=1 同一个数量级
    assert 0.7 < with_t2[-1] / with_t2[-2] < 1.4
    assert 0.2 < with_t2[-1] < 5
    assert find_conclusion(record, "按约 1/T² 缩小")["holds"] is True
    assert find_conclusion(record, "乘上 T² 后")["holds"] is True
    # 两个老师：继续训练的 confident 老师验证 loss 更低、T=1 时更尖；两者在 T=1 时 top-1 之外都还有四成以上的概率
    assert m["steps"] == 300 and m["extra_teacher_steps"] == 300
    # quick 模式每个种子只训练 1 个小转移集上的学生（完整模式平均 4 个，见 teaching.md）
    assert m["replicates"] == 1
    assert all(len(r["replicates"]) == 1 and r["replicates"][0]["sample_seed"] == r["seed"]
               for by_T in m["runs"].values() for rs in by_T.values() for r in rs)
    teacher = {name: d["mean"] for name, d in m["teacher_val_loss"].items()}
    assert teacher["confident"] < teacher["soft"] - 0.05, teacher
    soft = m["teacher_softness"]["mean"]
    ln_v = m["teacher_softness"]["max_entropy_ln_V"]
    for name in ("soft", "confident"):
        entropies = [soft[name][T]["entropy"] for T in ("1.0", "2.0", "4.0", "8.0")]
        assert all(a < b for a, b in zip(entropies, entropies[1:])) and entropies[-1] < ln_v
        assert soft[name]["1.0"]["mass_outside_top1"] > 0.4 and soft[name]["4.0"]["entropy"] > 0.85 * ln_v, soft
    assert soft["confident"]["1.0"]["entropy"] < soft["soft"]["1.0"]["entropy"] - 0.05, soft
    assert_batch_verdict(find_conclusion(record, "confident 老师在 T=1 时的熵低于"))
    # 温度扫描：三组学生都训练了，都学到了上下文
    s = {group: {T: d["student_val_loss"]["mean"] for T, d in by_T.items()} for group, by_T in m["summary"].items()}
    assert set(s) == {"confident/small", "soft/small", "confident/large"}
    assert set(s["confident/small"]) == {"1.0", "2.0", "4.0", "8.0"}
    assert set(s["soft/small"]) == set(s["confident/large"]) == {"1.0", "4.0"}
    assert all(v < char_unigram_entropy - 0.3 for by_T in s.values() for v in by_T.values()), s
    # 主结论：小转移集、confident 老师，T=2、T=4 都好于 T=1（超出批次噪声）
    conf_small, soft_small, conf_large = s["confident/small"], s["soft/small"], s["confident/large"]
    assert conf_small["2.0"] < conf_small["1.0"] and conf_small["4.0"] < conf_small["1.0"], conf_small
    # 升温的好处在 confident 老师下更大；大转移集上 T=1 好于 T=4，升温在小转移集上更划算
    gain_conf, gain_soft = conf_small["1.0"] - conf_small["4.0"], soft_small["1.0"] - soft_small["4.0"]
    assert gain_conf > gain_soft, (gain_conf, gain_soft)
    assert conf_large["1.0"] < conf_large["4.0"], conf_large
    assert conf_small["4.0"] - conf_small["1.0"] < conf_large["4.0"] - conf_large["1.0"]
    for fragment in ("T=2 的学生验证 loss 低于 T=1", "confident 老师：T=4 的学生验证 loss 低于 T=1", "对照：大转移集",
                     "好处（T=4 − T=1 的 val loss 之差更负）在 confident 老师下大于 soft 老师",
                     "升温到 T=4 的 val loss 变化在小转移集上低于大转移集"):
        assert_batch_verdict(find_conclusion(record, fragment))
    # 对照（旧版设置，soft 老师）的结论随种子翻转（2026-12-05 在当前代码上测）：quick 种子 42、1、7 上成立，
    # 种子 5 上反向超出批次噪声；批次噪声量不到换种子的噪声，完整模式按种子配对的结果见 teaching.md
    exempt_conclusions(record, {
        "对照：小转移集、只训练": "quick 结果随种子翻转：种子 42、1、7 成立，种子 5 反向超出批次噪声",
    })
    for group, by_T in s.items():
        assert m["best_T_by_val_loss"][group] == float(min(by_T, key=by_T.get))


@pytest.mark.experiment
def test_exp3_capacity_gap(tmp_path, experiment_env):
    record, _ = run_quick("exp3_teacher_size.py", tmp_path, experiment_env)
    m = record["metrics"]
    s = {n: {k: v["mean"] for k, v in d.items()} for n, d in m["summary"].items()}
    names = ["small", "medium", "large"]
    assert list(s) == names
    assert m["steps"] == 240
    assert m["params"]["small"] < m["params"]["medium"] < m["params"]["large"]
    teacher = [s[n]["teacher_val_loss"] for n in names]
    student = {n: s[n]["student_val_loss"] for n in names}
    agreement = [s[n]["agreement"] for n in names]
    # 下面四条在 quick 种子 42、1、7、5 上都成立（2026-12-05 seed_sweep，240 步）：断言不等式本身，再断言噪声检验
    # （单种子：同一组 8 个验证批逐批配对）
    assert teacher[0] > teacher[1] > teacher[2], teacher  # 前提：相同步数下老师越大验证 loss 越低
    assert student["large"] < student["small"], student
    assert agreement[0] > agreement[1], agreement  # 学生最像与自己一样大的老师
    for fragment in ("老师 medium 的验证 loss 低于老师 small", "老师 large 的验证 loss 低于老师 medium",
                     "跟 large 老师学的学生，验证 loss 低于跟 small", "与老师 medium 的一致率低于与老师 small"):
        assert_batch_verdict(find_conclusion(record, fragment))
    # 下面几条在 quick 模式（一个种子、240 步）里随种子变化，批次噪声量不到换种子的噪声；
    # 完整模式（480 步、按种子配对）的结果见 teaching.md 实验 3
    exempt_conclusions(record, {
        "跟 medium 老师学的学生，验证 loss 低于跟 small": "quick 种子 42、7、5 成立，种子 1 在批次噪声以内（❔）",
        "对照：跟 large 老师学的学生": "对照（声明的反面）：quick 种子 42、1、5 成立，种子 7 反向超出批次噪声",
        "容量差距：老师 medium → large": "quick 种子 42、7、5 成立，种子 1 反向超出批次噪声（❌）；完整模式种子 42–44 成立、1–3 未确立",
        "与老师 large 的一致率低于与老师 medium": "quick 种子 42、1、7 成立，种子 5 在批次噪声以内（❔）",
    })
    assert m["best_teacher_for_student"] == min(student, key=student.get)
