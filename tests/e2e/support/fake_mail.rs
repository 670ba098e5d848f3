//! Fake SMTP and IMAP servers on 127.0.0.1 for the mail recipes: just enough of each protocol
//! for msmtp, git send-email (through msmtp) and mbsync to log in with XOAUTH2 or OAUTHBEARER
//! and do one thing, and IMAP over TLS for aerc, which insists on it. A login succeeds only with
//! a bearer token that the fake OAuth provider issued and still considers live, as Gmail's and
//! Outlook's servers would.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use base64::Engine;

use crate::support::fake_oauth::FakeOAuth;

#[derive(Clone, Copy)]
pub enum Protocol {
    Smtp,
    Imap,
    /// IMAP inside TLS from the first byte, with a self-signed certificate for 127.0.0.1.
    Imaps,
}

/// What the server saw, for the test to check.
#[derive(Default)]
pub struct Seen {
    /// Every bearer token presented in a SASL exchange, accepted or not.
    pub bearers: Vec<String>,
    /// Logins that succeeded.
    pub logins: usize,
    /// The messages accepted with DATA (SMTP).
    pub messages: Vec<String>,
}

pub struct FakeMail {
    pub port: u16,
    /// The server's certificate (PEM), for clients to trust when the protocol is TLS.
    pub certificate: String,
    seen: Arc<Mutex<Seen>>,
}

impl FakeMail {
    pub fn seen<T>(&self, read: impl FnOnce(&Seen) -> T) -> T {
        read(&self.seen.lock().unwrap())
    }
}

/// Serves `protocol` on a free loopback port, one connection at a time, until the test ends.
pub fn start(protocol: Protocol, provider: &FakeOAuth) -> FakeMail {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let (shared, provider) = (Arc::clone(&seen), provider.clone());
    let identity = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    let certificate = identity.cert.pem();
    let tls = tls_config(&identity);
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let connection: Box<dyn Connection> = match protocol {
                Protocol::Imaps => Box::new(rustls::StreamOwned::new(
                    rustls::ServerConnection::new(Arc::clone(&tls)).unwrap(),
                    stream,
                )),
                Protocol::Smtp | Protocol::Imap => Box::new(stream),
            };
            let mut session = Session::new(connection, &provider, &shared);
            // A client that hangs up mid-session ends only its own session.
            let _ = match protocol {
                Protocol::Smtp => session.smtp(),
                Protocol::Imap | Protocol::Imaps => session.imap(),
            };
        }
    });
    FakeMail {
        port,
        certificate,
        seen,
    }
}

fn tls_config(identity: &rcgen::CertifiedKey<rcgen::KeyPair>) -> Arc<rustls::ServerConfig> {
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(identity.signing_key.serialize_der().into());
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![identity.cert.der().clone()], key)
    .unwrap();
    Arc::new(config)
}

/// A client connection: plain TCP, or a TLS stream over it.
trait Connection: Read + Write + Send {}
impl<T: Read + Write + Send> Connection for T {}

struct Session<'a> {
    connection: BufReader<Box<dyn Connection>>,
    provider: &'a FakeOAuth,
    seen: &'a Mutex<Seen>,
    logged_in: bool,
}

