//! How the effective configuration (`tether check-config`) writes values back: paths and
//! optional paths, counts, URLs with their password masked.

use std::path::Path;

use toml_edit::{value, Item};

/// A path key as written back: `""` for none.
pub(super) fn path(path: Option<&Path>) -> Item {
    value(path.map_or_else(String::new, |path| path.to_string_lossy().into_owned()))
}

/// A count key as written back (TOML integers are `i64`).
pub(super) fn count(count: usize) -> Item {
    value(i64::try_from(count).unwrap_or(i64::MAX))
}

/// An address key as written back: `""` for none.
pub(super) fn address(address: Option<std::net::SocketAddr>) -> Item {
    value(address.map_or_else(String::new, |address| address.to_string()))
}

/// `url` with the password it holds, if any, replaced by `****`.
pub fn mask_password(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|at| at + 3) else {
        return url.to_string();
    };
    let rest = &url[scheme_end..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => match rest[..at].find(':') {
            Some(colon) => format!(
                "{}{}:****{}",
                &url[..scheme_end],
                &rest[..colon],
                &rest[at..]
            ),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}
