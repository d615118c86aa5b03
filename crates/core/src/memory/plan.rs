//! The RAM plan: what a loaded model will cost, computed before (or instead of) serving.
//!
//! Pure code over plain numbers ([`GraphFacts`], [`PreprocessFacts`]); the tract adapter
//! ([`super::graph`]) and the CLI gather those numbers. Components:
//!
//! | component | source | exact or estimate |
//! |---|---|---|
//! | weights | `Const` tensors + packed constant matmul operands of the *optimised* graph | exact |
//! | activations | liveness over the execution order, sizes from each outlet's fact, in-place ops and views modelled | exact for the schedule tract runs |
//! | graph | model structures: base + per node | measured constants |
//! | scratch | tract-linalg per-thread matmul scratch | measured per-thread constant |
//! | preprocessing | decode + colour + resize + normalise + quantise buffers | exact for the stated frame size |
//! | load transient | parse + optimise, before the parsed model is dropped | fitted to file size and node count |
//! | runtime | binary, libc, allocator arena, stacks, backend code pages (RSS) | measured constants |
//!
//! Heap phases: load (weights + graph + transient), then serving (weights + graph +
//! scratch + one request: the larger of preprocessing and input tensor + activations).
//! The plan's peak heap is the larger phase; its total adds the runtime overhead.

use serde::Serialize;

/// One node of the optimised plan, in execution order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// tract node id.
    pub node: usize,
    pub name: String,
    pub op: String,
    /// Node ids this step reads (constants among them are ignored by the liveness).
    pub inputs: Vec<usize>,
    /// Bytes of all of this node's outputs (allocated when the node runs).
    pub output_bytes: u64,
    /// Bytes the op allocates for itself while it runs and frees before the next step
    /// (beltbox's integer convolution: im2col and packed activations).
    pub scratch_bytes: u64,
    pub alias: Alias,
}

/// How a step's output relates to an input's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Alias {
    /// A fresh buffer.
    #[default]
    None,
    /// Computed in place in this input's buffer when this step is the input's last use
    /// (the runtime then holds the only reference); a fresh buffer otherwise.
    MayReuse(usize),
    /// A view that keeps this input alive for as long as the output lives.
    Views(usize),
}

/// What the backend adapter extracts from an optimised model.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GraphFacts {
    /// Bytes of every constant tensor after optimisation.
    pub weights_bytes: u64,
    /// Bytes of the original weights beltbox's integer ops packed from while loading: the
    /// parsed model holds them until the load ends, next to the packed copy (counted in
    /// `weights_bytes`), so they add to the load transient.
    pub packed_at_load_bytes: u64,
    pub const_count: usize,
    /// All nodes, constants included (drives the graph-structure estimate).
    pub node_count: usize,
    /// Non-constant nodes in execution order.
    pub steps: Vec<Step>,
    /// Nodes whose outputs are the model outputs (kept until the run returns).
    pub outputs: Vec<usize>,
}

/// Result of the liveness analysis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Liveness {
    /// Highest sum of live intermediate bytes over the schedule.
    pub peak_bytes: u64,
    /// Index (into the steps) of the step at which the peak occurs.
    pub peak_step: Option<usize>,
    /// Sum of all intermediate tensors (what a run without freeing would hold).
    pub sum_bytes: u64,
}

