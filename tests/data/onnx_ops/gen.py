#!/usr/bin/env python3
"""Generate the tiny ONNX models and ONNX Runtime reference outputs used by tests/onnx_ops.rs.

One model per ORT contrib op (domain com.microsoft, as emitted by ORT's static quantiser in
QOperator format) plus per-channel DequantizeLinear/QuantizeLinear models. Every model has its
quantised activations as graph inputs and its quantisation parameters as initializers, like the
quantiser's output. For case NAME this writes:

    NAME.onnx            the model
    NAME.in<i>.npy       graph input i (seeded random data)
    NAME.out0.npy        ONNX Runtime's output (all graph optimisations disabled)

Run from anywhere: `python3 tests/data/onnx_ops/gen.py [CASE...]` (no names: every case). Needs numpy, onnx, onnxruntime.

Machine caveat: on x86 CPUs without AVX-512 VNNI (AVX2 only), ORT's u8 x s8 kernels behind
QLinearConv/QGemm saturate a 16-bit intermediate (vpmaddubsw), so regenerating there changes
the u8s8 conv/gemm references by up to 122 steps (measured on an AVX2 EPYC, ORT 1.32; the
`session.x64quantprecision` key does not apply at ORT_DISABLE_ALL). The committed references
are the exact integer results; regenerate on a VNNI or ARM machine, or keep those files.
Outputs are deterministic for a given onnxruntime version; the version used is written to
VERSIONS.txt so a regenerated diff can be explained.
"""

import os
import sys

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

HERE = os.path.dirname(os.path.abspath(__file__))
MS = "com.microsoft"
OPSET = 13  # per-axis DequantizeLinear/QuantizeLinear need >= 13; tract is tested up to 18

NP_TO_ONNX = {
    np.dtype(np.uint8): TensorProto.UINT8,
    np.dtype(np.int8): TensorProto.INT8,
    np.dtype(np.int32): TensorProto.INT32,
    np.dtype(np.float32): TensorProto.FLOAT,
}


def rand_q(rng, dtype, shape):
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max + 1, size=shape, dtype=np.int64).astype(dtype)


class Case:
    """Accumulates a single-node graph: inputs with data, initializers, one node."""

    def __init__(self, name, seed):
        self.name = name
        self.rng = np.random.default_rng(seed)
        self.inputs = []  # (name, array)
        self.inits = []
        self.counter = 0

    def input(self, arr):
        name = f"x{len(self.inputs)}"
        self.inputs.append((name, np.asarray(arr)))
        return name

    def const(self, value, dtype):
        name = f"c{self.counter}"
        self.counter += 1
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def save(self, op_type, node_inputs, out_dtype, domain=MS, **attrs):
        node = helper.make_node(op_type, node_inputs, ["y"], name=self.name, domain=domain, **attrs)
        return self.save_graph([node], out_dtype, op_type, uses_ms=domain == MS)

    def save_graph(self, nodes, out_dtype, label, uses_ms=True, dynamic_batch=False,
                   level=ort.GraphOptimizationLevel.ORT_DISABLE_ALL, opset=OPSET):
        """Saves a graph whose output is "y" and records ORT's output for it (at graph
        optimisation `level`: QDQ groups are fused into integer ops from ORT_ENABLE_EXTENDED)."""

        if ONLY and self.name not in ONLY:
            return None

        def shape(a):
            # A symbolic leading dimension, as exported models usually have.
            return ["N"] + list(a.shape[1:]) if dynamic_batch else list(a.shape)

        graph = helper.make_graph(
            nodes,
            self.name,
            [helper.make_tensor_value_info(n, NP_TO_ONNX[a.dtype], shape(a)) for n, a in self.inputs],
            # Output shape left unknown on purpose: tract must infer it from our rules.
            [helper.make_tensor_value_info("y", NP_TO_ONNX[np.dtype(out_dtype)], None)],
            self.inits,
        )
        opsets = [helper.make_opsetid("", opset)]
        if uses_ms:
            opsets.append(helper.make_opsetid(MS, 1))
        model = helper.make_model(graph, opset_imports=opsets, producer_name="beltbox-gen")
        model.ir_version = 8
        path = os.path.join(HERE, f"{self.name}.onnx")
        onnx.save(model, path)

        so = ort.SessionOptions()
        so.graph_optimization_level = level
        so.intra_op_num_threads = 1
        sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        (out,) = sess.run(None, dict(self.inputs))
        assert out.dtype == np.dtype(out_dtype), (self.name, out.dtype)
        for i, (_, arr) in enumerate(self.inputs):
            np.save(os.path.join(HERE, f"{self.name}.in{i}.npy"), arr)
        np.save(os.path.join(HERE, f"{self.name}.out0.npy"), out)
        print(f"{self.name:32} {label:26} out {out.dtype} {out.shape}")
        return out


