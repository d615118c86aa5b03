//! QDQ -> QOperator: integer ops for `DequantizeLinear -> op -> QuantizeLinear` groups.
//!
//! A QDQ model states its integer intent as float ops wrapped in quantise/dequantise pairs;
//! tract runs them as written (float compute, plus Q/DQ work at every layer), which made QDQ
//! slower than FP32. ONNX Runtime fuses such groups into QLinear ops before running; this pass
//! does the same on the ONNX graph, before tract parses it, so that the integer paths
//! (`crate::qconv`, the contrib ops of `crate::onnx_ops`, tract's `QLinearMatMul`) run them:
//!
//! | group | becomes |
//! |---|---|
//! | DQ(x), DQ(w const), DQ(b i32 const)? -> Conv [-> Relu/Clip] -> Q | `QLinearConv` |
//! | DQ(a), DQ(b const), DQ(c i32 const)? -> Gemm -> Q | `QGemm` |
//! | DQ(a), DQ(b) -> MatMul -> Q | `QLinearMatMul` |
//! | DQ(a), DQ(b) -> Add / Mul -> Q | `QLinearAdd` / `QLinearMul` |
//! | DQ(x) -> GlobalAveragePool / AveragePool -> Q | `QLinearGlobalAveragePool` / `QLinearAveragePool` |
//! | DQ(x) -> Sigmoid / LeakyRelu -> Q | `QLinearSigmoid` / `QLinearLeakyRelu` |
//! | DQ(x) -> Softmax -> Q | `QLinearSoftmax` (with the model's opset, as ORT's fusion does) |
//! | DQ(x) -> HardSigmoid / HardSwish -> Q | `BeltboxQHardSigmoid` / `BeltboxQHardSwish` (domain `ai.beltbox`: a 256-entry table of the float group, exact) |
//! | DQ(x) -> Add / Sub / Mul / Div with a float scalar initializer -> Q | `BeltboxQScalarArith` (`ai.beltbox`, a table too; ORT runs it in float) |
//! | DQ(x_i)... -> Concat -> Q | `QLinearConcat` |
//! | DQ(x) -> Flatten / Reshape / Transpose / Squeeze / Unsqueeze / MaxPool / Slice / Gather / Expand / Tile / DepthToSpace / SpaceToDepth / Resize (nearest) -> Q, same params | the op on the integers |
//! | DQ(x) -> Split -> Q on every output, same params | Split on the integers |
//!
//! After parsing, the integer element-wise ops fold further in the typed graph
//! (`onnx_ops::elementwise`): an op whose result is a function of one 8-bit tensor (a scalar
//! operand, or `x * table(x)` as in SiLU and HardSwish) becomes one 256-entry table, and
//! consecutive tables compose.
//!
//! A group is fused only when the result is the one ONNX Runtime computes: quantisation
//! parameters are initializers, activations per-tensor, the float op's output feeds only the
//! `QuantizeLinear`, a bias is int32 with scale `x_scale * w_scale`, and a Relu/Clip is
//! dropped only when the output quantisation already clamps at least as tightly. Everything
//! else stays as written and runs in float: [`Stats`] counts both, and `beltbox bench`
//! reports the integer/float split of the final plan.

use std::collections::{BTreeMap, HashMap, HashSet};

use tract_onnx::pb::{
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto,
};

/// What the pass did to one model.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Fused groups by the op they became.
    pub fused: BTreeMap<String, usize>,
    /// Float ops left between DequantizeLinear and QuantizeLinear (by op type).
    pub left_float: BTreeMap<String, usize>,
}

impl Stats {
    pub fn fused_total(&self) -> usize {
        self.fused.values().sum()
    }
}

/// ONNX TensorProto data types used here.
const FLOAT: i32 = 1;
const UINT8: i32 = 2;
const INT8: i32 = 3;
const INT32: i32 = 6;

/// Domain of the integer ops beltbox adds where ONNX Runtime has no contrib op.
pub const BELTBOX_DOMAIN: &str = "ai.beltbox";