/// Liveness over a schedule, mirroring how tract's `SimpleState` runs a plan: a node's
/// outputs are allocated when it runs; the values of a node are dropped after the last
/// step that reads them (tract flushes them from its table just before that step, but the
/// step still holds them as inputs while it computes, so they are live during it); model
/// outputs, and values nobody reads, live until the run returns. Inputs that are not
/// steps (constants) are weights, not activations. [`Alias`] refines this: an in-place
/// step takes over its dying input's buffer instead of allocating; a view keeps its
/// source alive until the view itself dies.
pub fn liveness(steps: &[Step], outputs: &[usize]) -> Liveness {
    const END: usize = usize::MAX;
    let index: std::collections::HashMap<usize, usize> =
        steps.iter().enumerate().map(|(i, s)| (s.node, i)).collect();
    // Step after which each step's values can go; END = never during the run.
    let mut last_use: Vec<usize> = vec![END; steps.len()];
    let mut consumed = vec![false; steps.len()];
    for (i, s) in steps.iter().enumerate() {
        for n in &s.inputs {
            if let Some(&p) = index.get(n) {
                last_use[p] = if consumed[p] { last_use[p].max(i) } else { i };
                consumed[p] = true;
            }
        }
    }
    for o in outputs {
        if let Some(&p) = index.get(o) {
            last_use[p] = END;
        }
    }
    // Views extend their source's life to their own last use. Steps run in order, so a
    // view's last use is final by the time we look at it (chains of views propagate
    // back-to-front).
    for i in (0..steps.len()).rev() {
        if let Alias::Views(src) = steps[i].alias {
            if let Some(&p) = index.get(&src) {
                last_use[p] = last_use[p].max(last_use[i]);
            }
        }
    }
    // An in-place step inherits its input's buffer only if the input dies there.
    let in_place: Vec<Option<usize>> = steps
        .iter()
        .enumerate()
        .map(|(i, s)| match s.alias {
            Alias::MayReuse(src) => index.get(&src).copied().filter(|&p| last_use[p] == i),
            _ => None,
        })
        .collect();
    let mut free_after: Vec<Vec<usize>> = vec![Vec::new(); steps.len()];
    let handed_over: std::collections::HashSet<usize> =
        in_place.iter().flatten().copied().collect();
    for (p, &at) in last_use.iter().enumerate() {
        if at != END && !handed_over.contains(&p) {
            free_after[at].push(p);
        }
    }
    let mut live = 0u64;
    let mut out = Liveness::default();
    for (i, s) in steps.iter().enumerate() {
        match in_place[i] {
            // The buffer changes hands: no new bytes (sizes match by construction;
            // saturate anyway so odd facts cannot underflow).
            Some(p) => live = (live + s.output_bytes).saturating_sub(steps[p].output_bytes),
            None => live += s.output_bytes,
        }
        out.sum_bytes += s.output_bytes;
        let during = live + s.scratch_bytes;
        if during > out.peak_bytes || out.peak_step.is_none() {
            out.peak_bytes = during;
            out.peak_step = Some(i);
        }
        for &p in &free_after[i] {
            live -= steps[p].output_bytes;
        }
    }
    out
}

/// The input pipeline's buffers for one frame (`preprocess::prepare` on an image).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PreprocessFacts {
    /// Decoded frame the plan assumes (the camera's frame, or the model input size).
    pub frame_width: u64,
    pub frame_height: u64,
    /// Channels of the decoded frame (1 gray, 3 RGB).
    pub frame_channels: u64,
    /// Model input tensor (height, width, channels) and element size.
    pub tensor_height: u64,
    pub tensor_width: u64,
    pub tensor_channels: u64,
    pub tensor_elem_bytes: u64,
}

impl PreprocessFacts {
    /// The prepared model input tensor.
    pub fn tensor_bytes(&self) -> u64 {
        self.tensor_height * self.tensor_width * self.tensor_channels * self.tensor_elem_bytes
    }

    /// Bytes alive at the end of `preprocess::from_image`, all of which coexist: the
    /// encoded frame (bounded by its raw size, 1 byte/sample), the decoded samples (`u16`),
    /// the resized frame (`f32`, a copy even at equal size; colour conversion is read
    /// through, not built), the normalised tensor (`f32`) and the quantised tensor
    /// (element size).
    pub fn bytes(&self) -> u64 {
        let frame = self.frame_width * self.frame_height;
        let tensor = self.tensor_height * self.tensor_width * self.tensor_channels;
        frame * self.frame_channels // encoded input
            + frame * self.frame_channels * 2 // decoded u16 samples
            + tensor * 4 // resized f32
            + tensor * 4 // normalised f32, final layout
            + if self.tensor_elem_bytes == 4 { 0 } else { tensor * self.tensor_elem_bytes }
    }
}

// Measured constants. All come from `tests/bench/plan-accuracy.sh` runs on the x86-64 dev
// box, fitted over the six bundled ONNX models; docs/memory.md has the numbers. The heap
// constants hold for both builds (measured on the test profile, checked on release); the
// RSS constants (idle process, backend code) differ by build and are given for each. They
// must be re-measured for aarch64 (code size and allocator behaviour differ).

