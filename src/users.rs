//! User and group names or numbers, as `--uid`, `--gid` and `--socket-group` take them.

use std::collections::HashMap;

/// The uid of a user name or number.
pub fn uid_of(user: &str) -> Result<u32, String> {
    id_of(user, "/etc/passwd")
        .ok_or_else(|| format!("unknown user {user:?}: give a user name or a numeric uid"))
}

/// The gid of a group name or number.
pub fn gid_of(group: &str) -> Result<u32, String> {
    id_of(group, "/etc/group")
        .ok_or_else(|| format!("unknown group {group:?}: give a group name or a numeric gid"))
}

/// The name of a user given by name or uid, as this host knows it. A fleet grants by name:
/// the same uid may be someone else on another host.
pub fn user_name(user: &str) -> Result<String, String> {
    name_of(user, PASSWD).ok_or_else(|| {
        format!("no user {user:?} on this host: give the name of a user this host has (a fleet grants by name, as uids differ between hosts)")
    })
}

/// The name of a group given by name or gid, as this host knows it.
pub fn group_name(group: &str) -> Result<String, String> {
    name_of(group, GROUP).ok_or_else(|| {
        format!("no group {group:?} on this host: give the name of a group this host has (a fleet grants by name, as gids differ between hosts)")
    })
}

/// This host's users by name (for resolving a fleet's grants).
pub fn uids_by_name() -> HashMap<String, u32> {
    entries(PASSWD).collect()
}

/// This host's groups by name.
pub fn gids_by_name() -> HashMap<String, u32> {
    entries(GROUP).collect()
}

const PASSWD: &str = "/etc/passwd";
const GROUP: &str = "/etc/group";

fn id_of(name_or_number: &str, database: &str) -> Option<u32> {
    if let Ok(id) = name_or_number.parse::<u32>() {
        return Some(id);
    }
    entries(database).find_map(|(name, id)| (name == name_or_number).then_some(id))
}

fn name_of(name_or_number: &str, database: &str) -> Option<String> {
    let wanted = name_or_number.parse::<u32>().ok();
    entries(database)
        .find_map(|(name, id)| (name == name_or_number || wanted == Some(id)).then_some(name))
}

/// Both files have the name first and the id third (`name:x:id:…`); an unreadable file has none.
fn entries(database: &str) -> impl Iterator<Item = (String, u32)> {
    let text = std::fs::read_to_string(database).unwrap_or_default();
    let entries: Vec<(String, u32)> = text
        .lines()
        .filter_map(|line| {
            let mut fields = line.split(':');
            let name = fields.next()?;
            let id = fields.nth(1)?.parse::<u32>().ok()?;
            Some((name.to_owned(), id))
        })
        .collect();
    entries.into_iter()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_names() {
        assert_eq!(uid_of("1234"), Ok(1234));
        assert_eq!(uid_of("root"), Ok(0));
        assert_eq!(gid_of("root"), Ok(0));
        assert!(uid_of("no-such-user-tokenvault").is_err());
        assert_eq!(user_name("0").as_deref(), Ok("root"));
        assert_eq!(group_name("root").as_deref(), Ok("root"));
        assert!(user_name("4242424").is_err());
        assert_eq!(uids_by_name().get("root"), Some(&0));
    }
}
