//! Command-line interface (clap derive). Each subcommand lives in its own function and
//! returns `Result<(), CliError>`; `main` prints the error as one sentence and exits
//! with the error's code.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use beltbox_core::manifest::Task;
use beltbox_core::model::{LoadOptions, Model, ModelError};
use beltbox_core::preprocess::InputKind;
use beltbox_tools::bench::{self, BenchConfig};

mod ota;
mod plan;
mod serve;
mod thermal;

#[derive(Parser)]
#[command(
    name = "beltbox",
    version,
    about = "Lean INT8 inference runtime for ARM edge boxes on scanning belts",
    long_about = "Lean INT8 inference runtime for ARM edge boxes on scanning belts.\n\n\
A model is a package directory (manifest.toml + model + golden set); every load verifies \
each file's sha256 and runs the package's golden self-check before the model is used.\n\n\
Exit codes: 0 ok, 1 check failed, 2 usage or input error, 3 over budget.\n\
Logging: RUST_LOG=debug|info|warn (default info).",
    after_help = "Examples:\n  beltbox infer --model models/digits-int8-qdq --input models/digits-int8-qdq/golden/000.pgm\n  beltbox bench --model mobilenetv2-bench-int8-qdq --runs 50 --json"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one input (PNG, PGM, NPY tensor or raw tensor bytes): top-k classes, or the outputs.
    #[command(
        after_help = "Examples:\n  beltbox infer --model models/digits-fp32 --input models/digits-fp32/golden/000.pgm\n  beltbox infer --model digits-int8-qoperator --input frame.png --top-k 3 --json\n  beltbox infer --model ./my-detector --input frame.png --json   # boxes after NMS\n  beltbox infer --model ./my-detector --input frame.npy --output-npy out/   # every output tensor\n  beltbox infer --model ./two-inputs --input image=frame.npy --input scale_factor=sf.npy\n\n\
Inputs: PNG/PGM images are converted, resized and normalised as the manifest says; .npy \
holds the model's input tensor as is (float32 is quantised for int8 models); .raw/.bin are \
the tensor's bytes (little-endian).\n\n\
Outputs: classification outputs print their top-k classes; a package with [detection] \
prints its boxes (score, label, [x1, y1, x2, y2] in the input image's pixels, after NMS); every \
output prints its name, shape and value range. --json adds `detections` and each `raw` \
output's dequantised values; \
--output-npy writes every output tensor as DIR/<index>_<name>.npy (as the model produced \
it, quantised outputs as integers), to compare with your own reference."
    )]
    Infer {
        #[command(flatten)]
        model: ModelArgs,
        /// Input file (PNG, PGM, .npy, .raw/.bin); for a model with several inputs, one
        /// `--input NAME=FILE` per input.
        #[arg(long, value_name = "[NAME=]FILE", required = true)]
        input: Vec<String>,
        /// How many classes to report.
        #[arg(long, default_value_t = 5, value_name = "K")]
        top_k: usize,
        /// Machine-readable output (with the values of `raw` outputs).
        #[arg(long)]
        json: bool,
        /// Write every output tensor into DIR (created if missing) as <index>_<name>.npy.
        #[arg(long, value_name = "DIR")]
        output_npy: Option<PathBuf>,
    },
    /// Measure load time, per-stage latency percentiles and peak RSS.
    #[command(
        after_help = "Examples:\n  beltbox bench --model models/mobilenetv2-bench-int8-qdq --runs 100\n  beltbox bench --model digits-int8-tflite --threads 2 --json\n  beltbox bench --model mobilenetv2-bench-int8-qoperator --profile   # where the time goes\n\n\
Latency is measured per frame over --runs runs after --warmup runs, on the package's first \
golden input unless --input is given; percentiles are nearest-rank. JSON keys: load_ms, \
p50_ms, p95_ms, p99_ms (total), stages.{preprocess,inference,postprocess,total}, \
peak_rss_bytes, throughput_fps, op_counts.{integer,float,float_ops,conversions,conversion_ops} \
(graph nodes computing in integers, computing in floats, and converting between the two: \
quantise, dequantise, cast), profile[] (with --profile: op, nodes, ms_per_run, share)."
    )]
    Bench {
        #[command(flatten)]
        model: ModelArgs,
        /// Measured runs.
        #[arg(long, default_value_t = 100, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
        runs: u32,
        /// Unmeasured runs first (caches, allocator, CPU frequency).
        #[arg(long, default_value_t = 5, value_name = "N")]
        warmup: u32,
        /// Input file instead of the first golden sample (`NAME=FILE`, once per input, for
        /// a model with several inputs).
        #[arg(long, value_name = "[NAME=]FILE")]
        input: Vec<String>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        /// Also time every op type over N more runs and print where the time goes.
        #[arg(long, value_name = "N", num_args = 0..=1, default_missing_value = "20")]
        profile: Option<u32>,
    },
    /// Board profiles: list the bundled ones, show one or the detected board.
    #[command(
        after_help = "Examples:\n  beltbox board list\n  beltbox board show rk3588 --json\n  beltbox board show --sysfs-root tests/data/sysfs/rpi5"
    )]
    Board {
        #[command(subcommand)]
        action: thermal::BoardAction,
    },
    /// Thermal zones, temperatures, clocks and throttle state; burst and sustained p95
    /// and the governor when the service (or a soak) runs.
    #[command(
        after_help = "Examples:\n  beltbox thermal\n  beltbox thermal --sysfs-root tests/data/sysfs/rpi4-throttled --json\n\n\
Throttled means: a cpufreq policy capped below its hardware maximum, the hottest watched zone at \
or above the board's throttle point, or a vendor flag (Raspberry Pi get_throttled bits 0-3). \
Unreadable or odd sysfs files are reported once as warnings and skipped."
    )]
    Thermal(thermal::ThermalArgs),
    /// Reproducible thermal soak: ungoverned and governed runs back to back on the same
    /// load, against a fake sysfs driven by the runtime's own CPU use.
    #[command(
        after_help = "Examples:\n  beltbox soak\n  beltbox soak --long\n  beltbox soak --model mobilenetv2-bench-int8-qdq --fallback mobilenetv2-bench-fp32 --duration 90s --governed\n\n\
Prints burst p95, sustained p95, SLO violations, frames served and shed, model switches for each \
run as a Markdown table; exit code 1 when the targets are missed (governed sustained p95 <= SLO \
and <= 1.1x its burst p95, ungoverned over the SLO). See docs/thermal.md."
    )]
    Soak(thermal::SoakArgs),
    /// RAM plan: weights, activation peak, scratch, preprocessing, runtime overhead,
    /// total against the strictest budget (flag, manifest, board).
    #[command(
        after_help = "Examples:\n  beltbox plan --model digits-int8-qdq\n  beltbox plan --model mobilenetv2-bench-int8-qdq --board rpi4 --threads 2 --json\n  beltbox plan --model mobilenetv2-bench-fp32 --budget 64MiB\n\n\
Exit code 3 when the total exceeds the strictest budget (the breakdown is still printed); 2 for \
a malformed --budget (sizes: plain bytes, or K/M/G/T with optional iB/B, e.g. 512MiB, 1.5GiB, \
300M). See docs/memory.md for what each line means and how accurate it is."
    )]
    Plan(plan::PlanArgs),
    /// The service: KServe v2 HTTP API, Prometheus /metrics, systemd notify/watchdog.
    #[command(
        after_help = "Examples:\n  beltbox run\n  beltbox run --config /etc/beltbox/beltbox.toml\n  beltbox run --listen 127.0.0.1:9000 --listen unix:/tmp/beltbox.sock --model digits-int8-qoperator --workers 2\n\n\
With no config, serves the bundled default model (digits-int8-qdq) on 127.0.0.1:8080. Flags \
override the config. Every model is planned against the RAM budget before it loads (exit 3 if it \
does not fit), verified and golden-checked; then the service reports READY to systemd. SIGTERM \
drains in-flight requests and exits 0. Endpoints: /v2, /v2/health/{live,ready}, \
/v2/models/NAME[/versions/V][/ready|/infer], /metrics. See docs/service.md."
    )]
    Run(serve::RunArgs),
    /// Open-loop load against a running service (loopback only): throughput, latency
    /// percentiles and rejection rate per offered rate.
    #[command(
        after_help = "Examples:\n  beltbox loadgen\n  beltbox loadgen --model mobilenetv2-bench-int8-qdq --rates 10,50,100 --duration 10s\n  beltbox loadgen --input models/digits-int8-qdq/golden/003.pgm --json\n\n\
Latency is measured from when each request was due (open loop), so queueing shows up in the \
percentiles instead of slowing the generator down."
    )]
    Loadgen(serve::LoadgenArgs),

    /// Over-the-air model updates: signed channels, installs, status, rollback, publishing.
    #[command(
        after_help = "Examples:\n  beltbox ota pull --channel https://models.example.com/stable\n  beltbox ota install /media/usb/channel          # a channel on a USB stick, verified\n  beltbox ota install ./digits-2.0.0 --unsigned   # a package directory or .tar.gz, on site\n  beltbox ota status; beltbox ota history --model digits-int8-qdq\n  beltbox ota rollback digits-int8-qdq --reason \"misreads labels\"\n  beltbox ota channel-init ./channel --keys ./keys          # publisher, once\n  beltbox ota publish ./channel models/digits-int8-qdq --keys ./keys\n\n\
Every install verifies the channel's TUF metadata (signatures, thresholds, versions, expiry \
against the later of the clock and the box's time floor), the package's length and sha256, \
unpacks it refusing traversal, links and devices, refuses versions not newer than the serving \
one (--downgrade overrides), and qualifies it on this box (RAM alongside the serving model, \
golden self-check, top-1 floor, p95 SLO) before it is installed. Exit codes: 0 ok, 1 refused \
or failed a check, 2 usage or input error, 3 over the RAM budget. See docs/ota.md."
    )]
    Ota(ota::OtaArgs),
}

