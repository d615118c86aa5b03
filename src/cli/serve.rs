//! `beltbox run` (the service) and `beltbox loadgen` (open-loop load against it).

use std::path::PathBuf;
use std::time::Duration;

use beltbox::serve::{self, Config, Listen, ServeError};
use beltbox_tools::loadgen;

use super::{emit, to_json, CliError};

#[derive(clap::Args)]
pub struct RunArgs {
    /// Config file (TOML; see cross/beltbox.toml). Without one: the bundled default model
    /// on 127.0.0.1:8080.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Listen address, overriding the config: HOST:PORT or unix:/path (repeatable).
    #[arg(long, value_name = "ADDR")]
    listen: Vec<String>,
    /// Model package to serve, overriding the config (repeatable; the first is the default).
    #[arg(long, value_name = "PKG")]
    model: Vec<String>,
    /// Inference worker threads, overriding the config.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=256))]
    workers: Option<u16>,
    /// RAM budget, overriding the config (e.g. 512MiB).
    #[arg(long, value_name = "SIZE")]
    budget: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("--listen: {0}")]
    Listen(String),
    #[error("--budget: {0}")]
    Budget(beltbox_core::memory::MemoryError),
    #[error(transparent)]
    Serve(#[from] ServeError),
    #[error(transparent)]
    Loadgen(#[from] loadgen::LoadgenError),
    #[error("{path}: cannot read input: {source}")]
    Input {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("--duration `{0}` is not a duration between 100ms and 1h (e.g. 10s, 500ms, 2m)")]
    Duration(String),
}

impl RunError {
    pub fn exit_code(&self) -> u8 {
        match self {
            RunError::Serve(e) => e.exit_code(),
            RunError::Loadgen(loadgen::LoadgenError::Client(_)) => 1,
            _ => 2,
        }
    }
}

impl From<RunError> for CliError {
    fn from(e: RunError) -> CliError {
        CliError::Run(e)
    }
}

pub fn run_cmd(args: &RunArgs) -> Result<(), CliError> {
    let mut cfg = match &args.config {
        Some(path) => Config::load(path)
            .map_err(ServeError::from)
            .map_err(RunError::from)?,
        None => Config::default(),
    };
    if !args.listen.is_empty() {
        cfg.listen = args
            .listen
            .iter()
            .map(|l| Listen::parse(l).map_err(RunError::Listen))
            .collect::<Result<_, _>>()?;
    }
    if !args.model.is_empty() {
        cfg.models = args.model.clone();
    }
    if let Some(w) = args.workers {
        cfg.workers = w as usize;
    }
    if let Some(b) = &args.budget {
        let bytes = beltbox_core::memory::parse_size(b).map_err(RunError::Budget)?;
        cfg.budget = Some((bytes, b.clone()));
    }
    serve::run(cfg).map_err(RunError::from)?;
    Ok(())
}

#[derive(clap::Args)]
pub struct LoadgenArgs {
    /// Service URL (loopback only).
    #[arg(long, default_value = "http://127.0.0.1:8080", value_name = "URL")]
    url: String,
    /// Served model name.
    #[arg(long, default_value = serve::config::DEFAULT_MODEL, value_name = "NAME")]
    model: String,
    /// Offered loads in requests per second, one step each (comma-separated).
    #[arg(long, default_value = "50,200,1000", value_name = "R,R,...")]
    rates: String,
    /// Length of each step.
    #[arg(long, default_value = "5s", value_name = "DURATION")]
    duration: String,
    /// Concurrent client connections.
    #[arg(long, default_value_t = 32, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    connections: u16,
    /// Send this file (PNG/PGM/NPY) as a BYTES input instead of a synthetic tensor.
    #[arg(long, value_name = "FILE")]
    input: Option<PathBuf>,
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
}

fn parse_duration(s: &str) -> Result<Duration, RunError> {
    let bad = || RunError::Duration(s.to_string());
    let t = s.trim();
    let (num, unit) = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .map(|i| t.split_at(i))
        .unwrap_or((t, "s"));
    let n: f64 = num.parse().map_err(|_| bad())?;
    let secs = match unit {
        "ms" => n / 1e3,
        "s" | "" => n,
        "m" => n * 60.0,
        _ => return Err(bad()),
    };
    if !(0.1..=3600.0).contains(&secs) {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(secs))
}

pub fn loadgen_cmd(args: &LoadgenArgs) -> Result<(), CliError> {
    let addr = loadgen::parse_url(&args.url).map_err(RunError::from)?;
    let rates = loadgen::parse_rates(&args.rates).map_err(RunError::from)?;
    let duration = parse_duration(&args.duration)?;
    let file = match &args.input {
        Some(p) => Some(std::fs::read(p).map_err(|source| RunError::Input {
            path: p.clone(),
            source,
        })?),
        None => None,
    };
    let (body, header_length) =
        loadgen::request_for(addr, &args.model, file.as_deref()).map_err(RunError::from)?;
    let cfg = loadgen::LoadConfig {
        addr,
        model: args.model.clone(),
        body,
        header_length,
        rates,
        duration,
        connections: args.connections as usize,
        timeout: Duration::from_secs(30),
    };
    let steps = loadgen::run(&cfg, &|r| {
        eprintln!(
            "offered {:.0} req/s: {} ok, {} rejected, {} errors, p95 {:.2} ms",
            r.offered_rps, r.ok, r.rejected, r.errors, r.p95_ms
        )
    });
    if args.json {
        emit(&to_json(&steps))?;
    } else {
        emit(&loadgen::table(&steps))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("5h").is_err());
        assert!(parse_duration("x").is_err());
    }
}