def qlinear_softmax(name, dt, shape, seed, x_scale, opset, axis=None):
    """QLinearSoftmax as ORT's quantiser emits it: output scale 1/255 (u8, zp 0) or 1/256
    (i8, zp -128). Inputs are random codes; x_scale sets how peaked the rows are."""
    c = Case(name, seed)
    x = c.input(rand_q(c.rng, dt, shape))
    y_scale, y_zp = (1.0 / 255.0, 0) if dt == np.uint8 else (1.0 / 256.0, -128)
    attrs = {"opset": opset}
    if axis is not None:
        attrs["axis"] = axis
    c.save(
        "QLinearSoftmax",
        [x, c.const(x_scale, np.float32), c.const(7, dt), c.const(y_scale, np.float32),
         c.const(y_zp, dt)],
        dt,
        **attrs,
    )


def qdq_softmax(name, shape, seed):
    """DequantizeLinear -> Softmax -> QuantizeLinear, as ORT's quantiser wraps every Softmax
    in QDQ format. The reference is ORT with its QDQ fusion on (ORT_ENABLE_EXTENDED), which
    runs the group as QLinearSoftmax; the float group lands one step away on ~3 % of values."""
    c = Case(name, seed)
    x = c.input(rand_q(c.rng, np.uint8, shape))
    nodes = [
        helper.make_node("DequantizeLinear", [x, c.const(0.0731, np.float32), c.const(118, np.uint8)], ["xf"]),
        helper.make_node("Softmax", ["xf"], ["yf"], axis=-1),
        helper.make_node("QuantizeLinear", ["yf", c.const(1.0 / 255.0, np.float32), c.const(0, np.uint8)], ["y"]),
    ]
    c.save_graph(nodes, np.uint8, "DQ->Softmax->Q", uses_ms=False,
                 level=ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED)


def qdq_unary(name, op, seed, **attrs):
    """DequantizeLinear -> op -> QuantizeLinear for an activation ORT has no QLinear op for
    (HardSigmoid, HardSwish in MobileNetV3-style models): ORT runs the group in float, one
    element at a time, so the result is a function of the input code; beltbox turns it into a
    256-entry table. Every code appears once."""
    c = Case(name, seed)
    x = c.input(c.rng.permutation(np.arange(256)).astype(np.uint8).reshape(2, 128))
    nodes = [
        helper.make_node("DequantizeLinear", [x, c.const(0.047, np.float32), c.const(131, np.uint8)], ["xf"]),
        helper.make_node(op, ["xf"], ["yf"], **attrs),
        helper.make_node("QuantizeLinear", ["yf", c.const(0.023, np.float32), c.const(17, np.uint8)], ["y"]),
    ]
    c.save_graph(nodes, np.uint8, f"DQ->{op}->Q", uses_ms=False,
                 level=ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, opset=14)


def qdq_hard_swish_decomposed(name, seed):
    """HardSwish as exporters (Paddle, some PyTorch versions) write it and ORT's quantiser
    wraps it: `x * clip(x + 3) / 6` becomes DQ -> Add(3) -> Q, DQ -> Mul(x, .) -> Q and
    DQ -> Div(6, a float scalar) -> Q. ORT (EXTENDED) runs the first two as QLinearAdd and
    QLinearMul and the Div in float; beltbox folds all three into one 256-entry table, which
    must give the same bytes for every code."""
    c = Case(name, seed)
    x = c.input(c.rng.permutation(np.arange(256)).astype(np.uint8).reshape(2, 128))
    f = lambda v: c.const(v, np.float32)
    u = lambda v: c.const(v, np.uint8)
    nodes = [
        helper.make_node("DequantizeLinear", [x, f(0.047), u(131)], ["xf"]),
        helper.make_node("DequantizeLinear", [u(255), f(3.0 / 255), u(0)], ["three"]),
        helper.make_node("Add", ["xf", "three"], ["a"]),
        helper.make_node("QuantizeLinear", ["a", f(0.031), u(0)], ["aq"]),
        helper.make_node("DequantizeLinear", ["aq", f(0.031), u(0)], ["af"]),
        helper.make_node("Mul", ["xf", "af"], ["m"]),
        helper.make_node("QuantizeLinear", ["m", f(0.13), u(90)], ["mq"]),
        helper.make_node("DequantizeLinear", ["mq", f(0.13), u(90)], ["mf"]),
        helper.make_node("Div", ["mf", f(6.0)], ["d"]),
        helper.make_node("QuantizeLinear", ["d", f(0.023), u(17)], ["y"]),
    ]
    c.save_graph(nodes, np.uint8, "HardSwish as Add/Mul/Div", uses_ms=False,
                 level=ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED)