/// Heap of a loaded model that is not weights: the `Model` (manifest, labels, golden
/// report), the pooled run state, logger, CLI. Fitted intercept, rounded up.
pub const GRAPH_BASE_BYTES: u64 = 64 * 1024;
/// Heap per node of the optimised graph (node, op box, facts, names, plan tables):
/// (live heap after load − weights) / nodes, fitted over 29..1094-node graphs = 3.45 KiB.
pub const GRAPH_BYTES_PER_NODE: u64 = 3584;
/// Per intra-op thread: tract-linalg's thread-local matmul scratch and the executor's
/// per-thread state. Measured as the serving-peak difference between --threads 2 and 1:
/// 19–24 KiB on every bundled model (the blob is tile-sized, not model-sized).
pub const SCRATCH_BYTES_PER_THREAD: u64 = 24 * 1024;
/// Load transient: the protobuf, the inference model and the typed model coexist with the
/// optimised one while `into_optimized` runs. Least-squares fit of
/// (load peak − steady model heap) = 1.91 × file + 10.7 KiB × nodes; we use 2 × file +
/// 10 KiB × nodes (max error −2 % on the mobilenets, over-estimates the tiny digits).
pub const LOAD_TRANSIENT_PER_FILE_BYTE: f64 = 2.0;
pub const LOAD_TRANSIENT_PER_NODE: u64 = 10 * 1024;
/// RSS of a `beltbox` process that loads nothing (binary, libc, allocator arena, main
/// stack): VmHWM of `beltbox board list`. Release build (what ships): 6844–7668 KiB over
/// 4 runs, 7 MiB taken; the test-profile build is larger (8860 KiB), and the plan follows
/// the build it runs in.
pub const RUNTIME_IDLE_BYTES: u64 = if cfg!(debug_assertions) {
    8860 * 1024
} else {
    7 * 1024 * 1024
};
/// Code pages of the backend touched by a first inference (file-backed, shared,
/// reclaimable, but counted in RSS): VmHWM − heap peak − idle for the smallest model
/// (digits-fp32). Release: VmHWM 19.27–21.92 MB over 9 runs of the shipped (no-feature) and
/// the `tflite` builds, middle 20.6 MB − 0.58 MB − 7.34 MB = 12.7 MB ≈ 12.25 MiB; test
/// profile: 23.36 MiB − 0.58 MiB − 8.65 MiB ≈ 14.1 MiB, rounded up. VmHWM of one binary
/// varies by about ±5 % from run to run on the dev box.
/// x86_64 measurements (docs/memory.md); aarch64 has not been measured on silicon.
pub const RUNTIME_BACKEND_CODE_BYTES: u64 = if cfg!(debug_assertions) {
    14_848 * 1024
} else {
    12_544 * 1024
};
/// RSS per intra-op thread beyond the first (touched stack, thread-local arena): VmHWM
/// difference between --threads 2 and 1 on the digits models, 0.57–0.70 MiB.
pub const RUNTIME_BYTES_PER_EXTRA_THREAD: u64 = 720 * 1024;

/// The LiteRT backend instead of tract's code: `libLiteRt.so`'s touched code and the heap it
/// allocates itself (its C++ allocations do not go through beltbox's counting allocator).
/// digits-int8-tflite, release: VmHWM 14.29–14.65 MiB − idle 7 MiB − counted heap peak
/// 0.12 MiB ≈ 7.4 MiB, rounded up. One small model measured: a large model's arena is in the
/// plan's activation estimate, not here.
pub const RUNTIME_LITERT_BYTES: u64 = 7680 * 1024;

/// LiteRT's arena and XNNPACK's packed weights and workspace, per byte of the model input
/// tensor: a CNN's early activations are several times its input. Fitted on the two real
/// float TFLite models (face-detection-short-range: 3.4 MiB of VmHWM above the old estimate
/// for a 0.19 MiB input; face-landmark: 7.9 MiB for 0.42 MiB, both ≈ 18.5 × the input, 2 ×
/// was planned), release build, docs/memory.md. Two models make a fit, not a law: a
/// TFLite plan is an estimate and says so (`file_size_estimate`).
pub const TFLITE_ARENA_PER_INPUT_BYTE: u64 = 20;