impl<'a> Session<'a> {
    fn new(
        connection: Box<dyn Connection>,
        provider: &'a FakeOAuth,
        seen: &'a Mutex<Seen>,
    ) -> Session<'a> {
        Session {
            connection: BufReader::new(connection),
            provider,
            seen,
            logged_in: false,
        }
    }

    fn line(&mut self) -> std::io::Result<String> {
        let mut line = String::new();
        if self.connection.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        Ok(line.trim_end_matches(['\r', '\n']).to_owned())
    }

    fn send(&mut self, line: &str) -> std::io::Result<()> {
        let writer = self.connection.get_mut();
        writer.write_all(format!("{line}\r\n").as_bytes())?;
        writer.flush()
    }

    /// The SASL response of `AUTH MECH [initial]` / `AUTHENTICATE MECH [initial]`, asking for it
    /// with `prompt` when the client did not send it at once; true when its bearer is live.
    fn sasl_login(&mut self, initial: Option<&str>, prompt: &str) -> std::io::Result<bool> {
        let response = match initial {
            Some(response) => response.to_owned(),
            None => {
                self.send(prompt)?;
                self.line()?
            }
        };
        let bearer = bearer_of(&response);
        let accepted = bearer
            .as_deref()
            .is_some_and(|token| self.provider.is_access_token(token));
        let mut seen = self.seen.lock().unwrap();
        seen.bearers.extend(bearer);
        seen.logins += usize::from(accepted);
        self.logged_in = accepted;
        Ok(accepted)
    }

    fn smtp(&mut self) -> std::io::Result<()> {
        self.send("220 smtp.fake.example ESMTP")?;
        loop {
            let line = self.line()?;
            let mut words = line.split(' ');
            let verb = words.next().unwrap_or_default().to_ascii_uppercase();
            match verb.as_str() {
                "EHLO" | "HELO" => {
                    self.send("250-smtp.fake.example")?;
                    self.send("250-AUTH XOAUTH2 OAUTHBEARER")?;
                    self.send("250 8BITMIME")?;
                }
                "AUTH" => {
                    let initial = words.nth(1);
                    if self.sasl_login(initial, "334 ")? {
                        self.send("235 2.7.0 Accepted")?;
                    } else {
                        self.send("535 5.7.8 Username and Password not accepted")?;
                    }
                }
                "MAIL" | "RCPT" if !self.logged_in => {
                    self.send("530 5.7.0 Authentication Required")?;
                }
                "MAIL" | "RCPT" | "RSET" | "NOOP" => self.send("250 2.0.0 OK")?,
                "DATA" => {
                    self.send("354 Go ahead")?;
                    let mut message = String::new();
                    loop {
                        let line = self.line()?;
                        if line == "." {
                            break;
                        }
                        message.push_str(&line);
                        message.push('\n');
                    }
                    self.seen.lock().unwrap().messages.push(message);
                    self.send("250 2.0.0 OK queued")?;
                }
                "QUIT" => return self.send("221 2.0.0 closing connection"),
                _ => self.send("502 5.5.1 Unrecognized command")?,
            }
        }
    }

    fn imap(&mut self) -> std::io::Result<()> {
        const CAPABILITIES: &str = "IMAP4rev1 AUTH=XOAUTH2 AUTH=OAUTHBEARER";
        self.send(&format!(
            "* OK [CAPABILITY {CAPABILITIES}] imap.fake.example ready"
        ))?;
        loop {
            let line = self.line()?;
            let mut words = line.split(' ');
            let tag = words.next().unwrap_or("*").to_owned();
            let command = words.next().unwrap_or_default().to_ascii_uppercase();
            match command.as_str() {
                "CAPABILITY" => self.send(&format!("* CAPABILITY {CAPABILITIES}"))?,
                "AUTHENTICATE" => {
                    let initial = words.nth(1);
                    if !self.sasl_login(initial, "+ ")? {
                        // And hang up, as servers do after failed logins.
                        return self.send(&format!(
                            "{tag} NO [AUTHENTICATIONFAILED] Invalid credentials"
                        ));
                    }
                }
                "LIST" | "NAMESPACE" | "SELECT" | "EXAMINE" if !self.logged_in => {
                    self.send(&format!("{tag} BAD not authenticated"))?;
                    continue;
                }
                "LIST" => self.send("* LIST (\\HasNoChildren) \"/\" INBOX")?,
                "NAMESPACE" => self.send("* NAMESPACE ((\"\" \"/\")) NIL NIL")?,
                "LOGOUT" => {
                    self.send("* BYE logging out")?;
                    return self.send(&format!("{tag} OK LOGOUT completed"));
                }
                _ => {}
            }
            self.send(&format!("{tag} OK {command} completed"))?;
        }
    }
}

/// The token in an XOAUTH2 (`user=…^Aauth=Bearer T^A^A`) or OAUTHBEARER
/// (`n,a=…,^Ahost=…^Aauth=Bearer T^A^A`) response; both carry it in the same field.
fn bearer_of(response: &str) -> Option<String> {
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(response.trim())
        .ok()?;
    String::from_utf8(decoded)
        .ok()?
        .split('\u{1}')
        .find_map(|field| field.strip_prefix("auth=Bearer "))
        .map(str::to_owned)
}
