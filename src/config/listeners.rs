//! The one check across tables: no two listeners (client TCP, TLS, WebSocket, admin API) on
//! one address, where one of them could not bind.

use std::net::SocketAddr;

use crate::config::check::Check;
use crate::config::error::ConfigError;
use crate::config::Config;

impl Check<'_> {
    /// Refuses an admin API on the client protocol's address: one of them could not bind.
    pub(super) fn distinct_listeners(&self, config: &Config) -> Result<(), ConfigError> {
        let tls = config.server.tls.as_ref().and_then(|tls| tls.listen);
        let ws = config.server.websocket.as_ref().map(|ws| ws.listen);
        let same = |a: SocketAddr, b: SocketAddr| {
            a.port() != 0 && a.port() == b.port() && a.ip() == b.ip()
        };
        if let (Some(client), Some(tls)) = (config.server.listen, tls) {
            if same(client, tls) {
                return Err(self.error(
                    "server.tls.listen",
                    format!("{tls} is the address of server.listen; give TLS another port"),
                ));
            }
        }
        if let Some(ws) = ws {
            for (key, other) in [
                ("server.listen", config.server.listen),
                ("server.tls.listen", tls),
            ] {
                if other.is_some_and(|other| same(ws, other)) {
                    return Err(self.error(
                        "server.websocket.listen",
                        format!("{ws} is the address of {key}; give WebSocket another port"),
                    ));
                }
            }
        }
        let Some(admin) = config.admin.listen else {
            return Ok(());
        };
        for client in config.server.listen.into_iter().chain(tls).chain(ws) {
            self.distinct(client, admin)?;
        }
        Ok(())
    }

    /// Refuses `admin` on the client address `client`.
    fn distinct(&self, client: SocketAddr, admin: SocketAddr) -> Result<(), ConfigError> {
        let overlap = client.ip() == admin.ip()
            || client.ip().is_unspecified()
            || admin.ip().is_unspecified();
        if client.port() != 0 && client.port() == admin.port() && overlap {
            return Err(self.error(
                "admin.listen",
                format!("{admin} is the address of server.listen ({client}); give the admin API another port"),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::config::testing::{assert_refused, config};

    #[test]
    fn admin_api_on_the_client_address_is_refused() {
        assert_refused(
            "[server]\nlisten = \"127.0.0.1:7700\"\n[admin]\nlisten = \"127.0.0.1:7700\"",
            "admin.listen",
            "the address of server.listen",
        );
        assert_refused(
            "[server]\nlisten = \"0.0.0.0:7700\"\n[admin]\nlisten = \"127.0.0.1:7700\"",
            "admin.listen",
            "another port",
        );
        assert!(
            config("[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"").is_ok()
        );
        assert!(config(
            "[server]\nlisten = \"127.0.0.1:7700\"\n[admin]\nlisten = \"127.0.0.2:7700\""
        )
        .is_ok());
    }
}
