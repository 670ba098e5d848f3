//! Socket API benchmark: `cargo bench --bench socket`.
//!
//! Starts `vault serve` pinned to CPU 0 with 10,000 accounts whose tokens are cached, drives it
//! from CPU 1 over keep-alive connections (c = 1, 8, 64) and new connections per request (c = 64),
//! times `vault token NAME` as a whole process, and reads the daemon's RSS idle and after load.
//! A bare hyper "hello" server on a Unix socket, pinned the same way, is measured in the same run
//! as the floor, and every figure is also given as a ratio to it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokenvault::keys::KeySource;
use tokenvault::store::{AnyStore, Store};
use tokio::net::UnixStream;

mod support;

use support::{RUN_FOR, client_runtime, load, request, rss_kib, spawn, wait_for};

const ACCOUNTS: usize = 10_000;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--hello-server") {
        return hello_server(Path::new(&args[2]));
    }
    if args.get(1).map(String::as_str) == Some("--blocking-server") {
        return blocking_server(Path::new(&args[2]));
    }
    if args.iter().any(|arg| arg == "--list") {
        return;
    }
    // `cargo bench --bench socket -- --growth-only`: just the 1k/10k/100k table.
    if args.iter().any(|arg| arg == "--growth-only") {
        return growth(&[1_000, 10_000, 100_000]);
    }
    let work = scratch_dir();
    let (vault_dir, key_file) = build_vault(&work);
    let vault_socket = work.join("vault.sock");
    let hello_socket = work.join("hello.sock");

    pin_to(0);
    let mut hello = spawn(
        Command::new(std::env::current_exe().unwrap())
            .arg("--hello-server")
            .arg(&hello_socket),
    );
    let blocking_socket = work.join("blocking.sock");
    let mut blocking = spawn(
        Command::new(std::env::current_exe().unwrap())
            .arg("--blocking-server")
            .arg(&blocking_socket),
    );
    let mut daemon = spawn(vault(&vault_dir, &key_file, &vault_socket).arg("serve"));
    pin_to(1);
    wait_for(&blocking_socket);
    wait_for(&hello_socket);
    wait_for(&vault_socket);
    std::thread::sleep(Duration::from_millis(500));
    let idle_rss = rss_kib(daemon.id());
    let idle_before = cpu_seconds(daemon.id());
    std::thread::sleep(RUN_FOR);
    let idle_cpu = (cpu_seconds(daemon.id()) - idle_before) * 1e3 / RUN_FOR.as_secs_f64();

    println!(
        "tokenvault socket benchmark — server pinned to CPU 0, client on CPU 1, {ACCOUNTS} accounts"
    );
    println!(
        "{:<34} {:>12} {:>10} {:>10} {:>14}",
        "scenario", "req/s", "p50 µs", "p99 µs", "vs hello req/s"
    );
    let token_path = "/v1/token/account-00042";
    for (label, connections, keep_alive) in [
        ("keep-alive c=1", 1, true),
        ("keep-alive c=8", 8, true),
        ("keep-alive c=64", 64, true),
        ("new connection per request c=64", 64, false),
    ] {
        let floor = load(&hello_socket, "/", connections, keep_alive);
        let ours = load(&vault_socket, token_path, connections, keep_alive);
        println!(
            "{:<34} {:>12.0} {:>10.1} {:>10.1} {:>13.2}x   (hello: {:.0} req/s, p50 {:.1} µs)",
            label,
            ours.rate,
            ours.p50,
            ours.p99,
            ours.rate / floor.rate,
            floor.rate,
            floor.p50
        );
    }
    // What a new connection per request costs the daemon (every `vault token`, msmtp
    // `passwordeval`, mbsync `PassCmd` opens one), next to a bare blocking-accept server that
    // answers each connection on the accepting thread, as pizauth does.
    for connections in [1, 8] {
        let ours = cpu_per_request(daemon.id(), &vault_socket, token_path, connections);
        let floor = cpu_per_request(blocking.id(), &blocking_socket, "/", connections);
        println!(
            "{:<34} daemon {:>6.1} µs CPU/request   blocking server {:>6.1} µs   {:.2}x",
            format!("new connection per request c={connections}"),
            ours,
            floor,
            ours / floor
        );
    }
    // Touch many accounts so their tokens are loaded into the daemon's memory.
    let spread: Vec<String> = (0..ACCOUNTS)
        .step_by(10)
        .map(|i| format!("/v1/token/account-{i:05}"))
        .collect();
    let runtime = client_runtime();
    runtime.block_on(async {
        for path in &spread {
            let mut stream = UnixStream::connect(&vault_socket).await.unwrap();
            request(&mut stream, path, false).await;
        }
    });
    let loaded_rss = rss_kib(daemon.id());

    whole_process_comparison(&vault_dir, &key_file, &vault_socket, &work, daemon.id());
    // How the daemon served the connections of this whole run.
    let metrics = runtime.block_on(async {
        let mut stream = UnixStream::connect(&vault_socket).await.unwrap();
        request(&mut stream, "/v1/metrics", false).await
    });
    for line in String::from_utf8_lossy(&metrics)
        .lines()
        .filter(|line| line.starts_with("tokenvault_socket_connections_total"))
    {
        println!("{line}");
    }
    println!(
        "daemon RSS idle with {ACCOUNTS} accounts: {:.1} MiB; CPU idle: {idle_cpu:.1} ms per second",
        idle_rss as f64 / 1024.0
    );
    println!(
        "daemon RSS after load ({} accounts' tokens in memory): {:.1} MiB",
        spread.len(),
        loaded_rss as f64 / 1024.0
    );
    println!(
        "hello server RSS: {:.1} MiB",
        rss_kib(hello.id()) as f64 / 1024.0
    );

    for child in [&mut daemon, &mut hello, &mut blocking] {
        let _ = child.kill();
        let _ = child.wait();
    }
    let _ = std::fs::remove_dir_all(&work);
    growth(&[1_000, 10_000, 100_000]);
}

