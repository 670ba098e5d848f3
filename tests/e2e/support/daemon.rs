//! Starts `vault serve` as a real process and talks HTTP/1.1 to its Unix socket.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::support::TestVault;

pub struct Daemon {
    pub child: Child,
    pub socket: PathBuf,
}

impl Daemon {
    pub fn start(vault: &TestVault, extra: &[&str]) -> Daemon {
        let mut command = vault.command(&[&["serve"], extra].concat());
        command.stdout(Stdio::null()).stderr(Stdio::piped());
        Self::spawn(command, vault)
    }

    /// Starts `command` (a `vault serve` of `vault`) and waits until its socket answers.
    pub fn spawn(mut command: std::process::Command, vault: &TestVault) -> Daemon {
        let child = command.spawn().expect("start vault serve");
        let daemon = Daemon {
            child,
            socket: vault.socket(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while UnixStream::connect(&daemon.socket).is_err() {
            assert!(Instant::now() < deadline, "vault serve did not come up");
            std::thread::sleep(Duration::from_millis(20));
        }
        daemon
    }

    /// SIGTERM, then the exit status and what the daemon printed.
    pub fn stop(mut self) -> (std::process::ExitStatus, String) {
        signal(&self.child, rustix::process::Signal::TERM);
        let status = self.child.wait().unwrap();
        let mut stderr = String::new();
        self.child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .unwrap();
        (status, stderr)
    }

    pub fn get(&self, path: &str) -> Answer {
        get(&self.socket, path)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn signal(child: &Child, signal: rustix::process::Signal) {
    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    rustix::process::kill_process(pid, signal).unwrap();
}

#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|_| panic!("not JSON: {}", self.body))
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One request on a fresh connection.
/// `get`, for a daemon that may be killed mid-request: `None` when it went away.
/// GET `path` from `socket` as user `nobody` (curl run as uid and gid 65534): the status and the
/// JSON body (null when there is none).
pub fn get_as_nobody(socket: &Path, path: &str) -> (u16, serde_json::Value) {
    use std::os::unix::process::CommandExt;
    let output = std::process::Command::new("curl")
        .args(["-s", "-w", "\n%{http_code}", "--unix-socket"])
        .arg(socket)
        .arg(format!("http://localhost{path}"))
        .uid(65534)
        .gid(65534)
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (
        code.parse().unwrap_or(0),
        serde_json::from_str(body).unwrap_or_default(),
    )
}

pub fn try_get(socket: &Path, path: &str) -> Option<Answer> {
    let mut stream = UnixStream::connect(socket).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).ok()?;
    parse(&raw)
}

pub fn get(socket: &Path, path: &str) -> Answer {
    let mut stream = UnixStream::connect(socket).expect("connect to the daemon");
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    parse(&raw).unwrap_or_else(|| panic!("not HTTP: {:?}", String::from_utf8_lossy(&raw)))
}

pub fn parse(raw: &[u8]) -> Option<Answer> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    let httparse::Status::Complete(head) = response.parse(raw).ok()? else {
        return None;
    };
    Some(Answer {
        status: response.code?,
        headers: response
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_owned(),
                    String::from_utf8_lossy(h.value).into_owned(),
                )
            })
            .collect(),
        body: String::from_utf8_lossy(&raw[head..]).into_owned(),
    })
}

/// `count` concurrent requests for `path`, each on its own connection.
pub fn get_concurrently(socket: &Path, path: &str, count: usize) -> Vec<Answer> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let tasks: Vec<_> = (0..count)
            .map(|_| {
                let socket = socket.to_owned();
                let path = path.to_owned();
                tokio::spawn(async move { get_async(&socket, &path).await })
            })
            .collect();
        let mut answers = Vec::with_capacity(count);
        for task in tasks {
            answers.push(task.await.unwrap());
        }
        answers
    })
}

async fn get_async(socket: &Path, path: &str) -> Answer {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::UnixStream::connect(socket)
        .await
        .expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    parse(&raw).expect("HTTP answer")
}