#[derive(clap::Args)]
struct ModelArgs {
    /// Model package: a directory, or the name of a bundled package (looked up in
    /// $BELTBOX_MODELS_DIR, ./models, /usr/share/beltbox/models).
    #[arg(long, value_name = "PKG")]
    model: String,
    /// Intra-op threads.
    #[arg(long, default_value_t = 1, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=256))]
    threads: u16,
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("{path}: cannot read input: {source}")]
    Input {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("--input: {0}")]
    InputArgs(String),
    #[error("model package `{0}` not found: give a package directory or the name of one in $BELTBOX_MODELS_DIR, ./models or /usr/share/beltbox/models")]
    ModelNotFound(String),
    #[error("cannot write output: {0}")]
    Output(std::io::Error),
    #[error("{path}: cannot write output tensor: {source}")]
    OutputFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Thermal(beltbox_core::thermal::ThermalError),
    #[error(transparent)]
    Soak(beltbox_tools::soak::SoakError),
    #[error(transparent)]
    Plan(plan::PlanError),
    #[error(transparent)]
    Run(serve::RunError),
    #[error(transparent)]
    Ota(ota::OtaError),
}

impl CliError {
    fn exit_code(&self) -> u8 {
        match self {
            CliError::Model(e) if !e.is_input_error() => 1,
            CliError::Output(_) => 1,
            CliError::Thermal(e) if !e.is_input_error() => 1,
            CliError::Soak(e) if !e.is_input_error() => 1,
            CliError::Plan(e) => e.exit_code(),
            CliError::Run(e) => e.exit_code(),
            CliError::Ota(e) => e.exit_code(),
            _ => 2,
        }
    }
}

