//! A git forge on 127.0.0.1: the real `git http-backend` behind a small HTTP server that asks for
//! Basic credentials and lets in only `oauth2` with an access token the fake OAuth provider
//! issued, the way forges that take OAuth tokens as passwords do.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use base64::Engine;

use crate::support::fake_oauth::FakeOAuth;

pub struct FakeForge {
    pub port: u16,
    /// Where the bare repositories are.
    pub root: PathBuf,
    /// How many requests were refused with 401.
    refused: Arc<Mutex<usize>>,
}

impl FakeForge {
    pub fn url(&self, repository: &str) -> String {
        format!("http://127.0.0.1:{}/{repository}", self.port)
    }

    pub fn refused(&self) -> usize {
        *self.refused.lock().unwrap()
    }
}

/// Serves the bare repositories under `root`, one connection at a time, until the test ends.
pub fn start(root: &Path, provider: &FakeOAuth) -> FakeForge {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let refused = Arc::new(Mutex::new(0));
    let (shared, provider, served) = (Arc::clone(&refused), provider.clone(), root.to_owned());
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            // A client that hangs up mid-request ends only its own request.
            let _ = serve(stream, &served, &provider, &shared);
        }
    });
    FakeForge {
        port,
        root: root.to_owned(),
        refused,
    }
}

struct Request {
    method: String,
    path: String,
    query: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }
}

fn serve(
    stream: TcpStream,
    root: &Path,
    provider: &FakeOAuth,
    refused: &Mutex<usize>,
) -> std::io::Result<()> {
    let mut writer = stream.try_clone()?;
    let request = read_request(&mut BufReader::new(stream))?;
    if !authorized(&request, provider) {
        *refused.lock().unwrap() += 1;
        return writer.write_all(
            b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"fake forge\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        );
    }
    let answer = http_backend(&request, root)?;
    writer.write_all(&answer)
}

fn read_request(reader: &mut BufReader<TcpStream>) -> std::io::Result<Request> {
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_owned();
    let target = parts.next().unwrap_or_default();
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let (path, query) = (path.to_owned(), query.to_owned());
    let mut headers = Vec::new();
    loop {
        line.clear();
        reader.read_line(&mut line)?;
        let Some((name, value)) = line.trim_end().split_once(':') else {
            break;
        };
        headers.push((name.trim().to_owned(), value.trim().to_owned()));
    }
    let mut request = Request {
        method,
        path,
        query,
        headers,
        body: Vec::new(),
    };
    let length = request
        .header("content-length")
        .and_then(|value| value.parse::<u64>().ok())
        .unwrap_or(0);
    reader.take(length).read_to_end(&mut request.body)?;
    Ok(request)
}

fn authorized(request: &Request, provider: &FakeOAuth) -> bool {
    let Some(encoded) = request
        .header("authorization")
        .and_then(|value| value.strip_prefix("Basic "))
    else {
        return false;
    };
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok());
    decoded
        .as_deref()
        .and_then(|pair| pair.strip_prefix("oauth2:"))
        .is_some_and(|token| provider.is_access_token(token))
}

/// Runs `git http-backend` as CGI for `request` and turns its output into an HTTP answer.
fn http_backend(request: &Request, root: &Path) -> std::io::Result<Vec<u8>> {
    let mut backend = Command::new("git");
    backend
        .arg("http-backend")
        .env("GIT_PROJECT_ROOT", root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("GATEWAY_INTERFACE", "CGI/1.1")
        .env("REQUEST_METHOD", &request.method)
        .env("PATH_INFO", &request.path)
        .env("QUERY_STRING", &request.query)
        .env("CONTENT_LENGTH", request.body.len().to_string())
        // A user authenticated by the server: http-backend then allows pushes.
        .env("REMOTE_USER", "oauth2")
        .env("REMOTE_ADDR", "127.0.0.1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    for (header, variable) in [
        ("content-type", "CONTENT_TYPE"),
        ("content-encoding", "HTTP_CONTENT_ENCODING"),
        ("git-protocol", "GIT_PROTOCOL"),
    ] {
        if let Some(value) = request.header(header) {
            backend.env(variable, value);
        }
    }
    let mut child = backend.spawn()?;
    child.stdin.take().unwrap().write_all(&request.body)?;
    let output = child.wait_with_output()?;
    let cgi = output.stdout;
    let split = cgi
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .map(|at| (at, 4))
        .or_else(|| {
            cgi.windows(2)
                .position(|window| window == b"\n\n")
                .map(|at| (at, 2))
        })
        .unwrap_or((cgi.len(), 0));
    let (head, body) = (
        String::from_utf8_lossy(&cgi[..split.0]),
        &cgi[split.0 + split.1..],
    );
    let mut status = "200 OK".to_owned();
    let mut answer_head = String::new();
    for line in head.lines() {
        match line.split_once(':') {
            Some((name, value)) if name.eq_ignore_ascii_case("status") => {
                status = value.trim().to_owned();
            }
            Some(_) => answer_head.push_str(&format!("{line}\r\n")),
            None => {}
        }
    }
    let mut answer =
        format!("HTTP/1.1 {status}\r\n{answer_head}Connection: close\r\n\r\n").into_bytes();
    answer.extend_from_slice(body);
    Ok(answer)
}
