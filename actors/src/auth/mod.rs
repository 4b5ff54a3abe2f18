//! The auth layer: the rules for names and passwords (`credentials`), the bcrypt pool
//! (`password`), the login throttle (`throttle`) and the user store (`users`). Imports only
//! `util` and `wire`.

pub mod credentials;
pub mod password;
pub mod throttle;
pub mod users;