/// Runtime overhead of a tract-backed model for `threads` intra-op threads.
pub fn runtime_bytes(threads: u64) -> u64 {
    RUNTIME_IDLE_BYTES
        + RUNTIME_BACKEND_CODE_BYTES
        + threads.saturating_sub(1) * RUNTIME_BYTES_PER_EXTRA_THREAD
}

/// Runtime overhead of a LiteRT-backed model: the process without tract's code pages, plus
/// LiteRT's own.
pub fn litert_runtime_bytes(threads: u64) -> u64 {
    RUNTIME_IDLE_BYTES
        + RUNTIME_LITERT_BYTES
        + threads.saturating_sub(1) * RUNTIME_BYTES_PER_EXTRA_THREAD
}

/// How the plan was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PlanBasis {
    /// Liveness over the optimised tract plan.
    OptimisedGraph,
    /// TFLite: file size + an arena estimate (the C API does not expose the arena plan).
    FileSizeEstimate,
}

/// The RAM plan of one model on one configuration. All sizes in bytes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plan {
    pub model: String,
    pub version: String,
    pub basis: PlanBasis,
    pub threads: usize,
    pub weights_bytes: u64,
    pub activation_bytes: u64,
    /// Name and op of the node at which activations peak.
    pub activation_peak_at: Option<String>,
    pub graph_bytes: u64,
    pub scratch_bytes: u64,
    pub preprocess_bytes: u64,
    pub preprocess: Option<PreprocessFacts>,
    /// The prepared input tensor, alive during the backend run (the intermediates of
    /// preprocessing are not).
    pub input_tensor_bytes: u64,
    /// Extra heap held only while loading (parse + optimise), released after.
    pub load_transient_bytes: u64,
    pub runtime_bytes: u64,
}

/// What goes into a plan besides the graph.
#[derive(Debug, Clone)]
pub struct PlanInputs {
    pub model: String,
    pub version: String,
    pub threads: usize,
    pub model_file_bytes: u64,
    pub preprocess: PreprocessFacts,
}

impl Plan {
    /// From the optimised graph.
    pub fn from_graph(inp: &PlanInputs, g: &GraphFacts) -> Plan {
        let live = liveness(&g.steps, &g.outputs);
        let threads = inp.threads.max(1) as u64;
        Plan {
            model: inp.model.clone(),
            version: inp.version.clone(),
            basis: PlanBasis::OptimisedGraph,
            threads: inp.threads,
            weights_bytes: g.weights_bytes,
            activation_bytes: live.peak_bytes,
            activation_peak_at: live
                .peak_step
                .and_then(|i| g.steps.get(i))
                .map(|s| format!("{} ({})", s.name, s.op)),
            graph_bytes: GRAPH_BASE_BYTES + g.node_count as u64 * GRAPH_BYTES_PER_NODE,
            scratch_bytes: threads * SCRATCH_BYTES_PER_THREAD,
            preprocess_bytes: inp.preprocess.bytes(),
            preprocess: Some(inp.preprocess),
            input_tensor_bytes: inp.preprocess.tensor_bytes(),
            load_transient_bytes: (inp.model_file_bytes as f64 * LOAD_TRANSIENT_PER_FILE_BYTE)
                as u64
                + g.node_count as u64 * LOAD_TRANSIENT_PER_NODE
                + g.packed_at_load_bytes,
            runtime_bytes: runtime_bytes(threads),
        }
    }

    /// TFLite: LiteRT keeps the flatbuffer (weights) mapped/read and plans its tensor
    /// arena internally; the C API does not expose that plan. Estimate: weights = file
    /// size; arena = [`TFLITE_ARENA_PER_INPUT_BYTE`] × the model input tensor + the file
    /// size / 4. Labelled `file_size_estimate`.
    pub fn tflite_estimate(inp: &PlanInputs) -> Plan {
        let threads = inp.threads.max(1) as u64;
        let p = &inp.preprocess;
        let input = p.tensor_bytes();
        Plan {
            model: inp.model.clone(),
            version: inp.version.clone(),
            basis: PlanBasis::FileSizeEstimate,
            threads: inp.threads,
            weights_bytes: inp.model_file_bytes,
            activation_bytes: TFLITE_ARENA_PER_INPUT_BYTE * input + inp.model_file_bytes / 4,
            activation_peak_at: None,
            graph_bytes: GRAPH_BASE_BYTES,
            scratch_bytes: threads * SCRATCH_BYTES_PER_THREAD,
            preprocess_bytes: p.bytes(),
            preprocess: Some(*p),
            input_tensor_bytes: p.tensor_bytes(),
            load_transient_bytes: inp.model_file_bytes,
            runtime_bytes: litert_runtime_bytes(threads),
        }
    }