def qdq_silu_i8(name, seed):
    """SiLU (YOLOv5/v8) in QDQ form, int8: DQ -> Sigmoid -> Q, then DQ(x) * DQ(sigmoid) -> Q,
    and a float `* 2` / `- 1` on the way out (scalar arithmetic ORT runs in float). Every
    code appears once; beltbox folds it all into one table."""
    c = Case(name, seed)
    x = c.input((c.rng.permutation(np.arange(256)) - 128).astype(np.int8).reshape(4, 64))
    f = lambda v: c.const(v, np.float32)
    i = lambda v: c.const(v, np.int8)
    nodes = [
        helper.make_node("DequantizeLinear", [x, f(0.061), i(-9)], ["xf"]),
        helper.make_node("Sigmoid", ["xf"], ["s"]),
        helper.make_node("QuantizeLinear", ["s", f(1 / 256), i(-128)], ["sq"]),
        helper.make_node("DequantizeLinear", ["sq", f(1 / 256), i(-128)], ["sf"]),
        helper.make_node("Mul", ["xf", "sf"], ["m"]),
        helper.make_node("QuantizeLinear", ["m", f(0.043), i(-20)], ["mq"]),
        helper.make_node("DequantizeLinear", ["mq", f(0.043), i(-20)], ["mf"]),
        helper.make_node("Mul", [f(2.0), "mf"], ["m2"]),
        helper.make_node("QuantizeLinear", ["m2", f(0.07), i(3)], ["m2q"]),
        helper.make_node("DequantizeLinear", ["m2q", f(0.07), i(3)], ["m2f"]),
        helper.make_node("Sub", ["m2f", f(1.0)], ["d"]),
        helper.make_node("QuantizeLinear", ["d", f(0.05), i(0)], ["y"]),
    ]
    c.save_graph(nodes, np.int8, "SiLU, *2, -1", uses_ms=False,
                 level=ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED)


def qdq_data_movement(name, seed):
    """Split, nearest Resize and Slice between DQ and Q with unchanged parameters (what ORT's
    quantiser writes for them: they only move values), around a QLinearMul so the graph has
    integer work. beltbox runs them on the integers; the bytes must not change."""
    c = Case(name, seed)
    x = c.input(rand_q(c.rng, np.uint8, (1, 6, 5, 4)))
    f = lambda v: c.const(v, np.float32)
    u = lambda v: c.const(v, np.uint8)
    i64 = lambda v: c.const(v, np.int64)
    p = lambda: [f(0.02), u(120)]
    nodes = [
        helper.make_node("DequantizeLinear", [x] + p(), ["xf"]),
        helper.make_node("Split", ["xf", i64([2, 4])], ["s0", "s1"], axis=1),
        helper.make_node("QuantizeLinear", ["s0"] + p(), ["s0q"]),
        helper.make_node("QuantizeLinear", ["s1"] + p(), ["s1q"]),
        helper.make_node("DequantizeLinear", ["s0q"] + p(), ["s0f"]),
        helper.make_node("Resize", ["s0f", "", f([1.0, 2.0, 2.0, 2.0])], ["r"], mode="nearest",
                         coordinate_transformation_mode="asymmetric", nearest_mode="floor"),
        helper.make_node("QuantizeLinear", ["r"] + p(), ["rq"]),
        helper.make_node("DequantizeLinear", ["s1q"] + p(), ["s1f"]),
        helper.make_node("Slice", ["s1f", i64([2, 1]), i64([3, 2]), i64([2, 3])], ["sl"]),
        helper.make_node("QuantizeLinear", ["sl"] + p(), ["slq"]),
        helper.make_node("DequantizeLinear", ["rq"] + p(), ["rf"]),
        helper.make_node("DequantizeLinear", ["slq"] + p(), ["slf"]),
        helper.make_node("Mul", ["rf", "slf"], ["m"]),
        helper.make_node("QuantizeLinear", ["m", f(0.9), u(3)], ["y"]),
    ]
    c.save_graph(nodes, np.uint8, "Split/Resize/Slice on codes", uses_ms=False,
                 level=ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED)