/// Rewrites the main graph of `model` in place.
pub fn rewrite(model: &mut ModelProto) -> Stats {
    let mut stats = Stats::default();
    // The default domain's opset: QLinearSoftmax must know which Softmax semantics it
    // replaces (before opset 13 Softmax flattened its input at `axis`).
    let opset = model
        .opset_import
        .iter()
        .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
        .map_or(13, |o| o.version);
    let Some(graph) = model.graph.as_mut() else {
        return stats;
    };
    let domains = Rewriter::new(graph, opset).run(&mut stats);
    for domain in domains {
        if !model.opset_import.iter().any(|o| o.domain == domain) {
            model
                .opset_import
                .push(OperatorSetIdProto { domain, version: 1 });
        }
    }
    stats
}

/// A `DequantizeLinear` feeding a float op.
#[derive(Debug, Clone)]
struct Dq {
    q: String,
    scale: String,
    zp: Option<String>,
    axis: Option<i64>,
}

/// The `QuantizeLinear` a float op's output goes to.
#[derive(Debug, Clone)]
struct Q {
    node: usize,
    out: String,
    scale: String,
    zp: String,
}

struct Rewriter<'g> {
    graph: &'g mut GraphProto,
    /// The model's default-domain opset version.
    opset: i64,
    inits: HashMap<String, usize>,
    producer: HashMap<String, usize>,
    uses: HashMap<String, usize>,
    /// Nodes removed by a fusion (their outputs are produced by the fused node now).
    dead: HashSet<usize>,
    /// Initializers the pass adds (zero points a DequantizeLinear left implicit).
    new_inits: Vec<TensorProto>,
    /// (float output that disappeared, the quantised output replacing it, its data type).
    renamed: Vec<(String, String, i32)>,
}

