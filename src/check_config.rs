//! `tether check-config`: the configuration, the users file and every certificate file
//! checked as start-up would, without starting or connecting to anything.

use crate::config::Config;
use crate::users::cli::shown_path;
use crate::users::failure::Failure;
use crate::users::read::{self, Contents};

/// `tether check-config`: checks the configuration (already loaded), the users file it
/// names and the certificate files it names (without connecting anywhere), and answers the settings in force as `server.toml` text, the admin token masked.
/// Every failure is exit code 2: the server would refuse to start.
pub fn check_config(config: &Config) -> Result<String, Failure> {
    let path = &config.auth.users_file;
    let shown = shown_path(path);
    let contents = read::read_contents(path);
    let users = match contents.users(path) {
        _ if config.auth.database.is_some() => format!(
            "table {} in auth.database (not read: `tether db init` creates it)",
            config.auth.table
        ),
        Ok(users) => format!("{shown}: {} user(s)", users.len()),
        Err(_) if contents == Contents::Missing => {
            format!(
                "{shown} does not exist: nobody can log in until `tether passwd NAME` adds a user"
            )
        }
        Err(error) => return Err(Failure::invalid(error.to_string())),
    };
    // Certificate and CA files are read as start-up reads them: a file that would stop
    // the server is named here too.
    crate::tls::load_certificates(config).map_err(Failure::invalid)?;
    // So is the verifier key: too short or too open stops the server.
    crate::admission::load_key(config).map_err(Failure::invalid)?;
    if let Some(url) = &config.auth.database {
        crate::users::pg_schema::Database::new(url, config.auth.database_ca_file.as_deref())
            .map_err(|why| Failure::invalid(format!("auth.database_ca_file: {why}")))?;
    }
    Ok(format!(
        "# configuration file: {}\n# users file: {users}\n# the configuration is valid; the settings in force:\n\n{}",
        config.source,
        config.effective_toml().trim_end()
    ))
}
