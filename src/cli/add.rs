use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, ValueEnum};

use super::{Context, block_on, when};
use crate::enroll::{self, BrowserOptions, Flow, NewAccount, NewCredentials};
use crate::error::Error;
use crate::oauth::provider::{EndpointOverrides, ProviderChoice};
use crate::oauth::{Client, ClientAuth, token};
use crate::secret::SecretString;

#[derive(Clone, Copy, ValueEnum)]
enum Provider {
    Google,
    Microsoft,
}

#[derive(Args)]
pub(super) struct BrowserArgs {
    /// Port for the loopback redirect on 127.0.0.1 (default: a free random port)
    #[arg(long, default_value_t = 0)]
    redirect_port: u16,
    /// Seconds to wait for the browser (or device approval) before giving up
    #[arg(long, default_value_t = 300, value_name = "SECS")]
    timeout: u64,
}

impl BrowserArgs {
    fn options(&self) -> BrowserOptions {
        BrowserOptions {
            redirect_port: self.redirect_port,
            timeout: Duration::from_secs(self.timeout),
            opener: crate::oauth::authcode::open_browser,
        }
    }
}

#[derive(Args)]
pub(super) struct AddArgs {
    /// A name for the account: letters, digits, '-', '_', '.', '@'
    name: String,

    /// A known provider (its endpoints can be replaced with --auth-url/--token-url/--device-url)
    #[arg(long, value_enum, conflicts_with = "issuer")]
    provider: Option<Provider>,
    /// Microsoft tenant (id or domain; common, organizations, consumers)
    #[arg(long, default_value = "common")]
    tenant: String,
    /// Any OIDC / RFC 8414 server: endpoints are discovered from its metadata
    #[arg(long, value_name = "URL")]
    issuer: Option<String>,
    /// Authorization endpoint
    #[arg(long, value_name = "URL")]
    auth_url: Option<String>,
    /// Token endpoint
    #[arg(long, value_name = "URL")]
    token_url: Option<String>,
    /// Device authorization endpoint
    #[arg(long, value_name = "URL")]
    device_url: Option<String>,
    /// The API that rotates the account's own key (vault rotate), when not the provider's
    /// public one: Google IAM for service accounts, Microsoft Graph for Microsoft client secrets
    #[arg(long, value_name = "URL")]
    key_api_url: Option<String>,

    /// The OAuth client id
    #[arg(long)]
    client_id: Option<String>,
    /// Read the client secret from this file (never give a secret as an argument)
    #[arg(long, value_name = "PATH")]
    client_secret_file: Option<PathBuf>,
    /// Read the client secret from standard input
    #[arg(long, conflicts_with = "client_secret_file")]
    client_secret_stdin: bool,
    /// The client has no secret (PKCE only); do not prompt for one
    #[arg(long, conflicts_with_all = ["client_secret_file", "client_secret_stdin"])]
    public_client: bool,
    /// How the client secret is sent to the token endpoint
    #[arg(long, value_enum, default_value = "basic")]
    client_auth: ClientAuth,

    /// Scopes to ask for (repeat the flag, or separate with spaces)
    #[arg(long = "scope", value_name = "SCOPE")]
    scopes: Vec<String>,

    /// Device authorization (RFC 8628) instead of a browser on this machine
    #[arg(long)]
    device: bool,
    /// Import an existing refresh token read from standard input (proven by one refresh)
    #[arg(long, conflicts_with_all = ["device", "client_secret_stdin"])]
    refresh_token_stdin: bool,
    /// The client's own credentials (client_credentials grant)
    #[arg(long, conflicts_with_all = ["device", "refresh_token_stdin"])]
    client_credentials: bool,
    /// A Google service-account JSON key file
    #[arg(long, value_name = "KEY.json", conflicts_with_all = ["device", "refresh_token_stdin", "client_credentials", "provider", "issuer", "client_id"])]
    service_account: Option<PathBuf>,
    /// Service accounts: the user to impersonate (domain-wide delegation)
    #[arg(long, requires = "service_account")]
    subject: Option<String>,

    #[command(flatten)]
    browser: BrowserArgs,
}

#[derive(Args)]
pub(super) struct LoginArgs {
    name: String,
    #[command(flatten)]
    browser: BrowserArgs,
    /// Accept a login by another user than the one the account was added for
    #[arg(long)]
    allow_different_identity: bool,
}