def qlinear_add_ties(name, dt, seed, scalar_b):
    """QLinearAdd where the exact result of most elements is n + 0.5: C's scale equals A's
    and B's is half of it, so every odd b - b_zp is a tie. Only ORT's exact float steps
    (fused multiply-adds, scalar operands folded first) round these as ORT does."""
    c = Case(name, seed)
    info = np.iinfo(dt)
    codes = np.arange(info.min, info.max + 1).astype(dt)
    a = c.input(c.rng.permutation(codes).reshape(1, 256))
    b = c.input(rand_q(c.rng, dt, (1,) if scalar_b else (1, 256)))
    mid = 128 if dt == np.uint8 else 0
    sc = np.float32(0.0371)
    c.save(
        "QLinearAdd",
        [a, c.const(sc, np.float32), c.const(mid + 3, dt), b, c.const(sc / 2, np.float32),
         c.const(mid - 7, dt), c.const(sc, np.float32), c.const(mid + 5, dt)],
        dt,
    )


def chain(name, seed):
    """A small QOperator-style network with a symbolic batch dimension: the ops feed each other,
    so shape/type inference has to flow through every one of them."""
    u8, i8 = np.uint8, np.int8
    c = Case(name, seed)
    x = c.input(rand_q(c.rng, u8, (2, 8, 6, 6)))
    s = lambda v: c.const(v, np.float32)
    z = lambda v: c.const(v, u8)
    nodes = [
        helper.make_node("QLinearMul", [x, s(0.05), z(120), x, s(0.05), z(120), s(0.2), z(10)],
                         ["sq"], domain=MS),
        helper.make_node("QLinearAdd", ["sq", s(0.2), z(10), x, s(0.05), z(120), s(0.1), z(100)],
                         ["sum"], domain=MS),
        helper.make_node("QLinearLeakyRelu", ["sum", s(0.1), z(100), s(0.08), z(60)], ["act"],
                         domain=MS, alpha=0.1),
        helper.make_node("QLinearAveragePool", ["act", s(0.08), z(60), s(0.07), z(70)], ["pool"],
                         domain=MS, kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("QLinearGlobalAveragePool", ["act", s(0.08), z(60), s(0.05), z(80)],
                         ["gap"], domain=MS),
        # The global average broadcast back to the pooled size: a second branch into the
        # concat, with its own quantisation.
        helper.make_node("Expand", ["gap", c.const([1, 1, 3, 3], np.int64)], ["act_pool2"]),
        helper.make_node("QLinearConcat", [s(0.07), z(70), "pool", s(0.07), z(70), "act_pool2",
                                           s(0.05), z(80)], ["cat"], domain=MS, axis=1),
        helper.make_node("QLinearSigmoid", ["cat", s(0.07), z(70), s(1 / 255), z(0)], ["sig"],
                         domain=MS),
        helper.make_node("QLinearGlobalAveragePool", ["sig", s(1 / 255), z(0), s(1 / 255), z(0)],
                         ["sig_gap"], domain=MS),
        helper.make_node("Flatten", ["sig_gap"], ["flat"], axis=1),
        helper.make_node("QGemm", ["flat", s(1 / 255), z(0),
                                   c.const(rand_q(c.rng, i8, (5, 16)), i8),
                                   c.const(c.rng.uniform(0.005, 0.02, 5).astype(np.float32),
                                           np.float32),
                                   c.const(np.zeros(5), i8),
                                   c.const(c.rng.integers(-500, 500, 5), np.int32),
                                   s(0.02), z(128)], ["gemm"], domain=MS, transB=1),
        helper.make_node("DequantizeLinear", ["gemm", s(0.02), z(128)], ["y"]),
    ]
    c.save_graph(nodes, np.float32, "(QOperator chain)", dynamic_batch=True)


def binary(name, op, dt, a_shape, b_shape, seed, with_c_zp=True):
    c = Case(name, seed)
    a = c.input(rand_q(c.rng, dt, a_shape))
    b = c.input(rand_q(c.rng, dt, b_shape))
    mid = 128 if dt == np.uint8 else 0
    if op == "QLinearAdd":
        scales = (0.05, 0.03, 0.07)
    else:
        # Product of two ~[-6, 6] values: output scale must be wider.
        scales = (0.04, 0.05, 0.12)
    inputs = [
        a, c.const(scales[0], np.float32), c.const(mid + 3, dt),
        b, c.const(scales[1], np.float32), c.const(mid - 7, dt),
        c.const(scales[2], np.float32),
    ]
    # A missing optional input may also be named "", but ORT's type inference rejects "" for
    # QLinearAdd/Mul zero points, so only dropping the trailing C_zero_point can be referenced.
    if with_c_zp:
        inputs.append(c.const(mid + 5, dt))
    c.save(op, inputs, dt)


def unary(name, op, dt, seed, **attrs):
    c = Case(name, seed)
    # Every representable input value once (shuffled): ORT evaluates these ops through a
    # 256-entry lookup table, so this compares the whole table.
    info = np.iinfo(dt)
    x = c.input(c.rng.permutation(np.arange(info.min, info.max + 1)).astype(dt).reshape(2, 128))
    mid = 128 if dt == np.uint8 else 0
    if op == "QLinearSigmoid":
        # Output in [0, 1]: ORT's quantiser gives such tensors a zero point at the range start.
        y_scale, y_zp = 1.0 / 255.0, (0 if dt == np.uint8 else -128)
    else:
        y_scale, y_zp = 0.045, mid - 20
    c.save(
        op,
        [
            x, c.const(0.06, np.float32), c.const(mid + 10, dt),
            c.const(y_scale, np.float32), c.const(y_zp, dt),
        ],
        dt,
        **attrs,
    )


def global_avg_pool(name, dt, shape, seed, channels_last):
    c = Case(name, seed)
    x = c.input(rand_q(c.rng, dt, shape))
    mid = 128 if dt == np.uint8 else 0
    c.save(
        "QLinearGlobalAveragePool",
        [x, c.const(0.1, np.float32), c.const(mid - 12, dt), c.const(0.013, np.float32), c.const(mid + 4, dt)],
        dt,
        channels_last=channels_last,
    )


def avg_pool(name, dt, shape, seed, **attrs):
    c = Case(name, seed)
    x = c.input(rand_q(c.rng, dt, shape))
    mid = 128 if dt == np.uint8 else 0
    c.save(
        "QLinearAveragePool",
        [x, c.const(0.08, np.float32), c.const(mid + 9, dt), c.const(0.03, np.float32), c.const(mid - 3, dt)],
        dt,
        **attrs,
    )


def concat(name, dt, shapes, params, y_params, axis, seed):
    c = Case(name, seed)
    inputs = [c.const(y_params[0], np.float32), c.const(y_params[1], dt)]
    for shape, (s, z) in zip(shapes, params):
        inputs += [c.input(rand_q(c.rng, dt, shape)), c.const(s, np.float32), c.const(z, dt)]
    c.save("QLinearConcat", inputs, dt, axis=axis)


def qgemm(name, a_dt, b_dt, m, k, n, seed, trans_a=0, trans_b=0, alpha=1.0,
          per_column=False, bias_shape=None, quantized_output=True, y_scale_only=False):
    c = Case(name, seed)
    a_shape = (k, m) if trans_a else (m, k)
    b_shape = (n, k) if trans_b else (k, n)
    a = c.input(rand_q(c.rng, a_dt, a_shape))
    b = c.const(rand_q(c.rng, b_dt, b_shape), b_dt)
    a_mid = 128 if a_dt == np.uint8 else 0
    b_mid = 128 if b_dt == np.uint8 else 0
    if per_column:
        b_scale = c.rng.uniform(0.002, 0.02, size=n).astype(np.float32)
        b_zp = (b_mid + c.rng.integers(-10, 11, size=n)).astype(b_dt)
    else:
        b_scale, b_zp = np.float32(0.01), b_dt(b_mid + 4)
    inputs = [
        a, c.const(0.02, np.float32), c.const(a_mid - 5, a_dt),
        b, c.const(b_scale, np.float32), c.const(b_zp, b_dt),
    ]
    inputs.append(c.const(c.rng.integers(-3000, 3000, size=bias_shape), np.int32) if bias_shape is not None else "")
    if quantized_output:
        inputs += [c.const(0.25, np.float32), c.const(a_mid + 7, a_dt)]
    elif y_scale_only:
        # ORT then still produces floats, divided by y_scale.
        inputs += [c.const(0.25, np.float32)]
    while inputs[-1] == "":
        inputs.pop()
    c.save("QGemm", inputs, a_dt if quantized_output else np.float32,
           alpha=alpha, transA=trans_a, transB=trans_b)


def qlinear_conv(name, x_dt, w_dt, x_shape, w_shape, seed, w_zp_nonzero=False, bias=True,
                 dynamic_batch=False, **attrs):
    """A standard-domain QLinearConv with per-channel weights (what beltbox's integer kernels run)."""
    c = Case(name, seed)
    x = c.input(rand_q(c.rng, x_dt, x_shape))
    x_mid = 128 if x_dt == np.uint8 else 0
    w_mid = 128 if w_dt == np.uint8 else 0
    m = w_shape[0]
    w = c.const(rand_q(c.rng, w_dt, w_shape), w_dt)
    w_scale = c.rng.uniform(0.002, 0.02, size=m).astype(np.float32)
    w_zp = (w_mid + (c.rng.integers(-9, 10, size=m) if w_zp_nonzero else np.zeros(m, np.int64))).astype(w_dt)
    inputs = [
        x, c.const(0.03, np.float32), c.const(x_mid - 7, x_dt),
        w, c.const(w_scale, np.float32), c.const(w_zp, w_dt),
        c.const(0.05, np.float32), c.const(x_mid + 3, x_dt),
    ]
    if bias:
        inputs.append(c.const(c.rng.integers(-4000, 4000, size=m), np.int32))
    node = helper.make_node("QLinearConv", inputs, ["y"], name=name, **attrs)
    c.save_graph([node], x_dt, "QLinearConv", uses_ms=False, dynamic_batch=dynamic_batch)


# Per-channel parameters are hard-coded (and repeated in tests/onnx_ops.rs) so the Rust test can
# recompute the expected values independently of ONNX Runtime.
PER_CHANNEL_SCALES = [0.02, 0.05, 0.1, 0.25]
PER_CHANNEL_ZP = {np.uint8: [10, 128, 200, 77], np.int8: [-100, 0, 90, 33]}


def dequantize_per_channel(name, dt, seed, shape=(2, 4, 3), axis=1):
    c = Case(name, seed)
    x = c.input(rand_q(c.rng, dt, shape))
    c.save(
        "DequantizeLinear",
        [x, c.const(PER_CHANNEL_SCALES, np.float32), c.const(PER_CHANNEL_ZP[dt], dt)],
        np.float32,
        domain="",
        axis=axis,
    )


def quantize_per_channel(name, dt, seed, shape=(2, 4, 3), axis=1):
    c = Case(name, seed)
    # Each channel's values span its own representable range (plus a little saturation), so
    # applying another channel's parameters would give visibly different results.
    info = np.iinfo(dt)
    param_shape = [1] * len(shape)
    param_shape[axis] = 4
    scales = np.array(PER_CHANNEL_SCALES, dtype=np.float32).reshape(param_shape)
    zps = np.array(PER_CHANNEL_ZP[dt], dtype=np.float32).reshape(param_shape)
    q = c.rng.uniform(info.min - 8, info.max + 8, size=shape)
    x = c.input(((q - zps) * scales).astype(np.float32))
    c.save(
        "QuantizeLinear",
        [x, c.const(PER_CHANNEL_SCALES, np.float32), c.const(PER_CHANNEL_ZP[dt], dt)],
        dt,
        domain="",
        axis=axis,
    )


def quantize_per_tensor_near_ties(name, seed):
    """Per-tensor QuantizeLinear on inputs within one ulp of rounding ties.

    ORT computes x / scale; tract's per-tensor kernel multiplies by 1 / scale, which lands on
    the other side of some ties. Documents that (bounded, one step) difference.
    """
    c = Case(name, seed)
    scale = np.float32(0.1)
    k = np.arange(-128, 128, dtype=np.float32)
    ties = ((k + np.float32(0.5)) * scale).astype(np.float32)
    x = np.stack([np.nextafter(ties, np.float32(-np.inf)), ties, np.nextafter(ties, np.float32(np.inf))])
    c.input(x.astype(np.float32))
    c.save("QuantizeLinear", ["x0", c.const(scale, np.float32), c.const(128, np.uint8)], np.uint8,
           domain="")


def malformed(name, op_type, node_inputs, attrs=None, x_shape=(2, 3), scale_shape=()):
    """A model tract must reject with an error (never a panic); no ORT reference."""
    inits = [
        numpy_helper.from_array(np.full(scale_shape, 0.1, dtype=np.float32), "s"),
        numpy_helper.from_array(np.array(3, dtype=np.uint8), "z"),
    ]
    node = helper.make_node(op_type, node_inputs, ["y"], name=name, domain=MS, **(attrs or {}))
    graph = helper.make_graph(
        [node],
        name,
        [helper.make_tensor_value_info("x", TensorProto.UINT8, list(x_shape))],
        [helper.make_tensor_value_info("y", TensorProto.UINT8, None)],
        inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(MS, 1)]
    )
    model.ir_version = 8
    onnx.save(model, os.path.join(HERE, f"{name}.onnx"))
    print(f"{name:32} {op_type:26} (malformed)")


