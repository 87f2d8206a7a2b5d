//! The soak's clients: each drives one key, one request at a time, and
//! records what it saw of every request (status, the usage the response
//! reported, the content events it read). Plain completions and complete
//! streams go through testkit's HTTP client; a cut stream is a raw
//! connection the client drops once it has read a few content events, as a
//! user closing a tab would.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use super::plan::{request_body, Traffic, PROMPTS};

const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// Prompt and completion tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Tokens {
    pub prompt: u64,
    pub completion: u64,
}

impl Tokens {
    pub fn total(self) -> u64 {
        self.prompt + self.completion
    }

    /// An OpenAI `usage` object.
    pub fn from_usage(usage: &Value) -> Option<Tokens> {
        Some(Tokens {
            prompt: usage.get("prompt_tokens")?.as_u64()?,
            completion: usage.get("completion_tokens")?.as_u64()?,
        })
    }
}

/// What kind of request a client sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A JSON completion.
    Plain,
    /// A stream read to its end, with `stream_options.include_usage`.
    Stream,
    /// A stream (without `include_usage`) dropped after this many content
    /// events.
    Cut { after_events: u64 },
}

impl Kind {
    pub fn label(self) -> &'static str {
        match self {
            Kind::Plain => "plain",
            Kind::Stream => "stream",
            Kind::Cut { .. } => "cut stream",
        }
    }
}

/// One request as its client saw it.
#[derive(Debug, Clone)]
pub struct Sent {
    pub client: usize,
    pub kind: Kind,
    pub prompt: usize,
    /// Wall clock (Unix ms) just before the request was written.
    pub sent_ms: u64,
    pub elapsed_ms: u64,
    /// `None`: no HTTP answer at all.
    pub status: Option<u16>,
    /// A refusal's OpenAI error `type`/`code`.
    pub error: Option<String>,
    /// The usage the response reported to the client.
    pub usage: Option<Tokens>,
    /// Events carrying generated text that the client read.
    pub content_events: u64,
    /// The client dropped the stream before its end.
    pub cut: bool,
    pub transport_error: Option<String>,
}

impl Sent {
    pub fn served(&self) -> bool {
        self.status.is_some_and(|s| (200..300).contains(&s))
    }
}

pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What one SSE `data:` payload carries: generated text (one event), usage.
fn read_event(payload: &str, content_events: &mut u64, usage: &mut Option<Tokens>) {
    let Ok(event) = serde_json::from_str::<Value>(payload) else {
        return;
    };
    let has_text = event["choices"].as_array().is_some_and(|choices| {
        choices.iter().any(|c| {
            c["delta"]["content"]
                .as_str()
                .is_some_and(|t| !t.is_empty())
        })
    });
    if has_text {
        *content_events += 1;
    }
    if let Some(tokens) = event.get("usage").and_then(Tokens::from_usage) {
        *usage = Some(tokens);
    }
}

/// `type/code` of an OpenAI error body, if it is one.
fn error_of(body: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(body);
    let json = &text[text.find('{')?..=text.rfind('}')?];
    let value: Value = serde_json::from_str(json).ok()?;
    let error = value.get("error")?;
    let field = |name: &str| match &error[name] {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    };
    Some(format!("{}/{}", field("type"), field("code")))
}

/// Everything a client needs to send one request.
pub struct Target<'a> {
    pub gateway: SocketAddr,
    pub key: &'a str,
    pub max_tokens: u64,
}

