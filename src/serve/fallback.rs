//! The fallback chain (issue #16, docs/offline.md, "Fallback chain"): at start, each
//! configured model serves from the first link that loads, verifies, fits its budget and
//! reproduces its goldens:
//!
//! 1. the OTA store's **candidate** (a version on probation),
//! 2. its **active** version (the last that passed probation),
//! 3. its **previous** active version,
//! 4. its **factory** version (shipped with the image into the store),
//! 5. the package **bundled** in the image (`models.dir`).
//!
//! Versions the store marked bad are never tried; a link whose directory is gone is
//! passed over like one that fails. What serves, and why each link before it was passed
//! over, is kept on the served model ([`Origin`]) and shown in `/v2/health/ready`, on
//! `/metrics` (`beltbox_model_source`, `beltbox_model_fallbacks`) and in STATUS=. The
//! store is not changed: the next start tries the chain again from the top (a fault that
//! was transient, a card re-seated, heals on its own).

use std::path::PathBuf;

use super::config::Config;

/// Where a served version came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Candidate,
    Active,
    Previous,
    Factory,
    Bundled,
}

impl Source {
    pub const ALL: [Source; 5] = [
        Source::Candidate,
        Source::Active,
        Source::Previous,
        Source::Factory,
        Source::Bundled,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Source::Candidate => "candidate",
            Source::Active => "active",
            Source::Previous => "previous",
            Source::Factory => "factory",
            Source::Bundled => "bundled",
        }
    }
}

/// One link of a model's chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub source: Source,
    /// The store's version (`None` for the bundled package).
    pub version: Option<String>,
    /// `None`: the store names it but its directory is missing (passed over).
    pub dir: Option<PathBuf>,
}

impl Link {
    pub fn describe(&self) -> String {
        match &self.version {
            Some(v) => format!("{} {v}", self.source.label()),
            None => self.source.label().to_string(),
        }
    }
}

/// Where a served model came from, and each link passed over before it, with why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub source: Source,
    pub passed_over: Vec<(String, String)>,
}

impl Default for Origin {
    fn default() -> Self {
        Origin {
            source: Source::Bundled,
            passed_over: Vec::new(),
        }
    }
}

impl Origin {
    /// "previous (active 1.2.0: golden self-check failed ...)", or just the source.
    pub fn describe(&self) -> String {
        if self.passed_over.is_empty() {
            return self.source.label().to_string();
        }
        let why: Vec<String> = self
            .passed_over
            .iter()
            .map(|(link, why)| format!("{link}: {why}"))
            .collect();
        format!("{} ({})", self.source.label(), why.join("; "))
    }
}

/// The chain for the configured model `arg` (a bundled name or a package path), in order.
/// A path is its own, single link.
pub fn chain(cfg: &Config, arg: &str) -> Vec<Link> {
    let bundled = Link {
        source: Source::Bundled,
        version: None,
        dir: beltbox_core::model::package::resolve(arg, cfg.models_dir.as_deref()),
    };
    if arg.contains('/') {
        return vec![bundled];
    }
    let store = beltbox_ota::store::Store::reader(&cfg.state_dir.join("ota"));
    let state = match store.load() {
        Ok(s) => s,
        Err(e) => {
            log::error!("OTA store: {e}; serving the bundled packages");
            return vec![bundled];
        }
    };
    let Some(ms) = state.models.get(arg) else {
        return vec![bundled];
    };
    let mut links: Vec<Link> = Vec::new();
    let wanted = [
        (
            Source::Candidate,
            ms.candidate.as_ref().map(|c| c.version.clone()),
        ),
        (Source::Active, ms.active.clone()),
        (Source::Previous, ms.previous.clone()),
        (Source::Factory, ms.factory.clone()),
    ];
    for (source, version) in wanted {
        let Some(v) = version else { continue };
        if ms.bad(&v).is_some() || links.iter().any(|l| l.version.as_deref() == Some(&v)) {
            continue;
        }
        let dir = store.version_dir(arg, &v).ok().filter(|d| d.is_dir());
        links.push(Link {
            source,
            version: Some(v),
            dir,
        });
    }
    links.push(bundled);
    links
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_origin_says_what_was_passed_over_and_why() {
        let o = Origin {
            source: Source::Previous,
            passed_over: vec![(
                "active 1.2.0".into(),
                "golden 003.pgm: top-1 7, expected 3".into(),
            )],
        };
        assert_eq!(
            o.describe(),
            "previous (active 1.2.0: golden 003.pgm: top-1 7, expected 3)"
        );
        assert_eq!(Origin::default().describe(), "bundled");
    }
}