/// Our own info lines, but only warnings from tract (its CPU probes log at info).
const DEFAULT_LOG_FILTER: &str =
    "info,tract_linalg=warn,tract_core=warn,tract_onnx=warn,tract_hir=warn";

pub fn init_logging() {
    let mut b = env_logger::Builder::from_env(
        env_logger::Env::default().default_filter_or(DEFAULT_LOG_FILTER),
    );
    // Under systemd, journald stamps every line itself, and reads a `<N>` syslog priority
    // prefix on each line (sd-daemon(3)): without it every line lands at the unit's
    // default priority and `journalctl -p warning` would miss our warnings.
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        b.format(|buf, record| {
            writeln!(
                buf,
                "<{}>{}: {}",
                syslog_priority(record.level()),
                record.target(),
                record.args()
            )
        });
    }
    b.target(env_logger::Target::Stderr).init();
}

/// sd-daemon priorities: 3 err, 4 warning, 6 info, 7 debug.
fn syslog_priority(level: log::Level) -> u8 {
    match level {
        log::Level::Error => 3,
        log::Level::Warn => 4,
        log::Level::Info => 6,
        log::Level::Debug | log::Level::Trace => 7,
    }
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Infer {
            model,
            input,
            top_k,
            json,
            output_npy,
        } => infer(&model, &input, top_k, json, output_npy.as_deref()),
        Command::Bench {
            model,
            runs,
            warmup,
            input,
            json,
            profile,
        } => bench_cmd(
            &model,
            runs as usize,
            warmup as usize,
            &input,
            json,
            profile.unwrap_or(0) as usize,
        ),
        Command::Board { action } => thermal::board_cmd(action),
        Command::Thermal(args) => thermal::thermal_cmd(&args),
        Command::Soak(args) => thermal::soak_cmd(&args),
        Command::Plan(args) => plan::plan_cmd(&args),
        Command::Run(args) => serve::run_cmd(&args),
        Command::Loadgen(args) => serve::loadgen_cmd(&args),
        Command::Ota(args) => ota::ota_cmd(&args).map_err(CliError::Ota),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// A package argument: an existing directory, else a bundled package name.
fn resolve_model(arg: &str) -> Result<PathBuf, CliError> {
    beltbox_core::model::package::resolve(arg, None)
        .ok_or_else(|| CliError::ModelNotFound(arg.to_string()))
}

fn load(args: &ModelArgs) -> Result<Model, CliError> {
    let dir = resolve_model(&args.model)?;
    Ok(Model::load(
        &dir,
        &LoadOptions {
            threads: args.threads as usize,
            ..LoadOptions::default()
        },
    )?)
}

fn read_input(path: &Path) -> Result<Vec<u8>, CliError> {
    std::fs::read(path).map_err(|source| CliError::Input {
        path: path.to_path_buf(),
        source,
    })
}

/// One input file read from disk, for the manifest input it feeds.
struct InputFile {
    path: PathBuf,
    bytes: Vec<u8>,
    kind: InputKind,
}

/// `--input` values -> one file per manifest input, in manifest order. A single-input model
/// takes a bare `FILE`; every input may be given as `NAME=FILE` (the form a model with
/// several inputs needs).
fn read_inputs(
    m: &beltbox_core::manifest::Manifest,
    args: &[String],
) -> Result<Vec<InputFile>, CliError> {
    let names: Vec<&str> = m.inputs.iter().map(|i| i.name.as_str()).collect();
    let mut paths: Vec<Option<PathBuf>> = vec![None; names.len()];
    for arg in args {
        // `NAME=FILE` only when NAME is one of the model's inputs: a path may hold `=`.
        let named = arg
            .split_once('=')
            .and_then(|(n, f)| names.iter().position(|x| *x == n).map(|i| (i, f)));
        let (slot, file) = match (named, names.len()) {
            (Some((i, f)), _) => (i, f),
            (None, 1) => (0, arg.as_str()),
            (None, _) => {
                return Err(CliError::InputArgs(format!(
                    "`{arg}`: model `{}` has {} inputs ({}); give each as NAME=FILE",
                    m.name,
                    names.len(),
                    names.join(", ")
                )))
            }
        };
        if paths[slot].is_some() {
            return Err(CliError::InputArgs(format!(
                "input `{}` is given twice",
                names[slot]
            )));
        }
        paths[slot] = Some(PathBuf::from(file));
    }
    names
        .iter()
        .zip(paths)
        .map(|(name, p)| {
            let path = p.ok_or_else(|| {
                CliError::InputArgs(format!(
                    "no file for input `{name}` of model `{}` (inputs: {})",
                    m.name,
                    names.join(", ")
                ))
            })?;
            let bytes = read_input(&path)?;
            let kind = InputKind::from_file_name(&path.to_string_lossy());
            Ok(InputFile { path, bytes, kind })
        })
        .collect()
}

/// A preprocessing error names the file it came from (the model error alone says only
/// "input: ..."); anything else stays a model error.
fn name_input_file(e: ModelError, files: &[InputFile]) -> CliError {
    match e {
        ModelError::Input(p) => {
            let path = match files {
                [one] => one.path.clone(),
                many => PathBuf::from(
                    many.iter()
                        .map(|f| f.path.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                ),
            };
            CliError::Input {
                path,
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, p.to_string()),
            }
        }
        other => other.into(),
    }
}

fn emit(text: &str) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{text}").map_err(CliError::Output)
}

