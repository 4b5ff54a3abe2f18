//! The printer's frame: [`Config::effective_toml`], the settings in force as `server.toml`
//! text (`tether check-config`), each table written by its own file.

use toml_edit::{DocumentMut, Item};

use crate::config::{admin, auth, cluster, events, logging, server, Config};

impl Config {
    /// The settings in force as `server.toml` text, every key with its checked value
    /// (automatic thread counts resolved, paths resolved); a set `admin.token` is masked.
    pub fn effective_toml(&self) -> String {
        let mut document = DocumentMut::new();
        let tables = [
            ("server", server::effective(&self.server)),
            ("auth", auth::effective(&self.auth)),
            ("events", events::effective(&self.events)),
            ("admin", admin::effective(&self.admin)),
            ("log", logging::effective(&self.log)),
            ("cluster", cluster::effective(self.cluster.as_ref())),
        ];
        for (name, table) in tables {
            document.insert(name, Item::Table(table));
        }
        document.to_string()
    }
}

#[cfg(test)]
mod tests {
    use crate::config::load::RawConfig;
    use crate::config::testing::config;

    /// Every `section.key` of a configuration, sorted.
    fn section_keys(table: &toml::Table) -> Vec<String> {
        let mut keys: Vec<String> = table
            .iter()
            .flat_map(|(section, keys)| {
                let keys = keys.as_table().map(|keys| keys.keys().cloned().collect());
                let keys: Vec<String> = keys.unwrap_or_default();
                keys.into_iter().map(move |key| format!("{section}.{key}"))
            })
            .collect();
        keys.sort();
        keys
    }

    /// Every `section.key` there is: those of the defaults, and `auth.users_file`, which
    /// the defaults leave unset so that `auth.database` may be set instead.
    fn every_key() -> Vec<String> {
        let defaults = toml::Table::try_from(RawConfig::default()).unwrap();
        let mut keys = section_keys(&defaults);
        keys.push("auth.users_file".to_string());
        keys.sort();
        keys.dedup();
        keys
    }

    /// The keys of `table` plus whichever of `auth.users_file` and `auth.database` it lacks:
    /// a configuration sets one user source, never both.
    fn with_either_user_source(table: &toml::Table) -> Vec<String> {
        let mut keys = section_keys(table);
        keys.extend(["auth.users_file".to_string(), "auth.database".to_string()]);
        keys.sort();
        keys.dedup();
        keys
    }

    #[test]
    fn shipped_server_toml_documents_every_key() {
        // The keys, not their values: an operator editing the shipped file (a port, say)
        // must not make the tests fail.
        let shipped = include_str!("../../server.toml");
        config(shipped).unwrap();
        let written: toml::Table = shipped.parse().unwrap();
        // `database` is there as a comment: it cannot be set beside `users_file`.
        assert!(
            shipped.contains("\n# database = "),
            "auth.database is not documented"
        );
        assert_eq!(with_either_user_source(&written), every_key());
        let lines: Vec<&str> = shipped.lines().collect();
        for (index, line) in lines.iter().enumerate() {
            if line.contains(" = ") && !line.starts_with('#') {
                let above = index.checked_sub(1).map(|above| lines[above]);
                assert!(
                    above.is_some_and(|above| above.starts_with('#')),
                    "{line:?} has no comment above it"
                );
            }
        }
    }

    #[test]
    fn effective_toml_reads_back_as_the_same_settings() {
        let text = "[server]\nlisten = \"[::1]:9000\"\nidle_timeout = \"1m30s\"\n\
                    shutdown_grace = \"250ms\"\n[auth]\nwatch = false\n\
                    [events]\ntime_zone = \"UTC\"\n[log]\nlevel = \"debug\"\n";
        let original = config(text).unwrap();
        let effective = original.effective_toml();
        let again = config(&effective).unwrap();
        assert_eq!(format!("{again:?}"), format!("{original:?}"), "{effective}");
        assert!(
            effective.contains("idle_timeout = \"1m30s\""),
            "{effective}"
        );
        assert!(effective.contains("users_file = \"/etc/tether/users.toml\""));
    }

    #[test]
    fn effective_toml_shows_every_key() {
        let effective: toml::Table = config("").unwrap().effective_toml().parse().unwrap();
        assert_eq!(with_either_user_source(&effective), every_key());
    }
}
