//! Process limits the server needs: every connection holds a file descriptor, so at
//! start-up the soft `RLIMIT_NOFILE` is raised to the hard limit (the most a process may
//! take without privileges), and both are logged.

use rlimit::Resource;

/// Descriptors the server needs besides its connections: listeners, event loops, the
/// users file and its watcher, logging.
const RESERVED_DESCRIPTORS: u64 = 64;

/// Raises the soft open-file limit to the hard limit and logs both; warns when
/// `max_connections` cannot be reached under the limit. A failure is logged, never fatal:
/// the server then runs under the limit it was given, and `accept` backs off when it is
/// reached.
pub fn raise_open_files_limit(max_connections: usize) {
    let (soft_before, hard) = match rlimit::getrlimit(Resource::NOFILE) {
        Ok(limits) => limits,
        Err(err) => {
            log::warn!("cannot read the open-file limit (RLIMIT_NOFILE): {err}");
            return;
        }
    };
    let mut soft = soft_before;
    if soft_before < hard {
        match rlimit::setrlimit(Resource::NOFILE, hard, hard) {
            Ok(()) => soft = hard,
            Err(err) => log::warn!(
                "cannot raise the open-file limit from {soft_before} to the hard limit \
                 {hard}: {err}"
            ),
        }
    }
    log::info!(
        "open-file limit (RLIMIT_NOFILE): soft {}, hard {} (soft was {})",
        show(soft),
        show(hard),
        show(soft_before)
    );
    let needed = (max_connections as u64).saturating_add(RESERVED_DESCRIPTORS);
    if soft < needed {
        log::warn!(
            "the open-file limit {soft} is below server.max_connections ({max_connections}) \
             plus {RESERVED_DESCRIPTORS} reserved: accepting stops (and backs off) near \
             {} connections; raise the hard limit (ulimit -Hn, LimitNOFILE=) to allow more",
            soft.saturating_sub(RESERVED_DESCRIPTORS)
        );
    }
}

/// A limit as people write it.
fn show(limit: u64) -> String {
    if limit == rlimit::INFINITY {
        "unlimited".to_owned()
    } else {
        limit.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_limit_ends_at_the_hard_limit() {
        let (soft_before, hard) = rlimit::getrlimit(Resource::NOFILE).expect("readable");
        raise_open_files_limit(10);
        let (soft, hard_after) = rlimit::getrlimit(Resource::NOFILE).expect("readable");
        assert_eq!((soft, hard_after), (hard, hard));
        assert!(soft >= soft_before);
    }
}