impl<'g> Rewriter<'g> {
    fn new(graph: &'g mut GraphProto, opset: i64) -> Rewriter<'g> {
        let inits = graph
            .initializer
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        let mut producer = HashMap::new();
        let mut uses: HashMap<String, usize> = HashMap::new();
        for (i, n) in graph.node.iter().enumerate() {
            for o in &n.output {
                producer.insert(o.clone(), i);
            }
            for inp in n.input.iter().filter(|s| !s.is_empty()) {
                *uses.entry(inp.clone()).or_default() += 1;
            }
        }
        for o in &graph.output {
            // A graph output is a use nobody can rewire.
            *uses.entry(o.name.clone()).or_default() += 1;
        }
        Rewriter {
            graph,
            opset,
            inits,
            producer,
            uses,
            dead: HashSet::new(),
            new_inits: Vec::new(),
            renamed: Vec::new(),
        }
    }

    /// Returns the non-default domains of the ops it emitted.
    fn run(mut self, stats: &mut Stats) -> HashSet<String> {
        let mut domains = HashSet::new();
        for i in 0..self.graph.node.len() {
            if self.dead.contains(&i) {
                continue;
            }
            let op = self.graph.node[i].op_type.clone();
            if !self.graph.node[i].domain.is_empty() && self.graph.node[i].domain != "ai.onnx" {
                continue;
            }
            let fused = match op.as_str() {
                "Conv" => self.conv(i),
                "Gemm" => self.gemm(i),
                "MatMul" => self.binary(i, "QLinearMatMul", ""),
                "Add" => self
                    .binary(i, "QLinearAdd", "com.microsoft")
                    .or_else(|| self.scalar_arith(i)),
                "Mul" => self
                    .binary(i, "QLinearMul", "com.microsoft")
                    .or_else(|| self.scalar_arith(i)),
                // ORT runs these in float per element; with a scalar constant the group is a
                // function of one 8-bit code (HardSwish's `/ 6`, YOLO's `* 2`).
                "Sub" | "Div" => self.scalar_arith(i),
                "GlobalAveragePool" => {
                    self.unary(i, "QLinearGlobalAveragePool", &[("channels_last", 0)])
                }
                "AveragePool" => self.unary(i, "QLinearAveragePool", &[]),
                "Sigmoid" => self.unary(i, "QLinearSigmoid", &[]),
                "LeakyRelu" => self.unary(i, "QLinearLeakyRelu", &[]),
                // No ORT contrib op exists for these (ORT runs the group in float, per
                // element); a function of one 8-bit code is exactly a 256-entry table.
                "HardSigmoid" => self.unary_in(i, "BeltboxQHardSigmoid", BELTBOX_DOMAIN, &[]),
                "HardSwish" => self.unary_in(i, "BeltboxQHardSwish", BELTBOX_DOMAIN, &[]),
                "Softmax" => self.softmax(i),
                "Concat" => self.concat(i),
                "Flatten" | "Reshape" | "Transpose" | "Squeeze" | "Unsqueeze" | "MaxPool"
                | "Slice" | "Gather" | "Expand" | "Tile" | "DepthToSpace" | "SpaceToDepth" => {
                    self.passthrough(i)
                }
                // Nearest-neighbour resizing only copies values; the other modes interpolate,
                // and tf_crop_and_resize writes a float extrapolation value the codes lack.
                "Resize"
                    if string_attr(&self.graph.node[i], "mode").is_none_or(|m| m == "nearest")
                        && string_attr(&self.graph.node[i], "coordinate_transformation_mode")
                            .is_none_or(|m| m != "tf_crop_and_resize") =>
                {
                    self.passthrough(i)
                }
                "Split" => self.split(i),
                _ => None,
            };
            match fused {
                Some(name) => {
                    let domain = &self.graph.node[i].domain;
                    if !domain.is_empty() {
                        domains.insert(domain.clone());
                    }
                    *stats.fused.entry(name).or_default() += 1;
                }
                None => {
                    if self.is_between_dq_and_q(i) {
                        *stats.left_float.entry(op).or_default() += 1;
                    }
                }
            }
        }
        self.graph.initializer.append(&mut self.new_inits);
        self.carry_value_info();
        let dead = std::mem::take(&mut self.dead);
        let mut i = 0;
        self.graph.node.retain(|_| {
            i += 1;
            !dead.contains(&(i - 1))
        });
        prune_dead_nodes(self.graph);
        domains
    }

    fn init(&self, name: &str) -> Option<&TensorProto> {
        self.inits.get(name).map(|&i| &self.graph.initializer[i])
    }

    fn is_scalar_init(&self, name: &str) -> bool {
        self.init(name)
            .is_some_and(|t| t.dims.iter().product::<i64>() == 1)
    }

    /// The DequantizeLinear producing `tensor`, with initializer scale/zero point.
    fn dq(&self, tensor: &str) -> Option<Dq> {
        let n = &self.graph.node[*self.producer.get(tensor)?];
        if n.op_type != "DequantizeLinear" || n.input.len() < 2 {
            return None;
        }
        self.init(&n.input[1])?;
        let zp = n.input.get(2).filter(|s| !s.is_empty()).cloned();
        if let Some(zp) = &zp {
            self.init(zp)?;
        }
        Some(Dq {
            q: n.input[0].clone(),
            scale: n.input[1].clone(),
            zp,
            axis: int_attr(n, "axis"),
        })
    }

    /// An activation DQ: per-tensor scale and an explicit zero point (its type is the
    /// activation's, which an absent zero point would leave unknown).
    fn dq_act(&self, tensor: &str) -> Option<Dq> {
        let d = self.dq(tensor)?;
        (self.is_scalar_init(&d.scale) && d.zp.as_deref().is_some_and(|z| self.is_scalar_init(z)))
            .then_some(d)
    }

    /// A constant DQ (weights, bias): the quantised tensor is an initializer too.
    fn dq_const(&self, tensor: &str) -> Option<Dq> {
        let d = self.dq(tensor)?;
        self.init(&d.q)?;
        Some(d)
    }

    /// The single QuantizeLinear consuming `tensor` (and nothing else consuming it).
    fn q_after(&self, tensor: &str) -> Option<Q> {
        let i = self.single_consumer(tensor)?;
        let n = &self.graph.node[i];
        if n.op_type != "QuantizeLinear" || n.input.len() < 3 || n.input[0] != tensor {
            return None;
        }
        let (scale, zp) = (n.input[1].clone(), n.input[2].clone());
        if !self.is_scalar_init(&scale) || !self.is_scalar_init(&zp) {
            return None;
        }
        Some(Q {
            node: i,
            out: n.output.first()?.clone(),
            scale,
            zp,
        })
    }

    /// The zero point of a constant DQ, materialised when the DQ left it implicit.
    fn zp_or_zero(&mut self, d: &Dq) -> Option<String> {
        if let Some(z) = &d.zp {
            return Some(z.clone());
        }
        let q = self.init(&d.q)?;
        let scale = self.init(&d.scale)?;
        let len = scale.dims.iter().product::<i64>().max(1) as usize;
        let name = format!("{}_zero_point_beltbox", d.q);
        self.new_inits.push(TensorProto {
            name: name.clone(),
            data_type: q.data_type,
            dims: scale.dims.clone(),
            raw_data: vec![0u8; len],
            ..Default::default()
        });
        Some(name)
    }

    /// Replaces node `i` by `op_type` with `inputs`, writing `q.out`, and drops the Q node.
    fn replace(
        &mut self,
        i: usize,
        q: &Q,
        op_type: &str,
        domain: &str,
        inputs: Vec<String>,
        extra: Vec<AttributeProto>,
    ) {
        let dt = self.init(&q.zp).map_or(UINT8, |t| t.data_type);
        if let Some(old) = self.graph.node[i].output.first() {
            self.renamed.push((old.clone(), q.out.clone(), dt));
        }
        let node = &mut self.graph.node[i];
        node.op_type = op_type.into();
        node.domain = domain.into();
        node.input = inputs;
        node.output = vec![q.out.clone()];
        node.attribute.extend(extra);
        self.dead.insert(q.node);
    }

    /// The float output's declared shape now describes the fused op's output: keep it, so
    /// tract still checks the graph against the shapes the exporter wrote down.
    fn carry_value_info(&mut self) {
        let declared: HashSet<String> = self
            .graph
            .value_info
            .iter()
            .map(|v| v.name.clone())
            .collect();
        let mut added = Vec::new();
        for (old, new, dt) in &self.renamed {
            if declared.contains(new) {
                continue;
            }
            if let Some(v) = self.graph.value_info.iter().find(|v| &v.name == old) {
                let mut v = v.clone();
                v.name = new.clone();
                if let Some(tract_onnx::pb::type_proto::Value::TensorType(t)) =
                    v.r#type.as_mut().and_then(|t| t.value.as_mut())
                {
                    t.elem_type = *dt;
                }
                added.push(v);
            }
        }
        self.graph.value_info.extend(added);
    }

    fn conv(&mut self, i: usize) -> Option<String> {
        let n = self.graph.node[i].clone();
        let x = self.dq_act(n.input.first()?)?;
        let w = self.dq_const(n.input.get(1)?)?;
        let w_q = self.init(&w.q)?;
        if !matches!(w_q.data_type, INT8 | UINT8)
            || w.axis.unwrap_or(1) != 0 && !self.is_scalar_init(&w.scale)
        {
            return None;
        }
        let bias = match n.input.get(2).filter(|s| !s.is_empty()) {
            Some(b) => Some(self.bias(b, &x, &w)?),
            None => None,
        };
        // Conv [-> Relu | Clip] -> Q; the activation only when the Q makes it redundant.
        let out = n.output.first()?.clone();
        let (q, activation) = match self.q_after(&out) {
            Some(q) => (q, None),
            None => {
                let next = self.single_consumer(&out)?;
                let act = self.graph.node[next].clone();
                let q = self.q_after(act.output.first()?)?;
                if !self.activation_is_redundant(&act, &q) {
                    return None;
                }
                (q, Some(next))
            }
        };
        let w_zp = self.zp_or_zero(&w)?;
        let mut inputs = vec![
            x.q,
            x.scale,
            x.zp?,
            w.q,
            w.scale,
            w_zp,
            q.scale.clone(),
            q.zp.clone(),
        ];
        inputs.extend(bias);
        self.replace(i, &q, "QLinearConv", "", inputs, vec![]);
        if let Some(a) = activation {
            self.dead.insert(a);
        }
        Some("QLinearConv".into())
    }

    /// An int32 bias DQ whose scale is `x_scale * w_scale` (what the integer op assumes).
    fn bias(&self, b: &str, x: &Dq, w: &Dq) -> Option<String> {
        let d = self.dq_const(b)?;
        if self.init(&d.q)?.data_type != INT32 {
            return None;
        }
        if let Some(z) = &d.zp {
            if ints(self.init(z)?)?.iter().any(|&v| v != 0) {
                return None;
            }
        }
        let bs = floats(self.init(&d.scale)?)?;
        let xs = floats(self.init(&x.scale)?)?.first().copied()?;
        let ws = floats(self.init(&w.scale)?)?;
        let close = |a: f32, b: f32| (a - b).abs() <= 1e-5 * a.abs().max(b.abs());
        let ok = match (bs.len(), ws.len()) {
            (n, m) if n == m => bs.iter().zip(&ws).all(|(&b, &w)| close(b, xs * w)),
            (1, _) => ws.iter().all(|&w| close(bs[0], xs * w)),
            _ => false,
        };
        ok.then_some(d.q)
    }

    /// Relu or Clip between an op and `q`, dropped only if `q` already clamps as tightly.
    fn activation_is_redundant(&self, act: &NodeProto, q: &Q) -> bool {
        let (Some(scale), Some(zp_t)) = (self.init(&q.scale), self.init(&q.zp)) else {
            return false;
        };
        let (Some(s), Some(zp)) = (
            floats(scale).and_then(|v| v.first().copied()),
            ints(zp_t).and_then(|v| v.first().copied()),
        ) else {
            return false;
        };
        let (qmin, qmax) = if zp_t.data_type == INT8 {
            (-128i64, 127i64)
        } else {
            (0, 255)
        };
        let lowest = (qmin - zp) as f32 * s;
        let highest = (qmax - zp) as f32 * s;
        match act.op_type.as_str() {
            "Relu" => lowest >= 0.0,
            "Clip" => {
                let bound = |attr: &str, input: usize, default: f32| -> Option<f32> {
                    match act.input.get(input).filter(|s| !s.is_empty()) {
                        Some(name) => floats(self.init(name)?)?.first().copied(),
                        None => Some(
                            act.attribute
                                .iter()
                                .find(|a| a.name == attr)
                                .map_or(default, |a| a.f),
                        ),
                    }
                };
                match (bound("min", 1, f32::MIN), bound("max", 2, f32::MAX)) {
                    (Some(lo), Some(hi)) => lo <= lowest && hi >= highest,
                    _ => false,
                }
            }
            _ => false,
        }
    }

    fn single_consumer(&self, tensor: &str) -> Option<usize> {
        if self.uses.get(tensor).copied() != Some(1) {
            return None;
        }
        self.graph
            .node
            .iter()
            .enumerate()
            .position(|(i, n)| !self.dead.contains(&i) && n.input.iter().any(|s| s == tensor))
    }

    fn gemm(&mut self, i: usize) -> Option<String> {
        let n = self.graph.node[i].clone();
        let a = self.dq_act(n.input.first()?)?;
        let b = self.dq_const(n.input.get(1)?)?;
        if !matches!(self.init(&b.q)?.data_type, INT8 | UINT8) {
            return None;
        }
        let c = match n.input.get(2).filter(|s| !s.is_empty()) {
            Some(c) => Some(self.bias(c, &a, &b)?),
            None => None,
        };
        let beta = n
            .attribute
            .iter()
            .find(|x| x.name == "beta")
            .map_or(1.0, |x| x.f);
        if c.is_some() && beta != 1.0 {
            return None;
        }
        let q = self.q_after(n.output.first()?)?;
        let b_zp = self.zp_or_zero(&b)?;
        let inputs = vec![
            a.q,
            a.scale,
            a.zp?,
            b.q,
            b.scale,
            b_zp,
            c.unwrap_or_default(),
            q.scale.clone(),
            q.zp.clone(),
        ];
        let keep: Vec<AttributeProto> = n
            .attribute
            .iter()
            .filter(|x| x.name != "beta")
            .cloned()
            .collect();
        self.graph.node[i].attribute = keep;
        self.replace(i, &q, "QGemm", "com.microsoft", inputs, vec![]);
        Some("QGemm".into())
    }

    /// Two quantised operands, per-tensor (either may be a constant).
    fn binary(&mut self, i: usize, op: &str, domain: &str) -> Option<String> {
        let n = self.graph.node[i].clone();
        if n.input.len() != 2 {
            return None;
        }
        let a = self.dq_act(&n.input[0])?;
        // Constant operands qualify too: `dq_act` asks per-tensor parameters, not a tensor
        // computed at run time.
        let b = self.dq_act(&n.input[1])?;
        let q = self.q_after(n.output.first()?)?;
        let inputs = vec![
            a.q,
            a.scale,
            a.zp?,
            b.q,
            b.scale,
            b.zp?,
            q.scale.clone(),
            q.zp.clone(),
        ];
        self.replace(i, &q, op, domain, inputs, vec![]);
        Some(op.into())
    }

    fn unary(&mut self, i: usize, op: &str, attrs: &[(&str, i64)]) -> Option<String> {
        self.unary_in(i, op, "com.microsoft", attrs)
    }

    fn unary_in(
        &mut self,
        i: usize,
        op: &str,
        domain: &str,
        attrs: &[(&str, i64)],
    ) -> Option<String> {
        let n = self.graph.node[i].clone();
        let x = self.dq_act(n.input.first()?)?;
        let q = self.q_after(n.output.first()?)?;
        let inputs = vec![x.q, x.scale, x.zp?, q.scale.clone(), q.zp.clone()];
        let extra = attrs
            .iter()
            .map(|(name, v)| int_attribute(name, *v))
            .collect();
        self.replace(i, &q, op, domain, inputs, extra);
        Some(op.into())
    }

    /// `DQ -> Softmax -> Q` becomes `QLinearSoftmax`, as ORT's QDQ fusion does (the node's
    /// `axis` is kept; `opset` tells the op which Softmax semantics it replaces).
    fn softmax(&mut self, i: usize) -> Option<String> {
        let axis = int_attr(&self.graph.node[i], "axis");
        let mut attrs = vec![("opset", self.opset)];
        attrs.extend(axis.map(|a| ("axis", a)));
        // `unary` extends the node's attributes, so drop the original axis first.
        let n = &mut self.graph.node[i];
        let before = n.attribute.clone();
        n.attribute.retain(|a| a.name != "axis");
        let fused = self.unary(i, "QLinearSoftmax", &attrs);
        if fused.is_none() {
            self.graph.node[i].attribute = before;
        }
        fused
    }

    fn concat(&mut self, i: usize) -> Option<String> {
        let n = self.graph.node[i].clone();
        let parts: Vec<Dq> = n
            .input
            .iter()
            .map(|t| self.dq_act(t))
            .collect::<Option<_>>()?;
        let q = self.q_after(n.output.first()?)?;
        let mut inputs = vec![q.scale.clone(), q.zp.clone()];
        for p in parts {
            inputs.extend([p.q, p.scale, p.zp?]);
        }
        self.replace(i, &q, "QLinearConcat", "com.microsoft", inputs, vec![]);
        Some("QLinearConcat".into())
    }

    /// Layout ops and MaxPool commute with quantisation when the Q undoes the DQ exactly.
    fn passthrough(&mut self, i: usize) -> Option<String> {
        let n = self.graph.node[i].clone();
        let x = self.dq_act(n.input.first()?)?;
        let q = self.q_after(n.output.first()?)?;
        if !self.same_params(&x, &q)? {
            return None;
        }
        let mut inputs = n.input.clone();
        inputs[0] = x.q;
        let (op, domain) = (n.op_type.clone(), n.domain.clone());
        self.replace(i, &q, &op, &domain, inputs, vec![]);
        Some(op)
    }

    /// `DQ(x) -> Add/Sub/Mul/Div with a float scalar initializer -> Q` becomes
    /// `BeltboxQScalarArith` (a 256-entry table of the float group, exact).
    fn scalar_arith(&mut self, i: usize) -> Option<String> {
        let n = self.graph.node[i].clone();
        if n.input.len() != 2 {
            return None;
        }
        let (x_side, k_side) = if self.dq(&n.input[0]).is_some() {
            (0, 1)
        } else {
            (1, 0)
        };
        let k = self.init(&n.input[k_side])?;
        // Rank 0 or 1 only, so the constant never adds axes to the output.
        let value = match floats(k)?.as_slice() {
            [v] if k.dims.len() <= 1 => *v,
            _ => return None,
        };
        let x = self.dq_act(&n.input[x_side])?;
        let q = self.q_after(n.output.first()?)?;
        let inputs = vec![x.q, x.scale, x.zp?, q.scale.clone(), q.zp.clone()];
        let extra = vec![
            string_attribute("op", &n.op_type),
            AttributeProto {
                name: "value".into(),
                r#type: 1,
                f: value,
                ..Default::default()
            },
            int_attribute("constant_first", i64::from(k_side == 0)),
        ];
        let op = "BeltboxQScalarArith";
        self.replace(i, &q, op, BELTBOX_DOMAIN, inputs, extra);
        Some(op.into())
    }

    /// `DQ(x) -> Split -> Q` on every output, each with x's parameters: Split on the
    /// integers (the values only move, so the Q undoes the DQ exactly).
    fn split(&mut self, i: usize) -> Option<String> {
        let n = self.graph.node[i].clone();
        let x = self.dq_act(n.input.first()?)?;
        let mut qs = Vec::new();
        for out in &n.output {
            let q = self.q_after(out)?;
            if !self.same_params(&x, &q)? {
                return None;
            }
            qs.push(q);
        }
        let dt = self.init(&qs.first()?.zp).map_or(UINT8, |t| t.data_type);
        for (old, q) in n.output.iter().zip(&qs) {
            self.renamed.push((old.clone(), q.out.clone(), dt));
            self.dead.insert(q.node);
        }
        let node = &mut self.graph.node[i];
        node.input[0] = x.q;
        node.output = qs.into_iter().map(|q| q.out).collect();
        Some("Split".into())
    }

    /// Whether `q` quantises with exactly `x`'s scale and zero point.
    fn same_params(&self, x: &Dq, q: &Q) -> Option<bool> {
        let same = |a: &str, b: &str| -> Option<bool> {
            let (a, b) = (self.init(a)?, self.init(b)?);
            Some(
                a.data_type == b.data_type
                    && floats(a).or_else(|| to_f32(ints(a)?))
                        == floats(b).or_else(|| to_f32(ints(b)?)),
            )
        };
        Some(same(&x.scale, &q.scale)? && same(x.zp.as_deref()?, &q.zp)?)
    }

    /// A float op reading a DequantizeLinear output (what the counters call "left in float").
    fn is_between_dq_and_q(&self, i: usize) -> bool {
        let n = &self.graph.node[i];
        n.op_type != "QuantizeLinear"
            && n.op_type != "DequantizeLinear"
            && n.input.iter().any(|t| {
                self.producer
                    .get(t)
                    .is_some_and(|&p| self.graph.node[p].op_type == "DequantizeLinear")
            })
    }
}

/// Removes nodes none of whose outputs is used (the DequantizeLinear of fused weights...).
fn prune_dead_nodes(graph: &mut GraphProto) {
    loop {
        let mut used: HashSet<&str> = graph.output.iter().map(|o| o.name.as_str()).collect();
        for n in &graph.node {
            used.extend(n.input.iter().map(String::as_str));
        }
        let before = graph.node.len();
        let keep: Vec<bool> = graph
            .node
            .iter()
            .map(|n| n.output.iter().any(|o| used.contains(o.as_str())))
            .collect();
        let mut k = keep.into_iter();
        graph.node.retain(|_| k.next().unwrap_or(true));
        if graph.node.len() == before {
            break;
        }
    }
}

fn int_attr(n: &NodeProto, name: &str) -> Option<i64> {
    n.attribute.iter().find(|a| a.name == name).map(|a| a.i)
}

fn string_attr(n: &NodeProto, name: &str) -> Option<String> {
    n.attribute
        .iter()
        .find(|a| a.name == name)
        .map(|a| String::from_utf8_lossy(&a.s).into_owned())
}

fn string_attribute(name: &str, v: &str) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: 3,
        s: v.as_bytes().to_vec(),
        ..Default::default()
    }
}

