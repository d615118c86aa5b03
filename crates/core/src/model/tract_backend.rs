//! ONNX through tract: parse, register our contrib ops, pin the input fact from the
//! manifest, optimise, and keep a small pool of run states so repeated inferences reuse
//! their buffers instead of re-allocating them.

use std::io::Cursor;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex};

use tract_core::runtime::RunOptions;
use tract_linalg::multithread::Executor;
use tract_onnx::prelude::*;

use super::backend::{Backend, BackendError, OpCounts, OpTime};
use crate::manifest::Manifest;
use crate::tensor::{DType, Tensor as BbTensor, TensorData};
use beltbox_tract::{onnx_ops, qconv, qdq, shapes};

/// tract is pinned to this exact version in Cargo.toml (`=0.23.9`); logged at load.
pub const TRACT_VERSION: &str = "0.23.9";

type Plan = Arc<TypedRunnableModel>;
type State = TypedSimpleState;

pub struct TractBackend {
    plan: Plan,
    /// Every dynamic dimension at its declared maximum: the RAM plan is made there.
    at_max: SymbolValues,
    /// For each graph input, in graph order, the index of its manifest input: a manifest
    /// may list the inputs in any order, requests name them.
    graph_order: Vec<usize>,
    /// Idle run states. A state owns its intermediate buffers; reusing one avoids
    /// allocating every activation tensor on every frame.
    states: Mutex<Vec<State>>,
}

// tract's `DatumType` names its variants as `TensorData` does (F32, I64, Bool...), so the
// conversions are generated from the one dtype table.
macro_rules! tract_conversions {
    ($(($d:ident, $v:ident, $t:ty, $name:literal, $npy:literal)),* $(,)?) => {
        fn dt(d: DType) -> DatumType {
            match d {
                $(DType::$d => DatumType::$v,)*
            }
        }

        fn to_tract(t: &BbTensor) -> TractResult<Tensor> {
            match &t.data {
                $(TensorData::$v(v) => Tensor::from_shape(&t.shape, v),)*
            }
        }

        fn from_tract(t: &Tensor) -> Result<BbTensor, BackendError> {
            fn plain<D: Datum + Copy>(t: &Tensor) -> Result<Vec<D>, BackendError> {
                let view = t
                    .to_plain_array_view::<D>()
                    .map_err(|e| BackendError::Run(root_cause(&e)))?;
                Ok(view.iter().copied().collect())
            }
            let data = match t.datum_type() {
                $(DatumType::$v => TensorData::$v(plain::<$t>(t)?),)*
                other => {
                    return Err(BackendError::Run(format!(
                        "the model produced a {other:?} tensor; beltbox passes on {}",
                        DType::ALL.iter().map(|d| d.name()).collect::<Vec<_>>().join(", ")
                    )))
                }
            };
            Ok(BbTensor::new(t.shape().to_vec(), data))
        }
    };
}
crate::tensor::dtypes!(tract_conversions);

/// A symbol name tract's expression parser accepts (assertions are parsed from text):
/// unique per graph input slot and axis, readable in tract's messages.
fn symbol_name(slot: usize, input: &str, axis: usize) -> String {
    let clean: String = input
        .chars()
        .take(32)
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("in{slot}_{clean}_{axis}")
}

/// tract is third-party code fed untrusted bytes: a panic inside it must become an error,
/// never take the process down.
fn contain<T>(what: &str, f: impl FnOnce() -> TractResult<T>) -> Result<T, String> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("{what}: {}", root_cause(&e))),
        Err(panic) => {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            Err(format!("{what}: tract panicked ({msg})"))
        }
    }
}

/// anyhow chains read best as "outer context: inner cause".
fn root_cause(e: &TractError) -> String {
    e.chain()
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(": ")
}

/// tract's ONNX framework with beltbox's ops: the contrib ops and the integer QLinearConv.
pub fn framework() -> tract_onnx::Onnx {
    let mut onnx = tract_onnx::onnx();
    onnx_ops::register(&mut onnx);
    qconv::register(&mut onnx);
    onnx
}

