use super::{Context, when};
use crate::account::Account;
use crate::error::Error;

pub(super) fn list(context: &Context) -> Result<(), Error> {
    let accounts = context.open()?.accounts()?;
    if accounts.is_empty() {
        println!("No accounts yet. Add one with: vault add-account NAME …");
        return Ok(());
    }
    println!("{:<24} {:<20} {:<10} STATE", "NAME", "KIND", "PROVIDER");
    for account in accounts {
        println!(
            "{:<24} {:<20} {:<10} {}",
            account.name,
            account.config.grant.as_str(),
            account.config.endpoints.provider,
            account.state.as_str()
        );
    }
    Ok(())
}

pub(super) fn status(context: &Context, name: Option<&str>) -> Result<(), Error> {
    let store = context.open()?;
    match name {
        Some(name) => print_details(&store.account(name)?),
        None => {
            let accounts = store.accounts()?;
            if accounts.is_empty() {
                println!("No accounts yet. Add one with: vault add-account NAME …");
            }
            for account in &accounts {
                print_details(account);
                println!();
            }
        }
    }
    Ok(())
}

fn print_details(account: &Account) {
    let optional = |unix: Option<i64>| unix.map_or_else(|| "never".to_owned(), when);
    let config = &account.config;
    println!("{}", account.name);
    println!("  state            {}", account.state.as_str());
    println!(
        "  kind             {} ({})",
        config.grant.as_str(),
        config.endpoints.provider
    );
    if let Some(client_id) = &config.client_id {
        println!("  client id        {client_id}");
    }
    if let Some(email) = &config.service_account_email {
        println!("  service account  {email}");
    }
    if let Some(subject) = &config.subject {
        println!("  subject          {subject}");
    }
    println!("  scopes           {}", config.scopes.join(" "));
    println!("  token expires    {}", optional(account.access_expires_at));
    if account.refresh_expires_at.is_some() {
        println!(
            "  refresh expires  {}",
            optional(account.refresh_expires_at)
        );
    }
    println!("  last refresh     {}", optional(account.last_refresh_at));
    println!("  last validation  {}", optional(account.last_validated_at));
    println!(
        "  last error       {}",
        account.last_error.as_deref().unwrap_or("none")
    );
    println!("  added            {}", when(account.created_at));
}

pub(super) fn remove(context: &Context, name: &str) -> Result<(), Error> {
    let mut store = context.open()?;
    let _lock = store.lock_account(name)?;
    store.remove_account(name)?;
    println!(
        "Removed account {name} and its secrets. The provider still knows the grant: revoke it there if it should end."
    );
    Ok(())
}
