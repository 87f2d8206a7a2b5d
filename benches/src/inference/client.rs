//! The streaming client every inference bench drives its servers with: one
//! streamed completion over a raw HTTP/1.1 connection, timing the events as
//! they arrive (a buffering client would hide the first token), and a round
//! of them at once, one thread each. It speaks to our server and to
//! llama.cpp's `llama-server` alike: chat chunks carry text in
//! `choices[0].delta.content`, completion chunks in `choices[0].text`, and
//! the usage comes in whichever chunk has it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::Timing;

/// The longest a bench waits for one read from a server: a server that
/// hangs ends the bench with an error instead of holding it forever.
pub const READ_TIMEOUT: Duration = Duration::from_secs(300);

/// One server-sent event of a completion stream, as far as the benches
/// read it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Event {
    /// The text it carried (empty for none).
    pub text: String,
    /// `usage`, where this event carried it.
    pub usage: Option<Usage>,
}

/// A stream's `usage`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// `prompt_tokens_details.cached_tokens`: prompt tokens the server did
    /// not compute again; 0 where it says nothing.
    pub cached_tokens: usize,
}

/// Reads one event's `data:` payload; `None` for `[DONE]`.
pub fn read_event(payload: &str) -> Result<Option<Event>, String> {
    if payload == "[DONE]" {
        return Ok(None);
    }
    let chunk: Value = serde_json::from_str(payload)
        .map_err(|e| format!("a chunk is not JSON ({e}): {payload}"))?;
    let choice = &chunk["choices"][0];
    let text = choice["delta"]["content"]
        .as_str()
        .or_else(|| choice["text"].as_str())
        .unwrap_or_default()
        .to_string();
    let usage = match &chunk["usage"] {
        Value::Null => None,
        usage => {
            let count = |v: &Value| v.as_u64().map(|n| n as usize);
            let missing = || format!("usage without its token counts: {usage}");
            Some(Usage {
                prompt_tokens: count(&usage["prompt_tokens"]).ok_or_else(missing)?,
                completion_tokens: count(&usage["completion_tokens"]).ok_or_else(missing)?,
                cached_tokens: count(&usage["prompt_tokens_details"]["cached_tokens"]).unwrap_or(0),
            })
        }
    };
    Ok(Some(Event { text, usage }))
}

