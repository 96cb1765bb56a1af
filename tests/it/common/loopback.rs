//! A small HTTP/1.1 server on 127.0.0.1 for the source tests: each request is
//! answered by a closure that sees the path, the query and the request's
//! number, and can inject faults (status codes with Retry-After, delays,
//! truncated bodies, endless bodies, raw bytes).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Req {
    pub method: String,
    pub path: String,
    pub query: HashMap<String, String>,
    pub body: Vec<u8>,
    /// Header names in lower case.
    pub headers: HashMap<String, String>,
    /// 0-based count of requests the server has seen.
    pub n: usize,
}

pub enum Reply {
    /// Status, extra headers, body (Content-Length set).
    Full(u16, Vec<(String, String)>, Vec<u8>),
    /// Wait, then answer.
    Delay(Duration, Box<Reply>),
    /// Declares `declared` bytes, sends `body`, closes.
    Truncated { declared: usize, body: Vec<u8> },
    /// No Content-Length: sends `bytes` bytes of filler then closes.
    Endless { bytes: usize },
    /// No Content-Length: sends each chunk, `every` apart, then closes;
    /// stops when the client hangs up. `open` counts the streams being sent.
    Stream {
        headers: Vec<(String, String)>,
        chunks: Vec<Vec<u8>>,
        every: Duration,
        open: Arc<Gauge>,
    },
}

/// How many of something are open now, and the most at once.
#[derive(Debug, Default)]
pub struct Gauge {
    pub now: AtomicUsize,
    pub peak: AtomicUsize,
}

impl Gauge {
    fn up(&self) {
        let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(n, Ordering::SeqCst);
    }
    fn down(&self) {
        self.now.fetch_sub(1, Ordering::SeqCst);
    }
    pub fn now(&self) -> usize {
        self.now.load(Ordering::SeqCst)
    }
    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::SeqCst)
    }
}

impl Reply {
    pub fn json(status: u16, v: &serde_json::Value) -> Reply {
        Reply::Full(
            status,
            vec![("Content-Type".into(), "application/json".into())],
            v.to_string().into_bytes(),
        )
    }
    pub fn status(status: u16, headers: &[(&str, &str)]) -> Reply {
        Reply::Full(
            status,
            headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            format!("status {status}").into_bytes(),
        )
    }
}

type Handler = dyn Fn(&Req) -> Reply + Send + Sync;

pub struct Server {
    pub base: String,
    pub requests: Arc<Mutex<Vec<Req>>>,
}

impl Server {
    pub fn start(handler: impl Fn(&Req) -> Reply + Send + Sync + 'static) -> Server {
        Server::start_on("127.0.0.1:0", handler)
    }

    /// A server on `addr` (a port another server had: one that comes back).
    pub fn start_on(addr: &str, handler: impl Fn(&Req) -> Reply + Send + Sync + 'static) -> Server {
        let listener = TcpListener::bind(addr).unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let handler: Arc<Handler> = Arc::new(handler);
        let requests: Arc<Mutex<Vec<Req>>> = Arc::default();
        let count = Arc::new(AtomicUsize::new(0));
        let log = Arc::clone(&requests);
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let (handler, log, count) =
                    (Arc::clone(&handler), Arc::clone(&log), Arc::clone(&count));
                std::thread::spawn(move || {
                    let _ = serve(conn, &*handler, &log, &count);
                });
            }
        });
        Server { base, requests }
    }

    pub fn seen(&self) -> Vec<Req> {
        self.requests.lock().unwrap().clone()
    }
}

fn serve(
    mut conn: TcpStream,
    handler: &Handler,
    log: &Mutex<Vec<Req>>,
    count: &AtomicUsize,
) -> std::io::Result<()> {
    let mut rd = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    rd.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let target = parts.next().unwrap_or("/").to_string();
    let mut len = 0usize;
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        if rd.read_line(&mut h)? == 0 || h == "\r\n" {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse().unwrap_or(0);
            }
            headers.insert(k.trim().to_lowercase(), v.trim().to_string());
        }
    }
    let mut body = vec![0; len];
    rd.read_exact(&mut body)?;
    let url = url::Url::parse(&format!("http://x{target}")).unwrap();
    let req = Req {
        method,
        path: url.path().to_string(),
        query: url
            .query_pairs()
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect(),
        body,
        headers,
        n: count.fetch_add(1, Ordering::SeqCst),
    };
    log.lock().unwrap().push(req.clone());
    let mut reply = handler(&req);
    while let Reply::Delay(d, next) = reply {
        std::thread::sleep(d);
        reply = *next;
    }
    match reply {
        Reply::Full(status, headers, body) => {
            let mut head = format!(
                "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n",
                body.len()
            );
            for (k, v) in headers {
                head.push_str(&format!("{k}: {v}\r\n"));
            }
            head.push_str("\r\n");
            conn.write_all(head.as_bytes())?;
            conn.write_all(&body)?;
        }
        Reply::Truncated { declared, body } => {
            conn.write_all(format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {declared}\r\nConnection: close\r\n\r\n").as_bytes())?;
            conn.write_all(&body)?;
        }
        Reply::Endless { bytes } => {
            conn.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n[",
            )?;
            let chunk = vec![b' '; 64 * 1024];
            let mut sent = 0;
            while sent < bytes {
                // The client hangs up once it has had enough: stop then.
                if conn.write_all(&chunk).is_err() {
                    break;
                }
                sent += chunk.len();
            }
        }
        Reply::Stream {
            headers,
            chunks,
            every,
            open,
        } => {
            open.up();
            let mut head = String::from("HTTP/1.1 200 OK\r\nConnection: close\r\n");
            for (k, v) in headers {
                head.push_str(&format!("{k}: {v}\r\n"));
            }
            head.push_str("\r\n");
            let mut sent = conn.write_all(head.as_bytes());
            for c in chunks {
                if sent.is_err() {
                    break;
                }
                std::thread::sleep(every);
                sent = conn.write_all(&c).and_then(|_| conn.flush());
            }
            open.down();
        }
        Reply::Delay(..) => unreachable!(),
    }
    conn.flush()?;
    let _ = conn.shutdown(std::net::Shutdown::Both);
    Ok(())
}

/// The datasets-server rows API over `rows`; every page takes `delay` (to
/// catch a crawl in flight).
pub fn rows_api(rows: Vec<serde_json::Value>, delay: std::time::Duration) -> Server {
    let rows = Arc::new(rows);
    Server::start(move |req: &Req| {
        let offset: usize = req.query["offset"].parse().unwrap();
        let length: usize = req.query["length"].parse().unwrap();
        let page: Vec<serde_json::Value> = rows
            .iter()
            .enumerate()
            .skip(offset)
            .take(length)
            .map(|(i, r)| serde_json::json!({"row_idx": i, "row": r, "truncated_cells": []}))
            .collect();
        let body = serde_json::json!({"features": [], "rows": page, "num_rows_total": rows.len(), "partial": false});
        Reply::Delay(delay, Box::new(Reply::json(200, &body)))
    })
}
