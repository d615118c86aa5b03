//! The MQTT sink: a batch of messages published at QoS 1 with rumqttc, confirmed when
//! the broker has acknowledged every one (PUBACK). Persistent session (clean session off,
//! `BOX-STREAM` as client id); one topic per box and stream: `PREFIX/BOX/STREAM`.
//!
//! On any error the connection is dropped whole and the batch is published again on a
//! fresh one after the uploader's backoff: a message the broker took before the error is
//! then delivered twice, and the receiver drops the copy by its `id` (at-least-once).

use std::time::Duration;

use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Outgoing, Packet, QoS};

#[derive(Debug, thiserror::Error)]
pub enum MqttError {
    #[error("MQTT broker URL `{url}`: {why}")]
    Url { url: String, why: String },
    #[error("MQTT broker {broker}: {why}")]
    Broker { broker: String, why: String },
    #[error("MQTT broker {broker}: {acked} of {sent} messages acknowledged within {} s", waited.as_secs())]
    Timeout {
        broker: String,
        acked: usize,
        sent: usize,
        waited: Duration,
    },
}

/// Where and as whom to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttTarget {
    pub host: String,
    pub port: u16,
    pub topic_prefix: String,
}

impl MqttTarget {
    /// `mqtt://HOST[:PORT]` or `tcp://HOST[:PORT]` (1883 by default). TLS brokers
    /// (`mqtts://`) need the rumqttc TLS feature, which this build leaves out.
    pub fn parse(text: &str, topic_prefix: &str) -> Result<MqttTarget, MqttError> {
        let bad = |why: String| MqttError::Url {
            url: text.to_string(),
            why,
        };
        let u = url::Url::parse(text).map_err(|e| bad(e.to_string()))?;
        match u.scheme() {
            "mqtt" | "tcp" => {}
            "mqtts" | "ssl" => {
                return Err(bad(
                    "TLS brokers are not built in (use mqtt:// on the site network or a local bridge; docs/offline.md)".into(),
                ))
            }
            s => return Err(bad(format!("scheme `{s}` is not mqtt:// or tcp://"))),
        }
        let host = u
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| bad("no host".into()))?
            .trim_matches(|c| c == '[' || c == ']')
            .to_string();
        if u.path().len() > 1 || u.query().is_some() {
            return Err(bad(
                "a path or query means nothing here (the topic is upload.topic_prefix)".into(),
            ));
        }
        if topic_prefix.is_empty() || topic_prefix.contains(['+', '#', '\0']) {
            return Err(bad(format!(
                "topic prefix `{topic_prefix}` must be non-empty without MQTT wildcards"
            )));
        }
        Ok(MqttTarget {
            host,
            port: u.port().unwrap_or(1883),
            topic_prefix: topic_prefix.trim_end_matches('/').to_string(),
        })
    }

    pub fn topic(&self, box_id: &str, stream: &str) -> String {
        format!("{}/{box_id}/{stream}", self.topic_prefix)
    }

    fn broker(&self) -> String {
        format!("mqtt://{}:{}", self.host, self.port)
    }
}

/// A connection to the broker, made on first use and after every error.
pub struct MqttSink {
    target: MqttTarget,
    client_id: String,
    batch: usize,
    max_message: usize,
    conn: Option<(AsyncClient, EventLoop)>,
}

impl MqttSink {
    pub fn new(target: MqttTarget, client_id: &str, batch: usize, max_message: usize) -> Self {
        MqttSink {
            target,
            client_id: client_id.to_string(),
            batch,
            max_message,
            conn: None,
        }
    }

    pub fn target(&self) -> &MqttTarget {
        &self.target
    }

    fn connect(&mut self) -> &mut (AsyncClient, EventLoop) {
        let (target, id, batch, max) =
            (&self.target, &self.client_id, self.batch, self.max_message);
        self.conn.get_or_insert_with(|| {
            let mut o = MqttOptions::new(id.clone(), target.host.clone(), target.port);
            o.set_clean_session(false)
                .set_keep_alive(Duration::from_secs(30))
                .set_inflight(batch.clamp(1, u16::MAX as usize) as u16)
                .set_max_packet_size(64 << 10, max + 1024);
            // Every message of a batch fits the request channel: publishing never waits
            // for the event loop this same task polls.
            AsyncClient::new(o, batch + 8)
        })
    }

    /// Publishes `messages` to `topic`, all at QoS 1; `Ok` once the broker acknowledged
    /// every one.
    pub async fn send(
        &mut self,
        topic: &str,
        messages: &[Vec<u8>],
        timeout: Duration,
    ) -> Result<(), MqttError> {
        let broker = self.target.broker();
        let result = {
            let (client, events) = self.connect();
            publish_all(client, events, topic, messages, timeout, &broker).await
        };
        if result.is_err() {
            // Start over on a fresh connection: no half-known in-flight state carried on.
            self.conn = None;
        }
        result
    }
}

async fn publish_all(
    client: &AsyncClient,
    events: &mut EventLoop,
    topic: &str,
    messages: &[Vec<u8>],
    timeout: Duration,
    broker: &str,
) -> Result<(), MqttError> {
    let fail = |why: String| MqttError::Broker {
        broker: broker.to_string(),
        why,
    };
    for m in messages {
        client
            .try_publish(topic, QoS::AtLeastOnce, false, m.clone())
            .map_err(|e| fail(format!("cannot queue a message: {e}")))?;
    }
    let deadline = tokio::time::Instant::now() + timeout;
    let (mut sent, mut acked) = (0usize, 0usize);
    while acked < messages.len() {
        let ev = tokio::time::timeout_at(deadline, events.poll()).await;
        match ev {
            Err(_) => {
                return Err(MqttError::Timeout {
                    broker: broker.to_string(),
                    acked,
                    sent: messages.len(),
                    waited: timeout,
                })
            }
            Ok(Err(e)) => return Err(fail(e.to_string())),
            Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => acked += 1,
            Ok(Ok(Event::Incoming(Packet::ConnAck(c)))) => {
                log::debug!(
                    "MQTT {broker}: connected (session present: {})",
                    c.session_present
                )
            }
            Ok(Ok(Event::Outgoing(Outgoing::Publish(_)))) => sent += 1,
            Ok(Ok(_)) => {}
        }
    }
    log::trace!("MQTT {broker}: {sent} published, {acked} acknowledged on {topic}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_urls_are_checked() {
        let t = MqttTarget::parse("mqtt://10.0.0.5", "beltbox").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("10.0.0.5", 1883));
        assert_eq!(t.topic("box1", "results"), "beltbox/box1/results");
        assert_eq!(
            MqttTarget::parse("tcp://[::1]:1884", "a/b/").unwrap().port,
            1884
        );
        for (url, prefix, says) in [
            ("http://broker", "beltbox", "scheme `http`"),
            ("mqtts://broker", "beltbox", "TLS"),
            ("mqtt://", "beltbox", "no host"),
            ("broker:1883", "beltbox", "scheme"),
            ("mqtt://b/topic", "beltbox", "path"),
            ("mqtt://b", "beltbox/#", "wildcards"),
            ("mqtt://b:99999", "beltbox", "invalid port"),
        ] {
            let e = MqttTarget::parse(url, prefix).unwrap_err().to_string();
            assert!(e.contains(says), "{url}: {e}");
        }
    }
}