impl TractBackend {
    pub fn load(
        bytes: &[u8],
        manifest: &Manifest,
        threads: usize,
    ) -> Result<TractBackend, BackendError> {
        let dynamic = manifest.inputs.iter().any(|i| i.is_dynamic());
        let (model, qdq_stats) = contain("cannot parse the ONNX model", || {
            let onnx = framework();
            let mut proto = onnx.proto_model_for_read(&mut Cursor::new(bytes))?;
            // The manifest's input shape is the one truth about shapes (see `shapes`).
            shapes::forget_symbolic_dims(&mut proto);
            if dynamic {
                shapes::forget_inner_shapes(&mut proto);
            }
            let stats = qdq::rewrite(&mut proto);
            Ok((onnx.model_for_proto_model(&proto)?, stats))
        })
        .map_err(BackendError::Load)?;
        if qdq_stats.fused_total() > 0 || !qdq_stats.left_float.is_empty() {
            log::debug!(
                "QDQ groups fused into integer ops: {:?}; left in float: {:?}",
                qdq_stats.fused,
                qdq_stats.left_float
            );
        }

        let inputs = model
            .input_outlets()
            .map_err(|e| BackendError::Load(e.to_string()))?;
        let graph_names: Vec<String> = inputs
            .iter()
            .map(|i| model.node(i.node).name.clone())
            .collect();
        let mut graph_order = Vec::with_capacity(graph_names.len());
        for name in &graph_names {
            match manifest.inputs.iter().position(|s| &s.name == name) {
                Some(i) => graph_order.push(i),
                None => {
                    let listed: Vec<&str> =
                        manifest.inputs.iter().map(|s| s.name.as_str()).collect();
                    return Err(BackendError::Mismatch(format!(
                        "the graph has an input `{name}` that the manifest does not list \
                         (manifest inputs: {}; graph inputs: {})",
                        listed.join(", "),
                        graph_names.join(", ")
                    )));
                }
            }
        }
        if graph_order.len() != manifest.inputs.len() {
            let extra: Vec<&str> = manifest
                .inputs
                .iter()
                .filter(|s| !graph_names.contains(&s.name))
                .map(|s| s.name.as_str())
                .collect();
            return Err(BackendError::Mismatch(format!(
                "the manifest lists input(s) {} that the graph does not have (graph inputs: {})",
                extra.join(", "),
                graph_names.join(", ")
            )));
        }
        let outputs = model
            .output_outlets()
            .map_err(|e| BackendError::Load(e.to_string()))?;
        if outputs.len() != manifest.outputs.len() {
            return Err(BackendError::Mismatch(format!(
                "the graph has {} outputs but the manifest lists {}",
                outputs.len(),
                manifest.outputs.len()
            )));
        }
        for (i, (outlet, o)) in outputs.iter().zip(&manifest.outputs).enumerate() {
            let name = model
                .outlet_label(*outlet)
                .unwrap_or(&model.node(outlet.node).name);
            if name != o.name {
                return Err(BackendError::Mismatch(format!(
                    "manifest outputs[{i}].name is `{}` but the graph's output is `{name}`",
                    o.name
                )));
            }
        }

        // A declared range makes its dimension a symbol (bounded by assertions, which
        // lets tract simplify shape expressions); tract resolves it from each request's
        // tensors. Fixed dimensions stay integers, so a static model optimises as before.
        let symbols = model.symbols.clone();
        let mut at_shape = SymbolValues::default();
        let mut at_max = SymbolValues::default();
        let mut facts = Vec::with_capacity(graph_order.len());
        for (slot, &i) in graph_order.iter().enumerate() {
            let spec = &manifest.inputs[i];
            let mut dims: TVec<TDim> = spec.shape.iter().map(|&d| d.to_dim()).collect();
            for axis in spec.dynamic_axes() {
                // A stepped dimension is `step × k`: tract can then prove what the model
                // relies on (a YOLO's 2 × ceil(h/32) == ceil(h/16) holds for h = 32k only).
                let name = symbol_name(slot, &spec.name, axis);
                let sym = symbols.sym(&name);
                let step = spec.step(axis);
                let (lo, hi) = (spec.min()[axis] / step, spec.max()[axis] / step);
                for a in [format!("{name}>={lo}"), format!("{name}<={hi}")] {
                    symbols
                        .add_assertion(a)
                        .map_err(|e| BackendError::Load(root_cause(&e)))?;
                }
                at_shape.set(&sym, (spec.shape[axis] / step) as i64);
                at_max.set(&sym, hi as i64);
                dims[axis] = TDim::Sym(sym) * step as i64;
            }
            facts.push((dt(spec.dtype), dims));
        }
        let typed = contain("cannot prepare the ONNX model", move || {
            let mut model = model;
            for (slot, (datum, shape)) in facts.into_iter().enumerate() {
                model = model.with_input_fact(slot, InferenceFact::dt_shape(datum, shape))?;
            }
            let mut typed = model.into_optimized()?;
            beltbox_tract::upsample::replace_byte_upsamples(&mut typed)?;
            Ok(typed)
        })
        .map_err(|e| match dynamic {
            // The usual cause: a shape baked into the graph (ORT's `quant_pre_process`
            // with a fixed input folds Reshape targets to constants).
            true => BackendError::Load(format!(
                "{e} (with the dynamic dimensions min_shape/max_shape declare: the graph \
                 fixes a shape somewhere, e.g. a Reshape to a constant shape; export the \
                 model with dynamic axes, give the range a `shape_step` the model needs, or \
                 drop the range)"
            )),
            false => BackendError::Load(e),
        })?;

        for (i, o) in manifest.outputs.iter().enumerate() {
            let fact = typed
                .output_fact(i)
                .map_err(|e| BackendError::Load(e.to_string()))?;
            // At `shape` (the golden samples' shape) the output must be the manifest's.
            let got = fact.shape.eval_to_usize(&at_shape).ok().map(|s| s.to_vec());
            if got.as_deref() != Some(&o.shape[..]) {
                return Err(BackendError::Mismatch(format!(
                    "manifest outputs[{i}].shape is {:?} but the graph produces {:?}",
                    o.shape, fact.shape
                )));
            }
        }

        let executor = if threads > 1 {
            Some(Executor::multithread(threads))
        } else {
            Some(Executor::SingleThread)
        };
        let options = RunOptions {
            executor,
            ..Default::default()
        };
        let plan = contain("cannot plan the ONNX model", || {
            typed.into_runnable_with_options(&options)
        })
        .map_err(BackendError::Load)?;
        Ok(TractBackend {
            plan,
            at_max,
            graph_order,
            states: Mutex::new(Vec::new()),
        })
    }

