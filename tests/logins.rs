//! Logins racing a change of the user's password (SPEC §5): a login must not outlive an
//! invalidation it raced.

mod common;
mod in_process;

use common::TestClient;
use in_process::{test_settings, InProcessServer};
use std::time::Duration;

#[test]
fn a_login_checked_against_a_hash_replaced_during_the_check_is_refused() {
    let server = InProcessServer::start(test_settings(), &[]);
    // A slow hash, so the check is surely still running when the password changes.
    server.replace_users(&[("alice", "old-pw")], 13);
    let mut client = TestClient::connect(server.addr());
    client.send(&["login", "alice", "old-pw"]);
    std::thread::sleep(Duration::from_millis(30));
    let changed = server.replace_users(&[("alice", "new-pw")], 4);
    assert_eq!(changed, ["alice"]);
    client.expect(&["login_invalid"]);
    server.wait_for_connections("alice", 0);
    client.login("alice", "new-pw");
}
