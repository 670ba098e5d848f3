//! What the benchmarks share: the accounts they load, starting servers, RSS, and the load
//! generator (one request at a time per connection, latencies recorded).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokenvault::account::{AccountConfig, Grant, LoginMethod};
use tokenvault::oauth::ClientAuth;
use tokenvault::oauth::provider::Endpoints;
use tokenvault::secret::SecretString;
use tokenvault::store::{AnyStore, NewAccount, TokenUpdate};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

pub const RUN_FOR: Duration = Duration::from_secs(3);

/// Adds `count` accounts named `account-NNNNN` whose access tokens are stored and valid for a
/// day (their token endpoint is unreachable: nothing calls it), 1,000 per transaction.
pub fn add_accounts(store: &mut AnyStore, count: usize) {
    let config = AccountConfig {
        grant: Grant::RefreshToken {
            client_id: "bench-client".into(),
            login: LoginMethod::Browser,
            identity: None,
        },
        endpoints: Endpoints::token_only("custom", "http://127.0.0.1:9/token".into()),
        client_auth: ClientAuth::Basic,
        scopes: vec!["https://mail.google.com/".into()],
    };
    let refresh = SecretString::from("rt-bench-not-used".to_owned());
    let secrets = [(tokenvault::account::SecretKind::RefreshToken, &refresh)];
    let expires = tokenvault::clock::now_unix() + 86_400;
    let names: Vec<String> = (0..count).map(|i| format!("account-{i:05}")).collect();
    let tokens: Vec<SecretString> = (0..count)
        .map(|i| {
            SecretString::from(format!(
                "ya29.bench-access-token-{i:05}-{}",
                "x".repeat(180)
            ))
        })
        .collect();
    let updates: Vec<TokenUpdate<'_>> = tokens
        .iter()
        .map(|access| TokenUpdate {
            access_token: access,
            access_expires_at: Some(expires),
            new_refresh_token: None,
            refresh_expires_at: None,
            validated: true,
        })
        .collect();
    let accounts: Vec<NewAccount<'_>> = names
        .iter()
        .zip(&updates)
        .map(|(name, update)| NewAccount {
            name,
            config: &config,
            secrets: &secrets,
            tokens: update,
            validation_schedule: None,
            refresh_before: None,
            client_secret_expires_at: None,
            key_created_at: None,
            rotate_every: None,
        })
        .collect();
    for batch in accounts.chunks(1000) {
        store.insert_accounts(batch).unwrap();
    }
}

pub fn spawn(command: &mut Command) -> Child {
    command
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start a server")
}

pub fn wait_for(socket: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::os::unix::net::UnixStream::connect(socket).is_err() {
        assert!(
            Instant::now() < deadline,
            "{} did not come up",
            socket.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

pub struct Figures {
    pub rate: f64,
    pub p50: f64,
    pub p99: f64,
}

pub fn client_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// `connections` clients, each sending one request at a time for RUN_FOR.
pub fn load(socket: &Path, path: &str, connections: usize, keep_alive: bool) -> Figures {
    let runtime = client_runtime();
    let mut latencies: Vec<u32> = runtime.block_on(async {
        let deadline = Instant::now() + RUN_FOR;
        let tasks: Vec<_> = (0..connections)
            .map(|_| {
                let socket = socket.to_owned();
                let path = path.to_owned();
                tokio::spawn(async move {
                    let mut latencies = Vec::with_capacity(1 << 16);
                    let mut stream = None;
                    while Instant::now() < deadline {
                        let started = Instant::now();
                        if stream.is_none() {
                            stream = Some(UnixStream::connect(&socket).await.unwrap());
                        }
                        request(stream.as_mut().unwrap(), &path, keep_alive).await;
                        if !keep_alive {
                            stream = None;
                        }
                        latencies.push(started.elapsed().as_nanos() as u32);
                    }
                    latencies
                })
            })
            .collect();
        let mut all = Vec::new();
        for task in tasks {
            all.extend(task.await.unwrap());
        }
        all
    });
    latencies.sort_unstable();
    let at = |q: f64| {
        latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)] as f64 / 1000.0
    };
    Figures {
        rate: latencies.len() as f64 / RUN_FOR.as_secs_f64(),
        p50: at(0.50),
        p99: at(0.99),
    }
}

/// Sends one GET and reads its whole answer (Content-Length framed).
pub async fn request(stream: &mut UnixStream, path: &str, keep_alive: bool) -> Vec<u8> {
    let connection = if keep_alive { "keep-alive" } else { "close" };
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: {connection}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut buffer = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let read = stream.read(&mut chunk).await.unwrap();
        assert!(read > 0, "the server closed the connection");
        buffer.extend_from_slice(&chunk[..read]);
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut response = httparse::Response::new(&mut headers);
        if let Ok(httparse::Status::Complete(head)) = response.parse(&buffer) {
            assert_eq!(
                response.code,
                Some(200),
                "{}",
                String::from_utf8_lossy(&buffer)
            );
            let length: usize = response
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .and_then(|h| std::str::from_utf8(h.value).ok()?.parse().ok())
                .unwrap_or(0);
            if buffer.len() >= head + length {
                return buffer.split_off(head);
            }
        }
    }
}
