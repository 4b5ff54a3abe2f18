//! `tether check-config`: the configuration, the user store and every certificate file
//! checked as start-up would, without starting or connecting to anything.

use crate::config::Config;
use crate::users::failure::Failure;

/// `tether check-config`: checks the configuration (already loaded), the user store it
/// names (see [`crate::users::Store::check`]) and the certificate files it names (without
/// connecting anywhere), and answers the settings in force as `server.toml` text, the
/// admin token masked.
/// Every failure is exit code 2: the server would refuse to start.
pub fn check_config(config: &Config) -> Result<String, Failure> {
    // The store first (its CA file, say), then what it holds as start-up would find it.
    let users = crate::users::open(config)?.check()?;
    // Certificate and CA files are read as start-up reads them: a file that would stop
    // the server is named here too.
    crate::tls::load_certificates(config).map_err(Failure::invalid)?;
    // So is the verifier key: too short or too open stops the server.
    crate::admission::load_key(config).map_err(Failure::invalid)?;
    Ok(format!(
        "# configuration file: {}\n# users file: {users}\n# the configuration is valid; the settings in force:\n\n{}",
        config.source,
        config.effective_toml().trim_end()
    ))
}
