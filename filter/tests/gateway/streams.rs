//! Event streams whose chunks end inside events, from an upstream that
//! writes them so: what the client gets is the stream minus the usage event
//! the gateway asked for, byte for byte, and the usage is still charged.

use crate::support::*;
use serde_json::json;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::thread::{self, JoinHandle};
use std::time::Duration;

const CONTENT: &str = r#"data: {"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"Hi there"},"finish_reason":null}]}"#;
const USAGE: &str = r#"data: {"id":"c1","object":"chat.completion.chunk","choices":[],"usage":{"prompt_tokens":7,"completion_tokens":2,"total_tokens":9}}"#;

/// Answers one request with an event stream written as `pieces`, one HTTP/1.1
/// chunk each, far enough apart that Envoy reads them one by one.
fn upstream(pieces: Vec<String>) -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = thread::spawn(move || {
        let (conn, _) = listener.accept().unwrap();
        let mut reader = BufReader::new(conn.try_clone().unwrap());
        let mut length = 0;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = value.trim().parse().unwrap();
            }
            if line == "\r\n" {
                break;
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        let mut conn = conn;
        conn.write_all(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
              transfer-encoding: chunked\r\n\r\n",
        )
        .unwrap();
        for piece in pieces {
            thread::sleep(Duration::from_millis(150));
            write!(conn, "{:x}\r\n{piece}\r\n", piece.len()).unwrap();
            conn.flush().unwrap();
        }
        conn.write_all(b"0\r\n\r\n").unwrap();
    });
    (addr, server)
}

#[test]
fn a_stream_split_inside_its_events_reaches_the_client_whole() {
    let (content_head, content_tail) = CONTENT.split_at(30);
    let (usage_head, usage_tail) = USAGE.split_at(40);
    let pieces = vec![
        // All held back: nothing for the client yet.
        content_head.to_string(),
        // Completes the content event; the usage event begins.
        format!("{content_tail}\n\n{usage_head}"),
        // Completes the usage event, which is removed: nothing to send.
        format!("{usage_tail}\n\n"),
        "data: [DONE]\n\n".to_string(),
    ];
    let (addr, server) = upstream(pieces);
    let gateway = maas_testkit::Gateway::builder()
        .filter_config(base_config())
        .model("m1", addr)
        .model("m2", addr)
        .start();
    let body = json!({
        "model": "m1", "max_tokens": 8, "stream": true,
        "messages": [{"role": "user", "content": "Hello there"}]
    });
    let response = gateway.post_json(
        "/v1/chat/completions",
        &[("authorization", &format!("Bearer {FREE_KEY}"))],
        &body,
    );
    server.join().unwrap();
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.text(), format!("{CONTENT}\n\ndata: [DONE]\n\n"));
    let record = gateway.await_access_log(1).remove(0);
    assert_eq!(record["usage"], "reported", "{record}");
    assert_eq!(record["total_tokens"], 9, "{record}");
}
