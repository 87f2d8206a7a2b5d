//! The limiter's ledger: Limitador's counters as Redis holds them. A
//! counter is a string key (`namespace:{DOMAIN},counter:{…JSON naming the
//! limit's conditions…}`) whose value is what was committed in its window;
//! reservations live in other keys (hashes), which are skipped. Read with a
//! minimal RESP client (`SCAN`, `TYPE`, `GET`), authenticated with the
//! server's password.

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

/// One RESP reply (only the shapes these commands return).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Reply {
    Simple(String),
    Error(String),
    Integer(i64),
    Bulk(Option<Vec<u8>>),
    Array(Vec<Reply>),
}

struct Connection {
    reader: BufReader<TcpStream>,
}

impl Connection {
    fn open(port: u16, password: &str) -> Result<Self, String> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1))
            .map_err(|e| format!("cannot connect to Redis on {addr}: {e}"))?;
        let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
        let mut conn = Self {
            reader: BufReader::new(stream),
        };
        match conn.call(&["AUTH", password])? {
            Reply::Simple(ok) if ok == "OK" => Ok(conn),
            other => Err(format!("AUTH answered {other:?}")),
        }
    }

    fn call(&mut self, args: &[&str]) -> Result<Reply, String> {
        let mut command = format!("*{}\r\n", args.len());
        for arg in args {
            command.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
        }
        self.reader
            .get_mut()
            .write_all(command.as_bytes())
            .map_err(|e| format!("cannot write to Redis: {e}"))?;
        read_reply(&mut self.reader)
    }
}

fn read_reply(reader: &mut impl BufRead) -> Result<Reply, String> {
    let mut line = String::new();
    reader
        .read_line(&mut line)
        .map_err(|e| format!("no answer from Redis: {e}"))?;
    let line = line.trim_end_matches(['\r', '\n']);
    let (kind, rest) = line.split_at_checked(1).ok_or("an empty reply line")?;
    let number = || {
        rest.parse::<i64>()
            .map_err(|_| format!("not a number: {line:?}"))
    };
    Ok(match kind {
        "+" => Reply::Simple(rest.to_string()),
        "-" => Reply::Error(rest.to_string()),
        ":" => Reply::Integer(number()?),
        "$" => match usize::try_from(number()?) {
            Err(_) => Reply::Bulk(None),
            Ok(len) => {
                let mut data = vec![0u8; len + 2];
                std::io::Read::read_exact(reader, &mut data)
                    .map_err(|e| format!("a short bulk reply: {e}"))?;
                data.truncate(len);
                Reply::Bulk(Some(data))
            }
        },
        "*" => {
            let len = usize::try_from(number()?).unwrap_or(0);
            let items = (0..len)
                .map(|_| read_reply(reader))
                .collect::<Result<_, _>>()?;
            Reply::Array(items)
        }
        _ => return Err(format!("unexpected reply {line:?}")),
    })
}

fn text(reply: &Reply) -> Option<String> {
    match reply {
        Reply::Simple(s) => Some(s.clone()),
        Reply::Bulk(Some(b)) => Some(String::from_utf8_lossy(b).into_owned()),
        _ => None,
    }
}

/// Every counter (string key with an integer value) in the Redis on `port`.
pub fn read_counters(port: u16, password: &str) -> Result<Vec<(String, i64)>, String> {
    let mut conn = Connection::open(port, password)?;
    let mut keys = Vec::new();
    let mut cursor = "0".to_string();
    loop {
        let Reply::Array(parts) = conn.call(&["SCAN", &cursor, "COUNT", "1000"])? else {
            return Err("SCAN did not answer an array".into());
        };
        let [next, Reply::Array(batch)] = parts.as_slice() else {
            return Err("SCAN answered an unexpected shape".into());
        };
        keys.extend(batch.iter().filter_map(text));
        cursor = text(next).unwrap_or_else(|| "0".into());
        if cursor == "0" {
            break;
        }
    }
    let mut counters = Vec::new();
    for key in keys {
        if text(&conn.call(&["TYPE", &key])?).as_deref() != Some("string") {
            continue;
        }
        if let Some(value) = text(&conn.call(&["GET", &key])?).and_then(|v| v.parse().ok()) {
            counters.push((key, value));
        }
    }
    Ok(counters)
}

/// The value of the counter of subscription `subscription`'s `quantity`
/// limit without variables (the subscription-wide one), summed if several
/// keys match.
pub fn subscription_counter(
    counters: &[(String, i64)],
    subscription: &str,
    quantity: &str,
) -> Option<i64> {
    let matching: Vec<i64> = counters
        .iter()
        .filter(|(key, _)| {
            key.contains(&format!("'{subscription}'")) && key.contains(&format!("'{quantity}'"))
        })
        .map(|(_, v)| *v)
        .collect();
    (!matching.is_empty()).then(|| matching.iter().sum())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_parse() {
        let mut input: &[u8] =
            b"*2\r\n$1\r\n0\r\n*2\r\n$3\r\nabc\r\n$-1\r\n+OK\r\n:42\r\n-ERR nope\r\n";
        assert_eq!(
            read_reply(&mut input),
            Ok(Reply::Array(vec![
                Reply::Bulk(Some(b"0".to_vec())),
                Reply::Array(vec![Reply::Bulk(Some(b"abc".to_vec())), Reply::Bulk(None)]),
            ]))
        );
        assert_eq!(read_reply(&mut input), Ok(Reply::Simple("OK".into())));
        assert_eq!(read_reply(&mut input), Ok(Reply::Integer(42)));
        assert_eq!(read_reply(&mut input), Ok(Reply::Error("ERR nope".into())));
    }

    #[test]
    fn counters_are_found_by_subscription_and_quantity() {
        let counters = vec![
            (
                "namespace:{d},counter:{\"conditions\":[\"descriptors[0].subscription == 'a'\",\"descriptors[0].quantity == 'tokens'\"]}".to_string(),
                120,
            ),
            (
                "namespace:{d},counter:{\"conditions\":[\"descriptors[0].subscription == 'a'\",\"descriptors[0].quantity == 'requests'\"]}".to_string(),
                3,
            ),
        ];
        assert_eq!(subscription_counter(&counters, "a", "tokens"), Some(120));
        assert_eq!(subscription_counter(&counters, "b", "tokens"), None);
    }
}