def main():
    u8, i8 = np.uint8, np.int8
    binary("qlinear_add_u8", "QLinearAdd", u8, (1, 3, 16, 16), (1, 3, 16, 16), 1)
    binary("qlinear_add_i8_bcast", "QLinearAdd", i8, (2, 3, 4), (3, 1), 2)
    binary("qlinear_add_u8_no_c_zp", "QLinearAdd", u8, (2, 5), (2, 5), 3, with_c_zp=False)
    binary("qlinear_mul_u8", "QLinearMul", u8, (1, 3, 16, 16), (1, 3, 1, 1), 4)
    binary("qlinear_mul_i8", "QLinearMul", i8, (2, 3, 128), (2, 3, 128), 5)
    global_avg_pool("qlinear_gap_u8", u8, (2, 16, 5, 5), 6, channels_last=0)
    global_avg_pool("qlinear_gap_i8_nhwc", i8, (2, 4, 4, 16), 7, channels_last=1)
    avg_pool("qlinear_avgpool_u8", u8, (1, 2, 7, 7), 8, kernel_shape=[3, 3], strides=[2, 2],
             pads=[1, 1, 1, 1], count_include_pad=0)
    avg_pool("qlinear_avgpool_i8_incpad", i8, (1, 3, 6, 6), 9, kernel_shape=[2, 3], strides=[1, 2],
             pads=[1, 0, 0, 1], count_include_pad=1)
    avg_pool("qlinear_avgpool_i8_same_upper", i8, (1, 2, 7, 6), 33, kernel_shape=[3, 3],
             strides=[2, 2], auto_pad="SAME_UPPER")
    avg_pool("qlinear_avgpool_u8_ceil_incpad", u8, (1, 2, 6, 6), 34, kernel_shape=[3, 3],
             strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1, count_include_pad=1)
    avg_pool("qlinear_avgpool_u8_nhwc_ceil", u8, (1, 6, 6, 2), 10, kernel_shape=[3, 3],
             strides=[2, 2], ceil_mode=1, channels_last=1)
    concat("qlinear_concat_u8", u8, [(1, 2, 3), (1, 3, 3), (1, 1, 3)],
           [(0.05, 128), (0.02, 100), (0.1, 140)], (0.05, 128), 1, 11)
    concat("qlinear_concat_i8", i8, [(2, 3), (2, 2)], [(0.03, -5), (0.04, 9)], (0.05, 2), -1, 12)
    unary("qlinear_sigmoid_u8", "QLinearSigmoid", u8, 13)
    unary("qlinear_sigmoid_i8", "QLinearSigmoid", i8, 14)
    unary("qlinear_leaky_relu_u8", "QLinearLeakyRelu", u8, 15, alpha=0.1)
    unary("qlinear_leaky_relu_i8", "QLinearLeakyRelu", i8, 16, alpha=0.2)
    qgemm("qgemm_u8s8_percol_transb", u8, i8, 8, 64, 16, 17, trans_b=1, per_column=True,
          bias_shape=(16,))
    qgemm("qgemm_u8u8", u8, u8, 8, 32, 12, 18, bias_shape=(1, 12))
    qgemm("qgemm_i8_alpha_mn_bias", i8, i8, 3, 10, 4, 19, alpha=0.5, bias_shape=(3, 4))
    qgemm("qgemm_i8_transa_nobias", i8, i8, 2, 12, 3, 20, trans_a=1)
    qgemm("qgemm_u8s8_float_out", u8, i8, 3, 16, 5, 21, trans_b=1, per_column=True,
          bias_shape=(5,), quantized_output=False)
    qgemm("qgemm_u8s8_float_out_y_scale", u8, i8, 3, 16, 5, 31, per_column=True,
          quantized_output=False, y_scale_only=True)
    qgemm("qgemm_u8u8_negative_alpha", u8, u8, 4, 16, 6, 32, alpha=-0.75, per_column=True,
          bias_shape=(6,))
    chain("qoperator_chain_dynamic_batch", 29)
    qlinear_softmax("qlinear_softmax_u8", u8, (6, 37), 42, 0.0731, opset=13)
    qlinear_softmax("qlinear_softmax_i8_axis1", i8, (2, 5, 3), 43, 0.02, opset=13, axis=1)
    qlinear_softmax("qlinear_softmax_u8_opset11_flatten", u8, (2, 3, 4), 44, 0.05, opset=11, axis=1)
    qdq_softmax("qdq_softmax_u8", (5, 64), 45)
    qdq_unary("qdq_hard_swish_u8", "HardSwish", 48)
    qdq_unary("qdq_hard_sigmoid_u8", "HardSigmoid", 49, alpha=0.1666667, beta=0.5)
    qdq_hard_swish_decomposed("qdq_hard_swish_decomposed_u8", 50)
    qdq_silu_i8("qdq_silu_scalar_arith_i8", 51)
    qdq_data_movement("qdq_split_resize_slice_u8", 52)
    qlinear_add_ties("qlinear_add_u8_all_ties", u8, 46, scalar_b=False)
    qlinear_add_ties("qlinear_add_i8_ties_scalar_b", i8, 47, scalar_b=True)
    # QLinearConv on beltbox's kernels: depthwise, grouped, strided, dilated, 1-D, SAME
    # padding, signed activations, unsigned weights with non-zero zero points, no bias.
    qlinear_conv("qlinear_conv_u8s8_depthwise", u8, i8, (1, 8, 9, 11), (8, 1, 3, 3), 35,
                 group=8, kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    qlinear_conv("qlinear_conv_u8s8_depthwise_s2", u8, i8, (2, 6, 10, 7), (6, 1, 3, 3), 36,
                 group=6, kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2])
    qlinear_conv("qlinear_conv_u8s8_pointwise", u8, i8, (1, 19, 5, 7), (37, 19, 1, 1), 37,
                 kernel_shape=[1, 1])
    qlinear_conv("qlinear_conv_i8s8_stem_s2", i8, i8, (1, 3, 15, 13), (10, 3, 3, 3), 38,
                 kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2])
    qlinear_conv("qlinear_conv_u8u8_group2_dilated", u8, u8, (1, 6, 12, 12), (4, 3, 3, 3), 39,
                 w_zp_nonzero=True, group=2, kernel_shape=[3, 3], dilations=[2, 2], pads=[2, 1, 0, 2])
    qlinear_conv("qlinear_conv_u8u8_1d_same_upper_nobias", u8, u8, (2, 5, 17), (7, 5, 4), 40,
                 w_zp_nonzero=True, bias=False, kernel_shape=[4], strides=[2], auto_pad="SAME_UPPER")
    qlinear_conv("qlinear_conv_u8s8_dynamic_batch", u8, i8, (3, 4, 6, 6), (5, 4, 3, 3), 41,
                 dynamic_batch=True, kernel_shape=[3, 3], pads=[0, 1, 1, 0])
    dequantize_per_channel("dequantize_per_channel_u8", u8, 22)
    dequantize_per_channel("dequantize_per_channel_i8", i8, 23)
    quantize_per_channel("quantize_per_channel_u8", u8, 24)
    quantize_per_channel("quantize_per_channel_i8", i8, 25)
    # Weight-style axis 0 and a negative axis, the other layouts per-axis quantisation meets.
    dequantize_per_channel("dequantize_per_channel_axis0_i8", i8, 26, shape=(4, 2, 3), axis=0)
    quantize_per_channel("quantize_per_channel_axis_last_u8", u8, 27, shape=(2, 3, 4), axis=-1)
    quantize_per_tensor_near_ties("quantize_per_tensor_near_ties_u8", 28)
    malformed("bad_qlinear_add_missing_inputs", "QLinearAdd", ["x", "s", "z", "x"])
    malformed("bad_qlinear_add_too_many_inputs", "QLinearAdd", ["x", "s", "z"] * 3)
    malformed("bad_qlinear_add_vector_scale", "QLinearAdd", ["x", "s", "z"] * 2 + ["s", "z"],
              scale_shape=(3,))
    malformed("bad_qlinear_concat_arity", "QLinearConcat", ["s", "z", "x", "s"], {"axis": 0})
    malformed("bad_qlinear_avgpool_no_kernel", "QLinearAveragePool", ["x", "s", "z", "s", "z"],
              x_shape=(1, 1, 4, 4))
    malformed("bad_qgemm_trans_a", "QGemm", ["x", "s", "z", "x", "s", "z", "", "s", "z"],
              {"transA": 2}, x_shape=(3, 3))
    with open(os.path.join(HERE, "VERSIONS.txt"), "w") as f:
        f.write(f"onnx {onnx.__version__}\nonnxruntime {ort.__version__}\nnumpy {np.__version__}\n")


# Case names given on the command line: only those are written (the others, notably the u8s8
# conv/gemm references, stay as committed; see the machine caveat above).
ONLY = set(sys.argv[1:])

if __name__ == "__main__":
    main()