    /// Heap of one in-flight frame: preprocessing runs first and frees its
    /// intermediates; then the backend runs with the prepared tensor alive. The larger
    /// of the two phases. Admission control reserves this per concurrent request.
    pub fn per_request_bytes(&self) -> u64 {
        self.preprocess_bytes
            .max(self.input_tensor_bytes + self.activation_bytes)
    }

    /// Heap held while serving one frame at a time: weights, graph, scratch and one
    /// in-flight frame. This is what the counting allocator's high-water mark is compared
    /// with during inference.
    pub fn steady_heap_bytes(&self) -> u64 {
        self.weights_bytes + self.graph_bytes + self.scratch_bytes + self.per_request_bytes()
    }

    /// Highest heap over load + serving: loading adds its transient on top of the weights
    /// and graph being built, before any frame is in flight.
    pub fn peak_heap_bytes(&self) -> u64 {
        let load = self.weights_bytes + self.graph_bytes + self.load_transient_bytes;
        load.max(self.steady_heap_bytes())
    }

    /// The number checked against budgets: peak heap + runtime overhead.
    pub fn total_bytes(&self) -> u64 {
        self.peak_heap_bytes() + self.runtime_bytes
    }

    /// What this model adds to a process that already runs another model: everything but
    /// the shared runtime overhead.
    pub fn model_bytes(&self) -> u64 {
        self.peak_heap_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(node: usize, inputs: &[usize], bytes: u64) -> Step {
        Step {
            node,
            name: format!("n{node}"),
            op: "Op".into(),
            inputs: inputs.to_vec(),
            output_bytes: bytes,
            scratch_bytes: 0,
            alias: Alias::None,
        }
    }

    fn aliased(node: usize, inputs: &[usize], bytes: u64, alias: Alias) -> Step {
        Step {
            alias,
            ..step(node, inputs, bytes)
        }
    }

    /// (name, steps, outputs, expected peak, expected peak step)
    type LivenessCase = (&'static str, Vec<Step>, Vec<usize>, u64, Option<usize>);

    #[test]
    fn liveness_table() {
        // (name, steps, outputs, expected peak, expected peak step)
        let cases: Vec<LivenessCase> = vec![
            ("empty", vec![], vec![], 0, None),
            (
                "single source is output",
                vec![step(0, &[], 10)],
                vec![0],
                10,
                Some(0),
            ),
            (
                // a -> b -> c: b's step holds a and b; c's step holds b and c.
                "chain frees after last use",
                vec![step(0, &[], 100), step(1, &[0], 10), step(2, &[1], 1)],
                vec![2],
                110,
                Some(1),
            ),
            (
                // a feeds b and c: a lives until c has run.
                "fan-out keeps the producer until its last consumer",
                vec![
                    step(0, &[], 100),
                    step(1, &[0], 50),
                    step(2, &[0], 50),
                    step(3, &[1, 2], 1),
                ],
                vec![3],
                200,
                Some(2),
            ),
            (
                // the source is an output: never freed during the run.
                "outputs stay live to the end",
                vec![step(0, &[], 100), step(1, &[0], 10), step(2, &[1], 10)],
                vec![0, 2],
                120,
                Some(2),
            ),
            (
                // node 1 is read by nobody: tract keeps its value until the run returns.
                "unread values stay live",
                vec![
                    step(0, &[], 5),
                    step(1, &[0], 100),
                    step(2, &[0], 1),
                    step(3, &[2], 1),
                ],
                vec![3],
                106,
                Some(2),
            ),
            (
                // inputs that are not steps (constants) are ignored.
                "constants are not activations",
                vec![step(0, &[], 8), step(2, &[0, 99], 8)],
                vec![2],
                16,
                Some(1),
            ),
        ];
        let mut cases = cases;
        cases.extend([
            (
                // b reshapes a in place (a dies at b): no new buffer.
                "in place when the input dies",
                vec![
                    step(0, &[], 100),
                    aliased(1, &[0], 100, Alias::MayReuse(0)),
                    step(2, &[1], 1),
                ],
                vec![2],
                101,
                Some(2),
            ),
            (
                // a is still read by c: b must copy.
                "copy when the input lives on",
                vec![
                    step(0, &[], 100),
                    aliased(1, &[0], 100, Alias::MayReuse(0)),
                    step(2, &[0, 1], 1),
                ],
                vec![2],
                201,
                Some(2),
            ),
            (
                // v views a; a must live until v's consumer c has run.
                "views keep their source alive",
                vec![
                    step(0, &[], 100),
                    aliased(1, &[0], 0, Alias::Views(0)),
                    step(2, &[1], 50),
                    step(3, &[2], 1),
                ],
                vec![3],
                150,
                Some(2),
            ),
        ]);
        for (name, steps, outputs, peak, at) in cases {
            let l = liveness(&steps, &outputs);
            assert_eq!((l.peak_bytes, l.peak_step), (peak, at), "{name}");
            assert_eq!(
                l.sum_bytes,
                steps.iter().map(|s| s.output_bytes).sum::<u64>(),
                "{name}"
            );
        }
    }

    #[test]
    fn preprocess_bytes_spelled_out() {
        // 640x480 RGB frame into a 224x224x3 int8 tensor.
        let p = PreprocessFacts {
            frame_width: 640,
            frame_height: 480,
            frame_channels: 3,
            tensor_height: 224,
            tensor_width: 224,
            tensor_channels: 3,
            tensor_elem_bytes: 1,
        };
        let frame = 640 * 480;
        let t = 224 * 224 * 3;
        assert_eq!(p.bytes(), frame * 3 + frame * 6 + t * 4 + t * 4 + t);
        // f32 models hand the normalised tensor over as is: no extra quantised copy.
        let f = PreprocessFacts {
            tensor_elem_bytes: 4,
            ..p
        };
        assert_eq!(f.bytes(), p.bytes() - t);
    }

    #[test]
    fn totals_take_the_larger_of_load_and_serving() {
        let inp = PlanInputs {
            model: "m".into(),
            version: "1.0.0".into(),
            threads: 2,
            model_file_bytes: 1000,
            preprocess: PreprocessFacts {
                frame_width: 8,
                frame_height: 8,
                frame_channels: 1,
                tensor_height: 8,
                tensor_width: 8,
                tensor_channels: 1,
                tensor_elem_bytes: 4,
            },
        };
        let g = GraphFacts {
            weights_bytes: 500,
            packed_at_load_bytes: 0,
            const_count: 1,
            node_count: 3,
            steps: vec![step(0, &[], 256), step(1, &[0, 2], 40)],
            outputs: vec![1],
        };
        let p = Plan::from_graph(&inp, &g);
        assert_eq!(p.activation_bytes, 296);
        assert_eq!(p.activation_peak_at.as_deref(), Some("n1 (Op)"));
        // 8x8x1 f32: preprocessing encoded 64 B + u16 128 B + resized and normalised
        // 256 B each (no quantised copy) vs input 256 B + 296 B.
        assert_eq!(p.preprocess_bytes, 64 + 128 + 256 * 2);
        assert_eq!(p.per_request_bytes(), 704);
        assert_eq!(
            p.steady_heap_bytes(),
            500 + p.graph_bytes + p.scratch_bytes + 704
        );
        let load = 500 + p.graph_bytes + 2000 + 3 * LOAD_TRANSIENT_PER_NODE;
        assert_eq!(p.load_transient_bytes, 2000 + 3 * LOAD_TRANSIENT_PER_NODE);
        assert_eq!(p.peak_heap_bytes(), p.steady_heap_bytes().max(load));
        assert_eq!(p.total_bytes(), p.peak_heap_bytes() + p.runtime_bytes);
        assert_eq!(
            Plan::tflite_estimate(&inp).basis,
            PlanBasis::FileSizeEstimate
        );
    }
}