fn scratch_dir() -> PathBuf {
    // tmpfs when there is one: the set-up writes 10,000 accounts with synchronous=FULL.
    let base = if Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    let dir = base.join(format!("tokenvault-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn build_vault(work: &Path) -> (PathBuf, PathBuf) {
    build_vault_of(work, ACCOUNTS)
}

/// A vault of `count` accounts whose access tokens are stored and valid for a day (their token
/// endpoint is unreachable: nothing in the benchmark calls it).
fn build_vault_of(work: &Path, count: usize) -> (PathBuf, PathBuf) {
    let dir = work.join("vault");
    let key_file = work.join("master.key");
    let store = Store::init(&dir, KeySource::File(key_file.clone()), None).unwrap();
    support::add_accounts(&mut AnyStore::Local(store), count);
    (dir, key_file)
}

/// How the daemon grows with the number of accounts: start-up until the socket answers, RSS idle
/// and with every account's token loaded (first fetch of each, 8 at a time), the first-fetch
/// rate, and `vault status` over all of them.
fn growth(sizes: &[usize]) {
    let empty = empty_daemon_rss_kib();
    println!(
        "a daemon with no account: RSS {:.1} MiB",
        empty as f64 / 1024.0
    );
    println!(
        "{:>8} {:>12} {:>10} {:>12} {:>14} {:>16} {:>16} {:>12}",
        "accounts",
        "start-up ms",
        "RSS idle",
        "RSS loaded",
        "B/token loaded",
        "B/account (all)",
        "first fetch/s",
        "status ms"
    );
    for &count in sizes {
        let work = scratch_dir().join(format!("growth-{count}"));
        std::fs::create_dir_all(&work).unwrap();
        let (dir, key_file) = build_vault_of(&work, count);
        let socket = work.join("vault.sock");
        pin_to(0);
        let started = Instant::now();
        let mut daemon = spawn(vault(&dir, &key_file, &socket).arg("serve"));
        pin_to(1);
        wait_for(&socket);
        let start_up = started.elapsed();
        std::thread::sleep(Duration::from_millis(300));
        let idle = rss_kib(daemon.id());
        let paths: Vec<String> = (0..count)
            .map(|i| format!("/v1/token/account-{i:05}"))
            .collect();
        let fetched = Instant::now();
        client_runtime().block_on(async {
            let chunks: Vec<Vec<String>> = paths
                .chunks(count.div_ceil(8))
                .map(<[String]>::to_vec)
                .collect();
            let tasks: Vec<_> = chunks
                .into_iter()
                .map(|chunk| {
                    let socket = socket.clone();
                    tokio::spawn(async move {
                        let mut stream = UnixStream::connect(&socket).await.unwrap();
                        for path in &chunk {
                            request(&mut stream, path, true).await;
                        }
                    })
                })
                .collect();
            for task in tasks {
                task.await.unwrap();
            }
        });
        let rate = count as f64 / fetched.elapsed().as_secs_f64();
        let loaded = rss_kib(daemon.id());
        let mut status = vault(&dir, &key_file, &socket);
        status
            .arg("status")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let status_ms = median(
            (0..3)
                .map(|_| {
                    let started = Instant::now();
                    assert!(status.status().unwrap().success());
                    started.elapsed().as_secs_f64() * 1e3
                })
                .collect(),
        );
        println!(
            "{count:>8} {:>12.0} {:>8.1} MiB {:>8.1} MiB {:>14.0} {:>16.0} {:>16.0} {:>12.0}",
            start_up.as_secs_f64() * 1e3,
            idle as f64 / 1024.0,
            loaded as f64 / 1024.0,
            (loaded.saturating_sub(idle) * 1024) as f64 / count as f64,
            (loaded.saturating_sub(empty) * 1024) as f64 / count as f64,
            rate,
            status_ms
        );
        let _ = daemon.kill();
        let _ = daemon.wait();
        let _ = std::fs::remove_dir_all(&work);
    }
}

/// The RSS of a daemon serving an empty vault: what the growth table's per-account memory is
/// counted over.
fn empty_daemon_rss_kib() -> u64 {
    let work = scratch_dir().join("growth-empty");
    std::fs::create_dir_all(&work).unwrap();
    let (dir, key_file) = build_vault_of(&work, 0);
    let socket = work.join("vault.sock");
    let mut daemon = spawn(vault(&dir, &key_file, &socket).arg("serve"));
    wait_for(&socket);
    std::thread::sleep(Duration::from_millis(300));
    let rss = rss_kib(daemon.id());
    let _ = daemon.kill();
    let _ = daemon.wait();
    let _ = std::fs::remove_dir_all(&work);
    rss
}

fn vault(dir: &Path, key_file: &Path, socket: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_vault"));
    command
        .arg("--vault")
        .arg(dir)
        .arg("--key-file")
        .arg(key_file)
        .arg("--socket")
        .arg(socket);
    command.env_remove("VAULT_MASTER_KEY");
    command
}

fn pin_to(cpu: usize) {
    let mut set = rustix::thread::CpuSet::new();
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    set.set(cpu.min(cpus.saturating_sub(1)));
    let _ = rustix::thread::sched_setaffinity(None, &set);
}

/// p50 wall time of `vault token NAME` as a whole process, in µs.
/// `vault token NAME` as a whole process, next to `pizauth show` (when pizauth is on PATH, or
/// named by $PIZAUTH) and `/bin/true`, timed in interleaved rounds: this VM's speed drifts by 2×
/// between runs, so only ratios measured round by round mean anything.
fn whole_process_comparison(dir: &Path, key_file: &Path, socket: &Path, work: &Path, daemon: u32) {
    let mut vault_token = vault(dir, key_file, socket);
    vault_token.args(["token", "account-00042"]);
    let mut contenders = vec![("`vault token NAME`", vault_token, true, Some(daemon))];
    let pizauth = pizauth_server(work);
    if let Some((program, runtime, server)) = &pizauth {
        let mut show = Command::new(program);
        // No provider behind it, so `show` answers "token unavailable" (exit 1): the same
        // process start, socket round trip and print as with a token.
        show.args(["show", "mail"]).env("XDG_RUNTIME_DIR", runtime);
        contenders.push(("`pizauth show` (no token)", show, false, Some(server.id())));
    }
    contenders.push(("`/bin/true`", Command::new("/bin/true"), true, None));
    let rounds = 400;
    let mut times = vec![Vec::with_capacity(rounds); contenders.len()];
    // Each server's CPU is read around each of its calls only, so the others' calls and the
    // time between rounds do not count.
    let mut server_cpu = vec![0.0; contenders.len()];
    for _ in 0..rounds {
        for (((_, command, succeeds, server), times), cpu) in
            contenders.iter_mut().zip(&mut times).zip(&mut server_cpu)
        {
            command.stdout(Stdio::null()).stderr(Stdio::null());
            let before = server.map_or(0.0, cpu_seconds);
            let started = Instant::now();
            let status = command.status().unwrap();
            times.push(started.elapsed().as_secs_f64() * 1e6);
            *cpu += server.map_or(0.0, cpu_seconds) - before;
            assert_eq!(status.success(), *succeeds, "{command:?}");
        }
    }
    for (((label, .., server), own), cpu) in contenders.iter().zip(&times).zip(server_cpu) {
        let ratios: Vec<f64> = own.iter().zip(&times[0]).map(|(t, v)| v / t).collect();
        let server_cpu = server.map_or(String::new(), |_| {
            format!(
                "   its server: {:.0} µs CPU/call",
                cpu * 1e6 / rounds as f64
            )
        });
        println!(
            "{label:<34} p50 {:>6.0} µs   `vault token` / this, paired median: {:.2}x{server_cpu}",
            median(own.clone()),
            median(ratios)
        );
    }
    if pizauth.is_none() {
        println!("(pizauth not found: put it on PATH or set PIZAUTH to compare with it)");
    }
    if let Some((.., mut server)) = pizauth {
        let _ = server.kill();
        let _ = server.wait();
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// A running `pizauth server` with one account, when pizauth is installed: (program, its
/// runtime directory, the server process).
fn pizauth_server(work: &Path) -> Option<(PathBuf, PathBuf, Child)> {
    let program = std::env::var_os("PIZAUTH").map(PathBuf::from).or_else(|| {
        std::env::split_paths(&std::env::var_os("PATH")?)
            .map(|dir| dir.join("pizauth"))
            .find(|candidate| candidate.is_file())
    })?;
    let runtime = work.join("pizauth-runtime");
    std::fs::create_dir_all(&runtime).ok()?;
    std::fs::set_permissions(
        &runtime,
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .ok()?;
    let config = work.join("pizauth.conf");
    std::fs::write(
        &config,
        "account \"mail\" {\n auth_uri = \"http://127.0.0.1:9/a\";\n token_uri = \"http://127.0.0.1:9/t\";\n client_id = \"c\";\n scopes = [\"s\"];\n}\n",
    )
    .ok()?;
    // On the daemon's CPU, as the daemon: a server woken on its client's CPU skips the
    // cross-CPU wake-up the daemon pays.
    pin_to(0);
    let server = Command::new(&program)
        .args(["server", "-d", "-c"])
        .arg(&config)
        .env("XDG_RUNTIME_DIR", &runtime)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    pin_to(1);
    let server = server.ok()?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_dir(&runtime).ok()?.next().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    Some((program, runtime, server))
}

/// CPU seconds process `pid` has run so far: the sum over its live threads of the scheduler's
/// nanosecond on-CPU time (`/proc/PID/task/*/schedstat`), far finer than utime's 10 ms ticks.
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0.0;
    };
    let nanos: u64 = tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("schedstat")).ok())
        .filter_map(|line| line.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    nanos as f64 / 1e9
}

/// Microseconds of the server's CPU per request, new connection per request, `connections` at
/// once for `RUN_FOR`.
fn cpu_per_request(pid: u32, socket: &Path, path: &str, connections: usize) -> f64 {
    let before = cpu_seconds(pid);
    let figures = load(socket, path, connections, false);
    let used = cpu_seconds(pid) - before;
    used * 1e6 / (figures.rate * RUN_FOR.as_secs_f64())
}

/// The bare floor for new connections: one thread, blocking accept, read the request head,
/// write a fixed answer, close — no runtime at all.
fn blocking_server(socket: &Path) {
    use std::io::{Read, Write};
    let _ = std::fs::remove_file(socket);
    let listener = std::os::unix::net::UnixListener::bind(socket).unwrap();
    let answer = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 15\r\nconnection: close\r\n\r\n{\"status\":\"ok\"}";
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        let mut buffer = [0u8; 2048];
        let mut read = 0;
        while !buffer[..read]
            .windows(4)
            .any(|window| window == b"\r\n\r\n")
        {
            match stream.read(&mut buffer[read..]) {
                Ok(0) | Err(_) => break,
                Ok(n) => read += n,
            }
        }
        let _ = stream.write_all(answer);
    }
}

/// The floor: a bare hyper server answering a fixed JSON body on a Unix socket.
fn hello_server(socket: &Path) {
    use http_body_util::Full;
    use hyper::server::conn::http1;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let _ = std::fs::remove_file(socket);
        let listener = tokio::net::UnixListener::bind(socket).unwrap();
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let service = service_fn(|_request| async {
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                        bytes::Bytes::from_static(b"{\"status\":\"ok\"}"),
                    )))
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
}
