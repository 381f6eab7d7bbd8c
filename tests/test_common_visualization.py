"""modules.common.visualization：每个画图函数都能接受 torch / numpy / list 并存出非空 PNG。"""
import numpy as np
import pytest
import torch

from modules.common import visualization as vis

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def save_png(fig, path):
    fig.savefig(path)
    vis.plt.close(fig)
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 1000
    return data


@pytest.fixture(autouse=True)
def style():
    vis.set_style()


def test_attention_heatmap(tmp_path):
    weights = torch.softmax(torch.randn(6, 6), dim=-1)
    tokens = list("abcdef")
    fig = vis.plot_attention_heatmap(weights, x_labels=tokens, y_labels=tokens, title="Head 0")
    assert fig.axes[0].get_title() == "Head 0"
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == tokens
    save_png(fig, tmp_path / "attn.png")


def test_attention_heatmap_into_given_axes(tmp_path):
    fig, axes = vis.plt.subplots(1, 2)
    returned = vis.plot_attention_heatmap(np.eye(4), ax=axes[1])
    assert returned is fig
    save_png(fig, tmp_path / "attn2.png")


def test_attention_heatmap_rejects_3d():
    with pytest.raises(ValueError, match="二维"):
        vis.plot_attention_heatmap(torch.rand(2, 3, 3))


def test_activation_distribution(tmp_path):
    acts = {"layer0": torch.randn(64, 32), "layer1": np.random.randn(50_000), "layer2": [0.1, 0.5, -0.3, 0.2]}
    fig = vis.plot_activation_distribution(acts, title="Acts")
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == list(acts)
    save_png(fig, tmp_path / "acts.png")


def test_gradient_flow_single_and_multi_run(tmp_path):
    single = vis.plot_gradient_flow({"embed": 0.1, "layers.0": torch.tensor(0.05), "lm_head": np.float32(1.0)})
    assert single.axes[0].get_yscale() == "log"
    assert len(single.axes[0].lines) == 1
    save_png(single, tmp_path / "grad1.png")
    multi = vis.plot_gradient_flow({"post-norm": [1e-4, 1e-2, 1.0], "pre-norm": np.array([0.5, 0.6, 0.7])},
                                   log_scale=False, layer_names=["l0", "l1", "l2"])
    assert len(multi.axes[0].lines) == 2 and multi.axes[0].get_yscale() == "linear"
    save_png(multi, tmp_path / "grad2.png")


def test_loss_curves(tmp_path):
    curves = {"a": (list(range(10)), torch.linspace(3, 1, 10)), "b": (np.arange(10), np.linspace(3, 2, 10))}
    fig = vis.plot_loss_curves(curves, title="Loss", log_y=True)
    assert len(fig.axes[0].lines) == 2 and fig.axes[0].get_yscale() == "log"
    save_png(fig, tmp_path / "loss.png")


def test_bar_comparison(tmp_path):
    fig = vis.plot_bar_comparison({"rmsnorm": 1.2, "layernorm": torch.tensor(1.3), "none": np.float64(2.5)},
                                  title="Final loss", ylabel="loss")
    assert [round(p.get_height(), 3) for p in fig.axes[0].patches] == [1.2, 1.3, 2.5]
    save_png(fig, tmp_path / "bar.png")


def test_empty_inputs_are_rejected():
    for fn in (vis.plot_activation_distribution, vis.plot_gradient_flow, vis.plot_loss_curves, vis.plot_bar_comparison):
        with pytest.raises(ValueError, match="为空"):
            fn({})
