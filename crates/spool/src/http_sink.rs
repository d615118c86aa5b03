//! The HTTP sink: a batch POSTed as JSON lines (`application/x-ndjson`, one message per
//! line), confirmed by any 2xx. The `Idempotency-Key` header names the batch
//! (`BOX/STREAM/FIRST-LAST`); a batch sent again after a failure carries the same key for
//! the same records, and every line has its message `id` as well, so a receiver can drop
//! duplicates either way.

use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum HttpSinkError {
    #[error("upload URL `{url}`: {why}")]
    Url { url: String, why: String },
    #[error("POST {url}: {why}")]
    Send { url: String, why: String },
    #[error("POST {url}: the receiver answered {status}{body}")]
    Status {
        url: String,
        status: u16,
        body: String,
    },
}

pub struct HttpSink {
    url: String,
    client: reqwest::Client,
}

impl HttpSink {
    /// `http://` or `https://` URL of the receiver.
    pub fn new(url: &str) -> Result<HttpSink, HttpSinkError> {
        let bad = |why: String| HttpSinkError::Url {
            url: url.to_string(),
            why,
        };
        let u = url::Url::parse(url).map_err(|e| bad(e.to_string()))?;
        if !matches!(u.scheme(), "http" | "https") || u.host_str().is_none_or(str::is_empty) {
            return Err(bad("must be an http:// or https:// URL with a host".into()));
        }
        // reqwest's rustls has no crypto provider of its own here (it comes through tough
        // with `rustls-no-provider`): install the process default first, as tough does.
        // An error means one is installed already.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| bad(e.to_string()))?;
        Ok(HttpSink {
            url: url.to_string(),
            client,
        })
    }

    /// POSTs the batch; `Ok` on a 2xx answer.
    pub async fn send(
        &self,
        key: &str,
        messages: &[Vec<u8>],
        timeout: Duration,
    ) -> Result<(), HttpSinkError> {
        let mut body = Vec::with_capacity(messages.iter().map(|m| m.len() + 1).sum());
        for m in messages {
            body.extend_from_slice(m);
            body.push(b'\n');
        }
        let sent = self
            .client
            .post(&self.url)
            .header("Content-Type", "application/x-ndjson")
            .header("Idempotency-Key", key)
            .timeout(timeout)
            .body(body)
            .send()
            .await
            .map_err(|e| HttpSinkError::Send {
                url: self.url.clone(),
                why: error_chain(&e),
            })?;
        let status = sent.status().as_u16();
        if (200..300).contains(&status) {
            return Ok(());
        }
        // A little of what the receiver said helps the operator (bounded: it is input).
        let text = sent.text().await.unwrap_or_default();
        let text: String = text.chars().take(200).collect();
        Err(HttpSinkError::Status {
            url: self.url.clone(),
            status,
            body: if text.trim().is_empty() {
                String::new()
            } else {
                format!(": {}", text.trim())
            },
        })
    }
}

/// reqwest's errors say little at the top ("error sending request"): the causes say why.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receiver_urls_are_checked() {
        assert!(HttpSink::new("http://10.0.0.5:8000/ingest").is_ok());
        for bad in ["ftp://x/", "http://", "10.0.0.5/ingest", ""] {
            assert!(HttpSink::new(bad).is_err(), "{bad}");
        }
    }
}