pub(super) fn run_add(context: &Context, args: AddArgs) -> Result<(), Error> {
    let mut store = context.open_any()?;
    let new = new_account(args)?;
    let http = token::http_client();
    let added = block_on(enroll::add_account(&mut store, &http, new))??;
    let account = &added.account;
    println!(
        "Added account {} ({}, {}). Access token valid until {}.\nGet a token with: vault token {}",
        account.name,
        account.config.grant.kind().as_str(),
        account.config.endpoints.provider,
        when(added.token.expires_at),
        account.name
    );
    Ok(())
}

pub(super) fn run_login(context: &Context, args: LoginArgs) -> Result<(), Error> {
    let mut store = context.open_any()?;
    let http = token::http_client();
    let token = block_on(enroll::login(
        &mut store,
        &http,
        &args.name,
        args.browser.options(),
        args.allow_different_identity,
    ))??;
    println!(
        "Account {} is authorized again. Access token valid until {}.",
        args.name,
        when(token.expires_at)
    );
    Ok(())
}

fn new_account(args: AddArgs) -> Result<NewAccount, Error> {
    let scopes: Vec<String> = args
        .scopes
        .iter()
        .flat_map(|scope| scope.split_whitespace())
        .map(str::to_owned)
        .collect();
    if let Some(path) = &args.service_account {
        let key_json = read_secret_file(path, "service-account key")?;
        return Ok(NewAccount {
            name: args.name,
            scopes,
            credentials: NewCredentials::ServiceAccount {
                key_json,
                subject: args.subject,
                key_api_url: args.key_api_url,
            },
        });
    }
    let provider = match (args.provider, &args.issuer) {
        (Some(Provider::Google), _) => ProviderChoice::Google,
        (Some(Provider::Microsoft), _) => ProviderChoice::Microsoft {
            tenant: args.tenant.clone(),
        },
        (None, Some(issuer)) => ProviderChoice::Issuer(issuer.clone()),
        (None, None) => ProviderChoice::Custom,
    };
    let overrides = EndpointOverrides {
        auth_url: args.auth_url.clone(),
        token_url: args.token_url.clone(),
        device_url: args.device_url.clone(),
        key_api_url: args.key_api_url.clone(),
    };
    let client_id = args.client_id.clone().ok_or_else(|| {
        Error::Input(
            "--client-id is required (the OAuth client's id from the provider's console)".into(),
        )
    })?;
    let secret = client_secret(&args, &client_id)?;
    let flow = if args.device {
        Flow::Device
    } else if args.refresh_token_stdin {
        Flow::ImportRefreshToken(read_stdin_secret("refresh token")?)
    } else if args.client_credentials {
        Flow::ClientCredentials
    } else {
        Flow::Browser(args.browser.options())
    };
    Ok(NewAccount {
        name: args.name,
        scopes,
        credentials: NewCredentials::OAuth {
            provider,
            overrides,
            client: Client {
                id: client_id,
                secret,
                auth: args.client_auth,
            },
            flow,
        },
    })
}

/// The client secret from a file, stdin or a prompt; never from an argument (argv is public).
fn client_secret(args: &AddArgs, client_id: &str) -> Result<Option<SecretString>, Error> {
    let secret = if args.public_client {
        None
    } else if let Some(path) = &args.client_secret_file {
        Some(read_secret_file(path, "client secret")?)
    } else if args.client_secret_stdin {
        Some(read_stdin_secret("client secret")?)
    } else if std::io::stdin().is_terminal() {
        let prompt = format!("Client secret for {client_id} (empty for a public client): ");
        let typed = rpassword::prompt_password(prompt)
            .map_err(|err| Error::Input(format!("cannot read the client secret: {err}")))?;
        Some(SecretString::from(typed).trimmed())
    } else {
        None
    };
    Ok(secret.filter(|secret| !secret.is_empty()))
}

pub(super) fn read_secret_file(path: &Path, what: &str) -> Result<SecretString, Error> {
    let text = std::fs::read_to_string(path).map_err(|err| {
        Error::Input(format!(
            "cannot read the {what} file {}: {err}",
            path.display()
        ))
    })?;
    let secret = SecretString::from(text).trimmed();
    if secret.is_empty() {
        return Err(Error::Input(format!(
            "the {what} file {} is empty",
            path.display()
        )));
    }
    Ok(secret)
}

pub(super) fn read_stdin_secret(what: &str) -> Result<SecretString, Error> {
    let mut text = String::new();
    std::io::stdin().read_to_string(&mut text).map_err(|err| {
        Error::Input(format!("cannot read the {what} from standard input: {err}"))
    })?;
    let secret = SecretString::from(text).trimmed();
    if secret.is_empty() {
        return Err(Error::Input(format!("no {what} on standard input")));
    }
    Ok(secret)
}
