//! The few etcd v3 calls a fleet needs, over etcd's own JSON gateway (`/v3/...`, served
//! by every etcd since 3.3 on its client port): leases, a prefix read, puts under a
//! lease, deletes, and transactions that answer once committed.
//!
//! It owns the wire shape (base64 keys and values, 64-bit numbers as strings) and the
//! choice among endpoints; it must never decide anything about the fleet.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::Deserialize;
use serde_json::{Value, json};

/// What went wrong talking to etcd.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EtcdError {
    #[error("etcd is unreachable ({0})")]
    Unreachable(String),
    #[error("etcd refused the request: {0}")]
    Refused(String),
    #[error("etcd's answer could not be read: {0}")]
    Unreadable(String),
}

/// One key and its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Vec<u8>,
}

/// A client of one etcd cluster: its client URLs, tried in turn.
#[derive(Debug, Clone)]
pub struct Etcd {
    endpoints: Vec<String>,
    http: reqwest::Client,
}

#[derive(Deserialize)]
struct RawKv {
    key: String,
    #[serde(default)]
    value: String,
}

impl Etcd {
    /// A client of the cluster at `endpoints` (`http://host:port`); each call gives up
    /// after `timeout`.
    pub fn new(endpoints: Vec<String>, timeout: Duration) -> Etcd {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .build()
            .expect("an HTTP client without TLS settings builds");
        Etcd { endpoints, http }
    }

    /// Calls `path` with `body` on the first endpoint that answers.
    async fn call(&self, path: &str, body: Value) -> Result<Value, EtcdError> {
        let mut last = EtcdError::Unreachable("no endpoint".into());
        for endpoint in &self.endpoints {
            let url = format!("{endpoint}{path}");
            let request = self
                .http
                .post(&url)
                .header("content-type", "application/json")
                .body(body.to_string());
            let response = match request.send().await {
                Ok(response) => response,
                Err(error) => {
                    last = EtcdError::Unreachable(format!("{endpoint}: {error}"));
                    continue;
                }
            };
            let status = response.status();
            let text = response.text().await.map_err(|e| EtcdError::Unreachable(e.to_string()))?;
            let value: Value = serde_json::from_str(&text)
                .map_err(|e| EtcdError::Unreadable(format!("{e}: {text:.200}")))?;
            if !status.is_success() || value.get("error").is_some() {
                let message = value["message"].as_str().or(value["error"].as_str());
                return Err(EtcdError::Refused(message.unwrap_or(&text).to_string()));
            }
            return Ok(value);
        }
        Err(last)
    }

    /// A lease of `ttl` seconds; its id.
    pub async fn grant(&self, ttl: u64) -> Result<i64, EtcdError> {
        let answer = self.call("/v3/lease/grant", json!({ "TTL": ttl })).await?;
        number(&answer["ID"]).ok_or_else(|| EtcdError::Unreadable(answer.to_string()))
    }

    /// Renews a lease; false if it expired meanwhile (its keys are gone).
    pub async fn keep_alive(&self, lease: i64) -> Result<bool, EtcdError> {
        let answer = self.call("/v3/lease/keepalive", json!({ "ID": lease.to_string() })).await?;
        // The gateway streams one result per line; the first is the answer.
        let ttl = number(&answer["result"]["TTL"]).unwrap_or(0);
        Ok(ttl > 0)
    }

    /// Gives a lease back: its keys go at once.
    pub async fn revoke(&self, lease: i64) -> Result<(), EtcdError> {
        self.call("/v3/lease/revoke", json!({ "ID": lease.to_string() })).await.map(drop)
    }

    /// Writes `key` under `lease` (0: none).
    pub async fn put(&self, key: &str, value: &[u8], lease: i64) -> Result<(), EtcdError> {
        let mut body = json!({ "key": BASE64.encode(key), "value": BASE64.encode(value) });
        if lease != 0 {
            body["lease"] = json!(lease.to_string());
        }
        self.call("/v3/kv/put", body).await.map(drop)
    }

    /// Every key under `prefix`, in key order.
    pub async fn list(&self, prefix: &str) -> Result<Vec<KeyValue>, EtcdError> {
        let mut answer = self.call("/v3/kv/range", prefix_range(prefix)).await?;
        let raw: Vec<RawKv> = match answer.get_mut("kvs") {
            Some(kvs) => serde_json::from_value(kvs.take())
                .map_err(|e| EtcdError::Unreadable(e.to_string()))?,
            None => Vec::new(),
        };
        raw.into_iter()
            .map(|kv| {
                let key = BASE64
                    .decode(&kv.key)
                    .ok()
                    .and_then(|k| String::from_utf8(k).ok())
                    .ok_or_else(|| EtcdError::Unreadable(format!("key {:?}", kv.key)))?;
                let value = BASE64
                    .decode(&kv.value)
                    .map_err(|e| EtcdError::Unreadable(format!("value of {key}: {e}")))?;
                Ok(KeyValue { key, value })
            })
            .collect()
    }

    /// Writes every key at once, or none (one transaction); answers once etcd
    /// committed it.
    pub async fn put_all(&self, writes: &[(String, Vec<u8>)]) -> Result<(), EtcdError> {
        self.write(writes, &[]).await
    }

    /// Writes `puts` and deletes the keys `deletes`, all at once or none (one
    /// transaction); answers once etcd committed it.
    pub async fn write(
        &self,
        puts: &[(String, Vec<u8>)],
        deletes: &[String],
    ) -> Result<(), EtcdError> {
        let success: Vec<Value> = (puts.iter())
            .map(|(key, value)| {
                json!({ "request_put": { "key": BASE64.encode(key), "value": BASE64.encode(value) } })
            })
            .chain(deletes.iter().map(|key| json!({ "request_delete_range": { "key": BASE64.encode(key) } })))
            .collect();
        self.call("/v3/kv/txn", json!({ "success": success })).await.map(drop)
    }

    /// Deletes every key under `prefix`; how many there were.
    pub async fn delete_prefix(&self, prefix: &str) -> Result<u64, EtcdError> {
        self.delete_range(prefix_range(prefix)).await
    }

    /// Deletes `key`; whether it was there.
    pub async fn delete(&self, key: &str) -> Result<bool, EtcdError> {
        self.delete_range(json!({ "key": BASE64.encode(key) })).await.map(|deleted| deleted > 0)
    }

    async fn delete_range(&self, range: Value) -> Result<u64, EtcdError> {
        let answer = self.call("/v3/kv/deleterange", range).await?;
        // The gateway leaves out zero counts.
        Ok(number(&answer["deleted"]).unwrap_or(0) as u64)
    }
}

/// The request body naming every key under `prefix`.
fn prefix_range(prefix: &str) -> Value {
    json!({ "key": BASE64.encode(prefix), "range_end": BASE64.encode(prefix_end(prefix)) })
}

/// The end of the key range of everything under `prefix`: the prefix with its last
/// byte raised by one (etcd's `WithPrefix`).
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// A 64-bit number as the gateway writes it (a string), or as a number.
fn number(value: &Value) -> Option<i64> {
    value.as_str().and_then(|s| s.parse().ok()).or_else(|| value.as_i64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_ends_where_its_last_byte_is_raised() {
        assert_eq!(prefix_end("/superpeer/seeds/"), b"/superpeer/seeds0");
        assert_eq!(prefix_end("a\u{7f}"), b"a\x80");
        assert_eq!(number(&json!("8888313644890734853")), Some(8_888_313_644_890_734_853));
        assert_eq!(number(&json!(5)), Some(5));
    }
}