/// Every output tensor as `dir/<index>_<name>.npy`, the name reduced to `[A-Za-z0-9._-]`
/// (graph names hold `/` and `:`).
fn write_outputs(
    dir: &Path,
    m: &beltbox_core::manifest::Manifest,
    outputs: &[beltbox_core::tensor::Tensor],
) -> Result<(), CliError> {
    let fail = |path: &Path, source: std::io::Error| CliError::OutputFile {
        path: path.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(|e| fail(dir, e))?;
    for (i, (spec, t)) in m.outputs.iter().zip(outputs).enumerate() {
        let name: String = spec
            .name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '.' | '-') {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let path = dir.join(format!("{i}_{name}.npy"));
        std::fs::write(&path, beltbox_core::npy::to_bytes(t)).map_err(|e| fail(&path, e))?;
    }
    Ok(())
}

fn to_json<T: serde::Serialize>(v: &T) -> String {
    // Serialising our own plain structs cannot fail; fall back to an empty object anyway.
    serde_json::to_string_pretty(v).unwrap_or_else(|_| "{}".into())
}

fn infer(
    args: &ModelArgs,
    input: &[String],
    top_k: usize,
    json: bool,
    output_npy: Option<&Path>,
) -> Result<(), CliError> {
    let model = load(args)?;
    let m = model.manifest();
    let files = read_inputs(m, input)?;
    let refs: Vec<(&[u8], InputKind)> = files.iter().map(|f| (&f.bytes[..], f.kind)).collect();
    let result = model
        .infer(&refs, top_k.max(1))
        .map_err(|e| name_input_file(e, &files))?;
    let input_names = files
        .iter()
        .map(|f| f.path.display().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    if let Some(dir) = output_npy {
        write_outputs(dir, m, &result.outputs)?;
    }
    let outputs: Vec<serde_json::Value> = m
        .outputs
        .iter()
        .zip(&result.outputs)
        .map(|(spec, t)| {
            let values = t.to_f32();
            let mut o = serde_json::json!({
                "name": spec.name,
                "task": match spec.task {
                    Task::Raw => "raw",
                    Task::Classification => "classification",
                    Task::Detection => "detection",
                },
                "shape": t.shape,
                "dtype": t.dtype().to_string(),
                "min": values.iter().copied().fold(f32::INFINITY, f32::min),
                "max": values.iter().copied().fold(f32::NEG_INFINITY, f32::max),
            });
            // Raw outputs are the answer; a detector's answer is `detections` (its tensors
            // can be large: --output-npy writes them).
            if spec.task == Task::Raw {
                o["values"] = serde_json::json!(values);
            }
            o
        })
        .collect();
    if json {
        let v = serde_json::json!({
            "model": m.name,
            "version": m.version.to_string(),
            "input": input_names,
            "top": result.classes,
            "detections": result.detections,
            "outputs": outputs,
            "timings_ms": {
                "preprocess": result.timings.preprocess_us as f64 / 1e3,
                "inference": result.timings.inference_us as f64 / 1e3,
                "postprocess": result.timings.postprocess_us as f64 / 1e3,
                "total": result.timings.total_us() as f64 / 1e3,
            },
            "backend": model.info.backend,
            "threads": model.info.threads,
        });
        emit(&to_json(&v))
    } else {
        let mut s = format!("{} {} on {}\n", m.name, m.version, input_names);
        for c in &result.classes {
            s.push_str(&format!(
                "  {:>5.1}%  {} (class {})\n",
                c.score * 100.0,
                c.label,
                c.index
            ));
        }
        if m.detection.is_some() {
            s.push_str(&format!("  {} detection(s)\n", result.detections.len()));
        }
        for d in &result.detections {
            s.push_str(&format!(
                "  {:>5.1}%  {} (class {}) at [{:.1}, {:.1}, {:.1}, {:.1}]\n",
                d.score * 100.0,
                d.label,
                d.class,
                d.bbox[0],
                d.bbox[1],
                d.bbox[2],
                d.bbox[3]
            ));
        }
        for o in &outputs {
            s.push_str(&format!(
                "  output {}: {} {} in [{}, {}]\n",
                o["name"].as_str().unwrap_or(""),
                o["dtype"].as_str().unwrap_or(""),
                o["shape"],
                o["min"],
                o["max"]
            ));
        }
        if let Some(dir) = output_npy {
            s.push_str(&format!("  outputs written to {}\n", dir.display()));
        }
        let t = result.timings;
        s.push_str(&format!(
            "  timings: preprocess {:.3} ms, inference {:.3} ms, postprocess {:.3} ms, total {:.3} ms",
            t.preprocess_us as f64 / 1e3,
            t.inference_us as f64 / 1e3,
            t.postprocess_us as f64 / 1e3,
            t.total_us() as f64 / 1e3
        ));
        emit(&s)
    }
}

fn bench_cmd(
    args: &ModelArgs,
    runs: usize,
    warmup: usize,
    input: &[String],
    json: bool,
    profile_runs: usize,
) -> Result<(), CliError> {
    let model = load(args)?;
    let files = if input.is_empty() {
        // Manifest validation guarantees at least one golden sample, one file per input.
        let m = model.manifest();
        let sample = &m.golden.samples[0];
        sample
            .inputs
            .iter()
            .map(|f| {
                Ok(InputFile {
                    path: PathBuf::from(f),
                    bytes: model.package.read(f).map_err(ModelError::from)?,
                    kind: InputKind::from_file_name(f),
                })
            })
            .collect::<Result<Vec<_>, CliError>>()?
    } else {
        read_inputs(model.manifest(), input)?
    };
    let name = files
        .iter()
        .map(|f| f.path.display().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let refs: Vec<(&[u8], InputKind)> = files.iter().map(|f| (&f.bytes[..], f.kind)).collect();
    let tty = std::io::stderr().is_terminal();
    let progress = move |done: usize, total: usize| {
        if tty {
            eprint!("\rbench: {done}/{total} runs");
        }
    };
    let report = bench::run(
        &model,
        &BenchConfig {
            runs,
            warmup,
            inputs: &refs,
            input_name: name,
            progress: &progress,
            profile_runs,
        },
    )?;
    if tty {
        eprint!("\r");
    }
    if json {
        return emit(&to_json(&report));
    }
    let s = &report.stages;
    let row = |n: &str, p: &beltbox_core::stats::Percentiles| {
        format!(
            "  {n:<12} {:>9.3} {:>9.3} {:>9.3} {:>9.3}\n",
            p.p50_ms, p.p95_ms, p.p99_ms, p.max_ms
        )
    };
    let mut out = format!(
        "{} {} ({} {}, {} {}, {} thread(s)) on {} [{}]\n  load {:.1} ms, golden self-check {:.1} ms, {} runs after {} warm-up\n  {:<12} {:>9} {:>9} {:>9} {:>9}\n",
        report.model, report.version, report.format, report.precision, report.backend, report.runtime,
        report.threads, report.arch, report.cpu_features.join(" "), report.load_ms, report.selfcheck_ms,
        report.runs, report.warmup, "stage (ms)", "p50", "p95", "p99", "max"
    );
    out.push_str(&row("preprocess", &s.preprocess));
    out.push_str(&row("inference", &s.inference));
    out.push_str(&row("postprocess", &s.postprocess));
    out.push_str(&row("total", &s.total));
    out.push_str(&format!(
        "  peak RSS {}, throughput {:.1} frames/s",
        report
            .peak_rss_bytes
            .map(|b| format!("{:.1} MiB", b as f64 / 1048576.0))
            .unwrap_or_else(|| "unknown".into()),
        report.throughput_fps
    ));
    if let Some(c) = &report.op_counts {
        let list = |ops: &std::collections::BTreeMap<String, usize>| -> String {
            let named: Vec<String> = ops.iter().map(|(op, n)| format!("{op} x{n}")).collect();
            match named.is_empty() {
                true => String::new(),
                false => format!(" ({})", named.join(", ")),
            }
        };
        out.push_str(&format!(
            "\n  nodes: {} integer, {} float{}, {} conversions{}",
            c.integer,
            c.float,
            list(&c.float_ops),
            c.conversions,
            list(&c.conversion_ops)
        ));
    }
    if let Some(p) = &report.profile {
        out.push_str(&format!(
            "\n  {:<28} {:>5} {:>10} {:>6}",
            "op (profiled)", "nodes", "ms/run", "share"
        ));
        for t in p.iter().take(15) {
            out.push_str(&format!(
                "\n  {:<28} {:>5} {:>10.3} {:>5.1}%",
                t.op,
                t.nodes,
                t.ms_per_run,
                t.share * 100.0
            ));
        }
    }
    emit(&out)
}
