//! What a refusal from the two providers users hit most really means. `invalid_grant` looks the
//! same for a revocation, an expiry, a policy and a password change; Google's `error_subtype` and
//! description, and Microsoft's `AADSTS` codes, tell them apart, and the fix differs (sign in
//! again, ask an administrator, make a new client secret). One table per provider.

use super::RejectionKind;

/// The cause a provider's refusal names, and what to do about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Diagnosis {
    /// The account's next state follows from this (`reauth_required` or `client_error`).
    pub kind: RejectionKind,
    pub cause: &'static str,
}

const fn diagnosis(kind: RejectionKind, cause: &'static str) -> Diagnosis {
    Diagnosis { kind, cause }
}

use RejectionKind::{Configuration, InvalidClient, InvalidGrant};

/// Microsoft identity platform: `AADSTS` code → diagnosis.
const MICROSOFT: &[(u64, Diagnosis)] = &[
    (
        700082,
        diagnosis(
            InvalidGrant,
            "the refresh token expired after 90 days without use: sign in again",
        ),
    ),
    (
        50173,
        diagnosis(
            InvalidGrant,
            "the user's password changed (or an admin revoked the sessions): sign in again",
        ),
    ),
    (
        70043,
        diagnosis(
            InvalidGrant,
            "a conditional-access sign-in frequency policy ended the session: sign in again",
        ),
    ),
    (
        700084,
        diagnosis(
            InvalidGrant,
            "the refresh token's lifetime under the tenant's policy (sign-in frequency, single-page-app limit) is over: sign in again",
        ),
    ),
    (
        50076,
        diagnosis(
            InvalidGrant,
            "multi-factor authentication is now required (conditional access): sign in again and complete MFA",
        ),
    ),
    (
        50079,
        diagnosis(
            InvalidGrant,
            "the user must register for multi-factor authentication: sign in again and complete the registration",
        ),
    ),
    (
        65001,
        diagnosis(
            InvalidGrant,
            "the user or an administrator has not consented to the app's permissions: sign in again and consent, or ask an admin to grant tenant-wide consent",
        ),
    ),
    (
        7000215,
        diagnosis(
            InvalidClient,
            "the client secret is wrong: give the secret's value (not its id) from the app registration",
        ),
    ),
    (
        7000222,
        diagnosis(
            InvalidClient,
            "the client secret expired: create a new one in the app registration (Certificates & secrets), then re-add the account with it",
        ),
    ),
];

/// Google: (error, error_subtype or a phrase of the description) → diagnosis.
fn google(error: &str, subtype: Option<&str>, description: &str) -> Option<Diagnosis> {
    match (error, subtype) {
        ("invalid_grant", Some("invalid_rapt")) => Some(diagnosis(
            InvalidGrant,
            "a Google Workspace session-control policy requires signing in again (not a revocation): sign in again",
        )),
        ("admin_policy_enforced", _) => Some(diagnosis(
            Configuration,
            "the Google Workspace administrator's policy blocks this app or one of its scopes: ask the admin to trust the client id",
        )),
        ("invalid_grant", _) if description.contains("Token has been expired or revoked") => {
            Some(diagnosis(
                InvalidGrant,
                "the user revoked access, the token went unused for 6 months, the password changed, or the app is in \"Testing\" status (7-day tokens): sign in again",
            ))
        }
        _ => None,
    }
}

/// The diagnosis of a refusal, when the provider's answer names its cause.
pub fn diagnose(
    error: &str,
    subtype: Option<&str>,
    description: Option<&str>,
    error_codes: &[u64],
) -> Option<Diagnosis> {
    let description = description.unwrap_or_default();
    let code = error_codes
        .iter()
        .copied()
        .chain(aadsts_code(description))
        .find_map(|code| MICROSOFT.iter().find(|(known, _)| *known == code));
    code.map(|(_, diagnosis)| *diagnosis)
        .or_else(|| google(error, subtype, description))
}

/// `AADSTS700082: The refresh token has expired…` → 700082.
fn aadsts_code(description: &str) -> Option<u64> {
    let digits = description.split("AADSTS").nth(1)?;
    let end = digits
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(digits.len());
    digits[..end].parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn microsoft_codes_name_their_cause_from_the_codes_or_the_description() {
        let expired = diagnose(
            "invalid_grant",
            None,
            Some("AADSTS700082: The refresh token has expired due to inactivity."),
            &[],
        )
        .unwrap();
        assert_eq!(expired.kind, InvalidGrant);
        assert!(expired.cause.contains("90 days"));
        let secret = diagnose("invalid_client", None, None, &[7000222]).unwrap();
        assert_eq!(secret.kind, InvalidClient);
        assert!(secret.cause.contains("expired"));
        for code in [50173, 70043, 700084, 50076, 50079, 65001] {
            assert_eq!(
                diagnose("invalid_grant", None, None, &[code]).unwrap().kind,
                InvalidGrant
            );
        }
        assert_eq!(
            diagnose("invalid_client", None, Some("AADSTS7000215: x"), &[])
                .unwrap()
                .kind,
            InvalidClient
        );
        assert_eq!(
            diagnose("invalid_grant", None, Some("AADSTS1: unknown"), &[]),
            None
        );
        assert_eq!(aadsts_code("AADSTS"), None);
    }

    #[test]
    fn google_subtypes_and_descriptions_name_their_cause() {
        let rapt = diagnose(
            "invalid_grant",
            Some("invalid_rapt"),
            Some("reauth related error (invalid_rapt)"),
            &[],
        )
        .unwrap();
        assert!(rapt.cause.contains("not a revocation"));
        assert_eq!(
            diagnose("admin_policy_enforced", None, None, &[])
                .unwrap()
                .kind,
            Configuration
        );
        assert!(
            diagnose(
                "invalid_grant",
                None,
                Some("Token has been expired or revoked."),
                &[]
            )
            .is_some()
        );
        assert_eq!(
            diagnose("invalid_grant", None, Some("Bad Request"), &[]),
            None
        );
    }
}