    /// The optimised graph (for planning and reports).
    pub fn typed_model(&self) -> &TypedModel {
        self.plan.model()
    }

    /// The request's tensors (manifest order) in the graph's input order.
    fn graph_inputs(&self, inputs: &[BbTensor]) -> Result<TVec<TValue>, BackendError> {
        if inputs.len() != self.graph_order.len() {
            return Err(BackendError::Run(format!(
                "{} input tensor(s) given, the model takes {}",
                inputs.len(),
                self.graph_order.len()
            )));
        }
        self.graph_order
            .iter()
            .map(|&i| {
                to_tract(&inputs[i])
                    .map(|t| t.into_tvalue())
                    .map_err(|e| BackendError::Run(root_cause(&e)))
            })
            .collect()
    }

    /// The runnable plan: its execution order drives the RAM plan's liveness analysis.
    pub fn runnable(&self) -> &TypedRunnableModel {
        &self.plan
    }

    /// The value of every dynamic dimension at its maximum (empty for a static model):
    /// the shapes the RAM plan sizes buffers for.
    pub fn planned_dims(&self) -> &SymbolValues {
        &self.at_max
    }
}

impl Backend for TractBackend {
    fn run(&self, inputs: &[BbTensor]) -> Result<Vec<BbTensor>, BackendError> {
        let values = self.graph_inputs(inputs)?;
        let pooled = self.states.lock().ok().and_then(|mut s| s.pop());
        let mut state = match pooled {
            Some(s) => s,
            None => self
                .plan
                .spawn()
                .map_err(|e| BackendError::Run(root_cause(&e)))?,
        };
        let out = contain("inference failed", || state.run(values)).map_err(BackendError::Run)?;
        let result = out.iter().map(|v| from_tract(v)).collect();
        if let Ok(mut s) = self.states.lock() {
            s.push(state);
        }
        result
    }

