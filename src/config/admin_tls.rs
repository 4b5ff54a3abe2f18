//! The `[admin.tls]` table: the certificate and key that make the admin API HTTPS only.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use toml_edit::Item;

use crate::config::check::Check;
use crate::config::error::ConfigError;
use crate::config::format;

/// The `[admin.tls]` table when set.
#[derive(Debug, Clone)]
pub struct AdminTls {
    /// The certificate chain, PEM.
    pub cert_file: PathBuf,
    /// The private key, PEM.
    pub key_file: PathBuf,
}

/// `[admin.tls]` as written; both `""` by default (plain HTTP).
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default, expecting = "an [admin.tls] table")]
pub(super) struct RawAdminTls {
    cert_file: String,
    key_file: String,
}

impl Check<'_> {
    /// `[admin.tls]`: `None` when both files are `""`; one without the other is refused.
    pub(super) fn admin_tls(&self, raw: RawAdminTls) -> Result<Option<AdminTls>, ConfigError> {
        let folder = self.folder();
        Ok(match (raw.cert_file.as_str(), raw.key_file.as_str()) {
            ("", "") => None,
            ("", _) => {
                return Err(self.error(
                    "admin.tls.cert_file",
                    "must be set when admin.tls.key_file is".into(),
                ))
            }
            (_, "") => {
                return Err(self.error(
                    "admin.tls.key_file",
                    "must be set when admin.tls.cert_file is".into(),
                ))
            }
            (cert, key) => Some(AdminTls {
                cert_file: folder.join(cert),
                key_file: folder.join(key),
            }),
        })
    }
}

/// `[admin.tls]` as [`Config::effective_toml`](crate::config::Config::effective_toml) shows
/// it.
pub(super) fn effective(tls: Option<&AdminTls>) -> Item {
    let mut table = toml_edit::Table::new();
    table.insert(
        "cert_file",
        format::path(tls.map(|tls| tls.cert_file.as_path())),
    );
    table.insert(
        "key_file",
        format::path(tls.map(|tls| tls.key_file.as_path())),
    );
    Item::Table(table)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::testing::{assert_refused, config};

    #[test]
    fn admin_tls_needs_both_files_resolved_against_the_config_folder() {
        assert!(
            config("").unwrap().admin.tls.is_none(),
            "plain HTTP by default"
        );
        let loaded = config("[admin.tls]\ncert_file = \"a.pem\"\nkey_file = \"/k/a.key\"").unwrap();
        let tls = loaded.admin.tls.as_ref().expect("HTTPS");
        assert_eq!(tls.cert_file, Path::new("/etc/tether/a.pem"));
        assert_eq!(tls.key_file, Path::new("/k/a.key"));
        assert!(loaded
            .effective_toml()
            .contains("cert_file = \"/etc/tether/a.pem\""));
        assert_refused(
            "[admin.tls]\ncert_file = \"a.pem\"",
            "admin.tls.key_file",
            "must be set when admin.tls.cert_file is",
        );
        assert_refused(
            "[admin.tls]\nkey_file = \"a.key\"",
            "admin.tls.cert_file",
            "must be set when admin.tls.key_file is",
        );
    }
}
