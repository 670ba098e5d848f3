//! User and group names or numbers, as `--uid`, `--gid` and `--socket-group` take them.

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

/// Both files have the name first and the id third (`name:x:id:…`).
fn id_of(name_or_number: &str, database: &str) -> Option<u32> {
    if let Ok(id) = name_or_number.parse::<u32>() {
        return Some(id);
    }
    let entries = std::fs::read_to_string(database).ok()?;
    entries.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        let id = fields.nth(1)?.parse::<u32>().ok()?;
        (name == name_or_number).then_some(id)
    })
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
    }
}