fn int_attribute(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: 2,
        i: v,
        ..Default::default()
    }
}

/// Float values of an initializer (FLOAT only).
fn floats(t: &TensorProto) -> Option<Vec<f32>> {
    if t.data_type != FLOAT {
        return None;
    }
    if !t.float_data.is_empty() {
        return Some(t.float_data.clone());
    }
    Some(
        t.raw_data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
    )
}

/// Integer values of an 8-bit or 32-bit initializer.
fn ints(t: &TensorProto) -> Option<Vec<i64>> {
    match t.data_type {
        UINT8 | INT8 | INT32 if !t.int32_data.is_empty() => {
            Some(t.int32_data.iter().map(|&v| v as i64).collect())
        }
        UINT8 => Some(t.raw_data.iter().map(|&v| v as i64).collect()),
        INT8 => Some(t.raw_data.iter().map(|&v| v as i8 as i64).collect()),
        INT32 => Some(
            t.raw_data
                .chunks_exact(4)
                .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64)
                .collect(),
        ),
        _ => None,
    }
}

fn to_f32(v: Vec<i64>) -> Option<Vec<f32>> {
    Some(v.into_iter().map(|x| x as f32).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_onnx::prelude::Framework;

    fn load(name: &str) -> ModelProto {
        let path = format!(
            "{}/../../models/{name}/model.onnx",
            env!("CARGO_MANIFEST_DIR")
        );
        tract_onnx::onnx()
            .proto_model_for_path(path)
            .expect("bundled model parses")
    }

    #[test]
    fn digits_qdq_becomes_qoperator_and_keeps_declared_shapes() {
        let mut m = load("digits-int8-qdq");
        let stats = rewrite(&mut m);
        assert_eq!(stats.fused.get("QLinearConv"), Some(&3), "{stats:?}");
        assert_eq!(stats.fused.get("QGemm"), Some(&1), "{stats:?}");
        assert!(stats.left_float.is_empty(), "{stats:?}");
        let g = m.graph.as_ref().expect("graph");
        let ops: Vec<&str> = g.node.iter().map(|n| n.op_type.as_str()).collect();
        assert!(!ops.contains(&"Conv") && !ops.contains(&"Gemm"), "{ops:?}");
        // One QuantizeLinear (the input) and one DequantizeLinear (the output) remain.
        assert_eq!(
            ops.iter().filter(|o| **o == "QuantizeLinear").count(),
            1,
            "{ops:?}"
        );
        assert_eq!(
            ops.iter().filter(|o| **o == "DequantizeLinear").count(),
            1,
            "{ops:?}"
        );
        let names: Vec<&str> = g.value_info.iter().map(|v| v.name.as_str()).collect();
        assert!(
            names.contains(&"conv1_relu_QuantizeLinear_Output"),
            "{names:?}"
        );
    }

    #[test]
    fn mobilenet_qdq_fuses_every_group() {
        let mut m = load("mobilenetv2-bench-int8-qdq");
        let stats = rewrite(&mut m);
        assert_eq!(stats.fused.get("QLinearConv"), Some(&52), "{stats:?}");
        assert_eq!(stats.fused.get("QLinearAdd"), Some(&10), "{stats:?}");
        assert!(stats.left_float.is_empty(), "{stats:?}");
    }
}