impl Target<'_> {
    /// Sends one request of `kind` with prompt `prompt` and records it.
    pub fn send(&self, client: usize, kind: Kind, prompt: usize) -> Sent {
        let mut sent = Sent {
            client,
            kind,
            prompt,
            sent_ms: unix_ms(),
            elapsed_ms: 0,
            status: None,
            error: None,
            usage: None,
            content_events: 0,
            cut: false,
            transport_error: None,
        };
        let started = Instant::now();
        match kind {
            Kind::Cut { after_events } => {
                let body = request_body(prompt, true, false, self.max_tokens).to_string();
                if let Err(e) = self.cut_stream(&body, after_events, &mut sent) {
                    sent.transport_error = Some(e);
                }
            }
            Kind::Plain | Kind::Stream => self.complete(kind, prompt, &mut sent),
        }
        sent.elapsed_ms = started.elapsed().as_millis() as u64;
        sent
    }

    fn complete(&self, kind: Kind, prompt: usize, sent: &mut Sent) {
        let stream = kind == Kind::Stream;
        let body = request_body(prompt, stream, true, self.max_tokens).to_string();
        let auth = format!("Bearer {}", self.key);
        let answer = maas_testkit::try_request(
            "POST",
            &format!("http://{}/v1/chat/completions", self.gateway),
            &[
                ("authorization", auth.as_str()),
                ("content-type", "application/json"),
            ],
            Some(body.as_bytes()),
        );
        let response = match answer {
            Ok(r) => r,
            Err(e) => {
                sent.transport_error = Some(e.to_string());
                return;
            }
        };
        sent.status = Some(response.status);
        sent.transport_error = response.body_error.clone();
        if !sent.served() {
            sent.error = error_of(&response.body);
        } else if stream {
            for payload in response.sse_data() {
                read_event(&payload, &mut sent.content_events, &mut sent.usage);
            }
        } else {
            let json: Value = serde_json::from_slice(&response.body).unwrap_or(Value::Null);
            sent.usage = json.get("usage").and_then(Tokens::from_usage);
            sent.content_events = u64::from(
                json["choices"][0]["message"]["content"]
                    .as_str()
                    .is_some_and(|t| !t.is_empty()),
            );
        }
    }

    /// A raw HTTP/1.1 stream, read until `after` content events arrived,
    /// then dropped.
    fn cut_stream(&self, body: &str, after: u64, sent: &mut Sent) -> Result<(), String> {
        let mut conn = TcpStream::connect(self.gateway).map_err(|e| format!("connect: {e}"))?;
        let _ = conn.set_read_timeout(Some(READ_TIMEOUT));
        let head = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: soak\r\nauthorization: Bearer {}\r\n\
             content-type: application/json\r\nconnection: close\r\ncontent-length: {}\r\n\r\n",
            self.key,
            body.len()
        );
        conn.write_all(head.as_bytes())
            .and_then(|()| conn.write_all(body.as_bytes()))
            .map_err(|e| format!("write: {e}"))?;
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = conn.read(&mut buf).map_err(|e| format!("read: {e}"))?;
            seen.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&seen);
            let Some(end) = text.find("\r\n\r\n") else {
                if n == 0 {
                    return Err("closed before the response head".into());
                }
                continue;
            };
            sent.status = text
                .split_whitespace()
                .nth(1)
                .and_then(|code| code.parse().ok());
            let body = &text[end + 4..];
            if sent.status != Some(200) {
                if n == 0 {
                    sent.error = error_of(body.as_bytes());
                    return Ok(());
                }
                continue;
            }
            // Only whole lines: one split by a read (or a chunk) counts
            // once it is complete, or never (a lower bound either way).
            let (mut events, mut usage) = (0, None);
            for line in body.lines() {
                if let Some(payload) = line.strip_prefix("data: ") {
                    read_event(payload, &mut events, &mut usage);
                }
            }
            sent.content_events = events;
            sent.usage = usage;
            if events >= after {
                sent.cut = true;
                return Ok(());
            }
            if n == 0 {
                // The stream ended before the cut point.
                return Ok(());
            }
        }
    }
}

/// A small deterministic generator (xorshift64*), one per client, so a run
/// is the same mix every time.
pub struct Dice(u64);

impl Dice {
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n.max(1)
    }
}

/// Shared by the clients: the bounds of the run.
pub struct Bounds<'a> {
    pub traffic: &'a Traffic,
    pub started: Instant,
    /// Requests left to send, all clients together.
    pub budget: &'a AtomicU64,
    pub stop: &'a AtomicBool,
}

impl Bounds<'_> {
    /// Takes one request from the budget; false once the run is over.
    fn take(&self) -> bool {
        if self.stop.load(Ordering::Relaxed) || self.started.elapsed() >= self.traffic.duration {
            return false;
        }
        self.budget
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok()
    }
}

/// One client's whole run: the mix of `bounds.traffic`, until the bounds
/// say stop.
pub fn drive(client: usize, target: &Target<'_>, bounds: &Bounds<'_>) -> Vec<Sent> {
    let traffic = bounds.traffic;
    let mut dice = Dice::new(client as u64 + 1);
    let mut sent = Vec::new();
    while bounds.take() {
        let roll = dice.below(100);
        let kind = if roll < traffic.plain_percent {
            Kind::Plain
        } else if roll < traffic.plain_percent + traffic.cut_percent {
            Kind::Cut {
                after_events: 1 + dice.below(3),
            }
        } else {
            Kind::Stream
        };
        let prompt = dice.below(PROMPTS.len() as u64) as usize;
        let record = target.send(client, kind, prompt);
        let pause = if record.served() {
            traffic.think.mul_f64(dice.below(1000) as f64 / 1000.0)
        } else {
            traffic.backoff
        };
        sent.push(record);
        std::thread::sleep(pause);
    }
    sent
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_count_generated_text_and_keep_the_usage() {
        let (mut events, mut usage) = (0, None);
        for payload in [
            r#"{"choices":[{"delta":{"role":"assistant","content":""}}]}"#,
            r#"{"choices":[{"delta":{"content":"Hi"}}]}"#,
            r#"{"choices":[{"delta":{"content":" there"},"finish_reason":null}]}"#,
            r#"{"choices":[],"usage":{"prompt_tokens":30,"completion_tokens":2,"total_tokens":32}}"#,
            "[DONE]",
            r#"{"choices":[{"delta":{"cont"#,
        ] {
            read_event(payload, &mut events, &mut usage);
        }
        assert_eq!(events, 2);
        assert_eq!(
            usage,
            Some(Tokens {
                prompt: 30,
                completion: 2
            })
        );
    }

    #[test]
    fn errors_read_type_and_code() {
        let body = br#"{"error":{"message":"m","type":"tokens","code":"rate_limit_exceeded"}}"#;
        assert_eq!(
            error_of(body).as_deref(),
            Some("tokens/rate_limit_exceeded")
        );
        let envoy = b"6c\r\n{\"error\":{\"type\":\"upstream_error\",\"code\":503}}\r\n0\r\n\r\n";
        assert_eq!(error_of(envoy).as_deref(), Some("upstream_error/503"));
        assert_eq!(error_of(b"no json"), None);
    }

    #[test]
    fn dice_stay_in_range() {
        let mut dice = Dice::new(7);
        assert!((0..1000).all(|_| dice.below(3) < 3));
    }
}