    fn name(&self) -> &'static str {
        "tract"
    }

    fn runtime_version(&self) -> String {
        format!("tract {TRACT_VERSION}")
    }

    fn op_counts(&self) -> Option<OpCounts> {
        let model = self.plan.model();
        let mut counts = OpCounts::default();
        for &id in self.plan.order_without_consts() {
            let node = model.node(id);
            if node.op_is::<tract_core::ops::source::TypedSource>() {
                continue;
            }
            let inputs: Vec<&TypedFact> = node
                .inputs
                .iter()
                .filter_map(|i| model.outlet_fact(*i).ok())
                .collect();
            let outputs: Vec<&TypedFact> = node.outputs.iter().map(|o| &o.fact).collect();
            // A conversion: one tensor in, one out, same shape, float on exactly one side
            // (quantise, dequantise, cast). Counted apart: they are the boundaries of the
            // integer regions, not float compute.
            let conversion = match (inputs.as_slice(), outputs.as_slice()) {
                ([i], [o]) => {
                    i.shape == o.shape && i.datum_type.is_float() != o.datum_type.is_float()
                }
                _ => false,
            };
            let (tally, by_op) = if conversion {
                (&mut counts.conversions, &mut counts.conversion_ops)
            } else if inputs
                .iter()
                .chain(&outputs)
                .any(|f| f.datum_type.is_float())
            {
                (&mut counts.float, &mut counts.float_ops)
            } else {
                counts.integer += 1;
                continue;
            };
            *tally += 1;
            *by_op.entry(node.op.name().to_string()).or_default() += 1;
        }
        Some(counts)
    }

    fn profile(
        &self,
        inputs: &[BbTensor],
        runs: usize,
    ) -> Result<Option<Vec<OpTime>>, BackendError> {
        let values = self.graph_inputs(inputs)?;
        let model = self.plan.model();
        let mut per_node = vec![std::time::Duration::ZERO; model.nodes().len()];
        let mut state = self
            .plan
            .spawn()
            .map_err(|e| BackendError::Run(root_cause(&e)))?;
        for _ in 0..runs.max(1) {
            let input = values.clone();
            contain("profiled inference failed", || {
                state.run_plan_with_eval(input, |ctx, op_state, node, inputs| {
                    let t = std::time::Instant::now();
                    let r = tract_core::plan::eval(ctx, op_state, node, inputs);
                    per_node[node.id] += t.elapsed();
                    r
                })
            })
            .map_err(BackendError::Run)?;
        }
        let mut by_op: std::collections::HashMap<String, (usize, std::time::Duration)> =
            Default::default();
        for (id, d) in per_node.iter().enumerate() {
            let node = model.node(id);
            if node.op_is::<tract_core::ops::konst::Const>()
                || node.op_is::<tract_core::ops::source::TypedSource>()
            {
                continue;
            }
            let e = by_op.entry(node.op.name().to_string()).or_default();
            e.0 += 1;
            e.1 += *d;
        }
        let total: f64 = by_op.values().map(|(_, d)| d.as_secs_f64()).sum();
        let mut out: Vec<OpTime> = by_op
            .into_iter()
            .map(|(op, (nodes, d))| OpTime {
                op,
                nodes,
                ms_per_run: d.as_secs_f64() * 1e3 / runs.max(1) as f64,
                share: if total > 0.0 {
                    d.as_secs_f64() / total
                } else {
                    0.0
                },
            })
            .collect();
        out.sort_by(|a, b| b.ms_per_run.total_cmp(&a.ms_per_run));
        Ok(Some(out))
    }
}
