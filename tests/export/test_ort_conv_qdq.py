"""A Conv whose output is quantized per channel (through a Transpose) runs in ONNX Runtime.

ORT 1.32's TransposeOptimizer moves the Transpose below the QuantizeLinear and its QDQ fusion then builds a
QLinearConv with a per-channel output zero point, which the CPU kernel refuses at run time. ``ort_session``
finds the pattern and turns that optimizer off for the graph (a Swin's patch embedding followed by a per-channel
LayerNorm-input quantizer, e.g. ``recon-w4a4``, is this graph).
"""

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from vitcompress.export.runtime import conv_per_channel_output_qdq, ort_session  # noqa: E402

C = 4


def _graph(path, per_channel: bool) -> None:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((C, 1, 2, 2)).astype(np.float32)
    scale = np.full(C if per_channel else (), 0.05, np.float32)
    zero = np.array([3, 5, 7, 9] if per_channel else 4, np.uint8)
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
        helper.make_node("QuantizeLinear", ["w", "ws", "wz"], ["wq"], axis=0),
        helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["wd"], axis=0),
        helper.make_node("Conv", ["xd", "wd"], ["y"], strides=[2, 2]),
        helper.make_node("Transpose", ["y"], ["t"], perm=[0, 2, 3, 1]),
        helper.make_node("QuantizeLinear", ["t", "s", "z"], ["q"], axis=-1),
        helper.make_node("DequantizeLinear", ["q", "s", "z"], ["out"], axis=-1),
    ]
    inits = [
        numpy_helper.from_array(np.float32(0.02), "xs"),
        numpy_helper.from_array(np.uint8(128), "xz"),
        numpy_helper.from_array(w, "w"),
        numpy_helper.from_array(np.full(C, 0.01, np.float32), "ws"),
        numpy_helper.from_array(np.zeros(C, np.int8), "wz"),
        numpy_helper.from_array(scale, "s"),
        numpy_helper.from_array(zero, "z"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 8])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4, 4, C])],
        inits,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)


@pytest.mark.parametrize("per_channel", [True, False])
def test_conv_with_a_per_channel_output_qdq_runs(tmp_path, per_channel):
    path = tmp_path / "g.onnx"
    _graph(path, per_channel)
    assert bool(conv_per_channel_output_qdq(path)) == per_channel  # only the per-channel zero point is the pattern
    x = np.random.default_rng(1).standard_normal((1, 1, 8, 8)).astype(np.float32)
    got = ort_session(path, threads=1).run(None, {"x": x})[0]
    want = ort_session(path, threads=1, opt_level="disable").run(None, {"x": x})[0]  # no fusion: the reference
    assert got.shape == (1, 4, 4, C)
    assert np.abs(got - want).max() <= 0.05 + 1e-6  # at most one output step (integer kernels round once more)