/// Streams `body` to `path` (`/v1/chat/completions`, `/v1/completions`) on
/// `addr`; the body must ask for `stream_options.include_usage`.
pub fn stream(addr: SocketAddr, path: &str, body: &Value) -> Result<Timing, String> {
    let fail = |what: &str, e: std::io::Error| format!("{path} on {addr}: {what}: {e}");
    let body = body.to_string();
    let sent = Instant::now();
    let mut sock = TcpStream::connect(addr).map_err(|e| fail("connect", e))?;
    sock.set_nodelay(true).map_err(|e| fail("nodelay", e))?;
    sock.set_read_timeout(Some(READ_TIMEOUT))
        .map_err(|e| fail("read timeout", e))?;
    write!(
        sock,
        "POST {path} HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .map_err(|e| fail("send", e))?;
    let mut reader = BufReader::new(sock);
    let mut line = String::new();
    reader
        .read_line(&mut line)
        .map_err(|e| fail("status line", e))?;
    if !line.starts_with("HTTP/1.1 200") {
        let mut rest = String::new();
        let _ = reader.read_to_string(&mut rest);
        return Err(format!(
            "{path} on {addr} failed: {}\n{rest}",
            line.trim_end()
        ));
    }
    loop {
        line.clear();
        reader.read_line(&mut line).map_err(|e| fail("header", e))?;
        if line == "\r\n" {
            break;
        }
        if line.is_empty() {
            return Err(format!("{path} on {addr}: the headers were cut short"));
        }
    }

    let mut first_token = None;
    let mut token_times = Vec::new();
    let mut usage = None;
    let mut pending = String::new();
    loop {
        // Chunked transfer coding: a hex size line, the data, CRLF.
        line.clear();
        reader
            .read_line(&mut line)
            .map_err(|e| fail("chunk size", e))?;
        let size = usize::from_str_radix(line.trim(), 16)
            .map_err(|_| format!("{path} on {addr}: a chunk size is not hex: {line:?}"))?;
        if size == 0 {
            break;
        }
        let mut data = vec![0u8; size + 2];
        reader.read_exact(&mut data).map_err(|e| fail("chunk", e))?;
        pending.push_str(&String::from_utf8_lossy(&data[..size]));
        while let Some(end) = pending.find("\n\n") {
            let event: String = pending.drain(..end + 2).collect();
            let Some(payload) = event.trim().strip_prefix("data: ") else {
                continue;
            };
            let Some(event) = read_event(payload)? else {
                continue;
            };
            if !event.text.is_empty() {
                let now = Instant::now();
                first_token.get_or_insert(now);
                token_times.push(now);
            }
            usage = event.usage.or(usage);
        }
    }
    let done = Instant::now();
    let usage = usage.ok_or_else(|| format!("{path} on {addr}: the stream reported no usage"))?;
    Ok(Timing {
        sent,
        first_token: first_token.unwrap_or(done),
        done,
        prompt_tokens: usage.prompt_tokens,
        completion_tokens: usage.completion_tokens,
        cached_tokens: usage.cached_tokens,
        token_times,
    })
}

/// Streams every body at once, one client thread each; their timings in
/// order, or the first error.
pub fn concurrently(addr: SocketAddr, path: &str, bodies: &[Value]) -> Result<Vec<Timing>, String> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = bodies
            .iter()
            .map(|body| scope.spawn(move || stream(addr, path, body)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .map_err(|_| "a client thread panicked".to_string())?
            })
            .collect()
    })
}

/// Whether `GET /health` on `addr` answers 200.
pub fn healthy(addr: SocketAddr) -> bool {
    let Ok(mut sock) = TcpStream::connect(addr) else {
        return false;
    };
    let _ = sock.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = write!(
        sock,
        "GET /health HTTP/1.1\r\nhost: bench\r\nconnection: close\r\n\r\n"
    );
    let mut line = String::new();
    BufReader::new(sock).read_line(&mut line).is_ok() && line.starts_with("HTTP/1.1 200")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completion_and_chat_chunks_give_their_text() {
        let completion = r#"{"object":"text_completion","choices":[{"index":0,"text":" Paris","finish_reason":null}],"usage":null}"#;
        assert_eq!(
            read_event(completion).unwrap(),
            Some(Event {
                text: " Paris".into(),
                usage: None
            })
        );
        let chat = r#"{"choices":[{"index":0,"delta":{"content":"Hi"}}]}"#;
        assert_eq!(read_event(chat).unwrap().unwrap().text, "Hi");
        assert_eq!(read_event("[DONE]").unwrap(), None);
        assert!(read_event("{not json").is_err());
    }

    #[test]
    fn usage_reads_cached_tokens_where_given_and_zero_where_not() {
        // Ours: a usage chunk with no choices and no details.
        let ours =
            r#"{"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":4,"total_tokens":9}}"#;
        assert_eq!(
            read_event(ours).unwrap().unwrap().usage,
            Some(Usage {
                prompt_tokens: 5,
                completion_tokens: 4,
                cached_tokens: 0
            })
        );
        // llama-server: the last text chunk carries it, with the details.
        let llama = r#"{"choices":[{"text":"","index":0,"finish_reason":"length"}],"usage":{"completion_tokens":4,"prompt_tokens":1530,"total_tokens":1534,"prompt_tokens_details":{"cached_tokens":1512}}}"#;
        let event = read_event(llama).unwrap().unwrap();
        assert_eq!(event.text, "");
        assert_eq!(event.usage.unwrap().cached_tokens, 1512);
        assert!(read_event(r#"{"choices":[],"usage":{"total_tokens":9}}"#).is_err());
    }
}
