//! The auth layer: the rules for names and passwords (`credentials`), the bcrypt pool
//! (`password`), the login throttle (`throttle`), the user store (`users`) and the
//! verifiers that admit a returning login without bcrypt (`verifiers`). Imports only
//! `util` and `protocol`.

pub mod credentials;
pub mod password;
pub mod throttle;
pub mod user_store;
pub mod verifiers;
