//! `tether client`: a command-line client for people (a prompt with history, replies and
//! pushes shown as they arrive) and for scripts (`--login`, `-c`, `--listen`), built on
//! the `tether-client` crate.

mod console;

use crate::config::{parse_duration, Config};
use clap::Args;
use console::{Console, Interactive, LinesFromStdin};
use jiff::tz::TimeZone;
use std::io::{BufRead, IsTerminal};
use std::time::Duration;
use tether_client::framing::Verb;
use tether_client::{Client, ClientError, Options, Push, Pushes, Reply};

/// Exit code for `login_invalid` in a script.
const EXIT_LOGIN_INVALID: u8 = 1;
/// Exit code for arguments that make no sense together, or a command that is not one.
const EXIT_USAGE: u8 = 2;
/// Exit code for a connection that failed, closed early or broke the protocol.
const EXIT_CONNECTION: u8 = 3;

/// What `tether client` is told on the command line.
#[derive(Debug, Args)]
#[command(after_help = "\
Without --login, -c or --listen, and with a terminal, tether client shows a prompt: type \
`help` there. Commands are words: `login NAME` (asks for the password), `login NAME \
PASSWORD`, `logout`, `prolongate`, `invalidate`, `disconnect`, `help`, `quit`. With \
standard input not a terminal, it reads such commands one per line.

Exit codes: 0 done; 1 login_invalid in a script; 2 bad arguments, or a piped line that \
is not a command (the lines after it are still sent); 3 the connection failed or closed \
before the commands were answered.")]
pub struct ClientArgs {
    /// The server's client address [default: server.listen of the configuration, or
    /// server.tls.listen with --tls]
    #[arg(long, value_name = "HOST:PORT")]
    addr: Option<String>,
    /// Connect over TLS (to the server's TLS listener), trusting the CA of --ca-file
    #[arg(long, requires = "ca_file")]
    tls: bool,
    /// The CA certificate (PEM; a self-signed server certificate itself will do) that the
    /// server's certificate must chain to; its name must match --addr's host
    #[arg(long, value_name = "PATH", requires = "tls")]
    ca_file: Option<std::path::PathBuf>,
    /// Show event times in this zone: "local", "UTC" or an IANA name like Europe/Berlin
    #[arg(long, value_name = "ZONE", default_value = "local", value_parser = parse_zone)]
    zone: TimeZone,
    /// The server's events.time_zone, which event times are written in [default: that of
    /// the configuration]
    #[arg(long, value_name = "ZONE", value_parser = parse_zone)]
    server_zone: Option<TimeZone>,
    /// Log in as NAME before the commands; exit 1 on login_invalid
    #[arg(long, value_name = "NAME")]
    login: Option<String>,
    /// Read the password for --login from the first line of standard input (otherwise it
    /// is asked for on the terminal)
    #[arg(long, requires = "login")]
    password_stdin: bool,
    /// Send COMMAND (repeatable, in order) and print its reply
    #[arg(short = 'c', long = "command", value_name = "COMMAND")]
    commands: Vec<String>,
    /// After the commands, print pushes until the connection closes
    #[arg(long)]
    listen: bool,
    /// Send `prolongate` after this long without a command, so that the server's
    /// inactivity timeout does not close the connection; "0s" turns it off [default:
    /// half of server.idle_timeout of the configuration]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    keep_alive: Option<Duration>,
}

impl ClientArgs {
    /// Whether the command line asks for a script run rather than a session.
    fn is_script(&self) -> bool {
        self.login.is_some() || !self.commands.is_empty() || self.listen
    }
}

/// Reads a zone as the configuration does: "local", "UTC" or an IANA name.
fn parse_zone(name: &str) -> Result<TimeZone, String> {
    match name {
        "local" => {
            TimeZone::try_system().map_err(|err| format!("cannot find the system time zone: {err}"))
        }
        "UTC" => Ok(TimeZone::UTC),
        name => TimeZone::get(name).map_err(|_| {
            format!("unknown time zone {name:?} (expected \"local\", \"UTC\" or an IANA name)")
        }),
    }
}

/// The zones an event time is read in and shown in.
#[derive(Debug, Clone)]
pub struct EventZones {
    /// The server's `events.time_zone`.
    pub server: TimeZone,
    /// Where the person reading lives.
    pub display: TimeZone,
}

impl EventZones {
    /// `push` as one line: the notification's name, or `event <date and time> <text>`
    /// with the time shown in the display zone.
    pub fn render(&self, push: &Push) -> String {
        match push {
            Push::Event { time, text } => {
                let shown = time
                    .to_timestamp(&self.server)
                    .map(|instant| {
                        instant
                            .to_zoned_datetime(self.display.clone())
                            .strftime("%Y-%m-%d %H:%M:%S%.3f %:z")
                            .to_string()
                    })
                    .unwrap_or_else(|_| time.local_millis().to_string());
                format!("event {shown} {}", escape_controls(text))
            }
            other => other.to_string(),
        }
    }
}

/// `text` with control characters and backslashes escaped as in Rust strings (`\n`,
/// `\u{1b}`, `\\`): an event's text comes from whoever published it, and shown raw it
/// could move the cursor, retitle the terminal or forge lines.
fn escape_controls(text: &str) -> String {
    let mut shown = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => shown.push_str("\\\\"),
            c if c.is_control() => shown.extend(c.escape_default()),
            c => shown.push(c),
        }
    }
    shown
}

/// A line typed or given with `-c`, as understood.
#[derive(Debug, PartialEq, Eq)]
enum Action {
    /// A protocol command to send.
    Send(Command),
    /// `login NAME` without a password: ask for it, then send.
    LoginAskingPassword(String),
    /// Show the commands.
    Help,
    /// Leave.
    Quit,
}

/// A protocol command.
#[derive(Debug, PartialEq, Eq)]
enum Command {
    /// `login␟name␟password`.
    Login {
        /// The user name.
        name: String,
        /// The password.
        password: String,
    },
    /// A command without arguments: `logout`, `prolongate`, `invalidate`, `disconnect`.
    Plain(Verb),
}

/// What `help` prints.
const HELP: &str = "\
commands:
  login NAME [PASSWORD]  log in (asks for the password if it is not given)
  logout                 log out, staying connected
  prolongate             reset the server's inactivity timer
  invalidate             log out every other connection of the same user
  disconnect             ask the server to close the connection
  help                   this text
  quit                   leave (also Ctrl-D)
replies and pushes (event, invalidated, timeout, shutdown, io_error) are shown as they arrive";

/// Reads one line of words; `Ok(None)` for a blank line.
fn parse_line(line: &str) -> Result<Option<Action>, String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let Some((&first, args)) = words.split_first() else {
        return Ok(None);
    };
    let simple = |command: Command| {
        if args.is_empty() {
            Ok(Some(Action::Send(command)))
        } else {
            Err(format!("`{first}` takes no arguments"))
        }
    };
    match first {
        "help" | "?" => Ok(Some(Action::Help)),
        "quit" | "exit" => Ok(Some(Action::Quit)),
        word => match Verb::from_word(word.as_bytes()) {
            Some(Verb::Login) => match args {
                [name] => Ok(Some(Action::LoginAskingPassword((*name).to_owned()))),
                [name, password] => Ok(Some(Action::Send(Command::Login {
                    name: (*name).to_owned(),
                    password: (*password).to_owned(),
                }))),
                _ => Err("usage: login NAME [PASSWORD]".to_owned()),
            },
            Some(verb) => simple(Command::Plain(verb)),
            None => Err(format!("unknown command `{word}` (type `help`)")),
        },
    }
}

/// Sends `command` and returns the server's reply.
async fn send(client: &Client, command: &Command) -> Result<Reply, ClientError> {
    match command {
        Command::Login { name, password } => {
            let login = Verb::Login.word().as_bytes();
            client
                .command(&[login, name.as_bytes(), password.as_bytes()])
                .await
        }
        Command::Plain(verb) => client.command(&[verb.word().as_bytes()]).await,
    }
}

/// Runs `tether client`; answers the exit code.
pub fn run(args: ClientArgs, config: &Config) -> u8 {
    let addr = args
        .addr
        .clone()
        .or_else(|| {
            if args.tls {
                config
                    .server
                    .tls
                    .as_ref()
                    .and_then(|tls| tls.listen)
                    .map(|address| address.to_string())
            } else {
                config.server.listen.map(|address| address.to_string())
            }
        })
        .unwrap_or_default();
    let zones = EventZones {
        server: args
            .server_zone
            .clone()
            .unwrap_or_else(|| config.events.time_zone.clone()),
        display: args.zone.clone(),
    };
    let keep_alive = args.keep_alive.unwrap_or(config.server.idle_timeout / 2);
    let mut options = Options::default();
    if !keep_alive.is_zero() {
        options = options.keep_alive(keep_alive);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("tether client: cannot start the runtime: {err}");
            return EXIT_CONNECTION;
        }
    };
    if args.is_script() {
        return run_script(&runtime, &args, &addr, options, &zones);
    }
    let (client, pushes) = match runtime.block_on(open(&args, &addr, options)) {
        Ok(connected) => connected,
        Err(err) => {
            eprintln!("tether client: cannot connect to {addr}: {err}");
            return EXIT_CONNECTION;
        }
    };
    if std::io::stdin().is_terminal() {
        match Interactive::new(&addr) {
            Ok(mut console) => {
                spawn_push_printer(&runtime, pushes, zones, console.printer(), true);
                converse(&runtime, &client, &mut console)
            }
            Err(err) => {
                eprintln!("tether client: cannot set up the terminal: {err}");
                EXIT_CONNECTION
            }
        }
    } else {
        let mut console = LinesFromStdin::new();
        let print = Box::new(crate::stdout::line::<String>);
        spawn_push_printer(&runtime, pushes, zones, print, false);
        converse(&runtime, &client, &mut console)
    }
}

/// Connects to `addr`, over TLS with `--tls`; the error says why it could not.
async fn open(args: &ClientArgs, addr: &str, options: Options) -> Result<(Client, Pushes), String> {
    let Some(ca_file) = args.ca_file.as_ref().filter(|_| args.tls) else {
        return Client::connect_with(addr, options)
            .await
            .map_err(|err| err.to_string());
    };
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::ServerName;
    let certificates = crate::pem::read_certificates(ca_file)?;
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let verifier =
        crate::tls_client::PinnedOrChained::new(certificates, std::sync::Arc::clone(&provider))
            .map_err(|err| format!("{}: {err}", ca_file.display()))?;
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|err| err.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(std::sync::Arc::new(verifier))
        .with_no_client_auth();
    let host = addr
        .rsplit_once(':')
        .map_or(addr, |(host, _)| host)
        .trim_start_matches('[')
        .trim_end_matches(']');
    let name = ServerName::try_from(host.to_string())
        .map_err(|err| format!("{host:?} is not a server name: {err}"))?;
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|err| err.to_string())?;
    tcp.set_nodelay(true).map_err(|err| err.to_string())?;
    let stream = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|err| format!("TLS handshake: {}", crate::tls_client::describe(&err, host)))?;
    Ok(Client::from_stream(stream, options))
}

/// Prints every push through `print` as it arrives, and then, if `announce_end`, that the
/// connection is closed (for a person at the prompt; a pipe's reader sees the output end).
fn spawn_push_printer(
    runtime: &tokio::runtime::Runtime,
    mut pushes: Pushes,
    zones: EventZones,
    mut print: Box<dyn FnMut(String) + Send>,
    announce_end: bool,
) {
    runtime.spawn(async move {
        while let Some(push) = pushes.recv().await {
            match push {
                Ok(push) => print(zones.render(&push)),
                Err(err) => print(format!("error: {err}")),
            }
        }
        if announce_end {
            print("connection closed".to_owned());
        }
    });
}

/// Reads commands from `console` and shows their replies until `quit`, the end of input
/// or the end of the connection.
fn converse(runtime: &tokio::runtime::Runtime, client: &Client, console: &mut dyn Console) -> u8 {
    let mut exit = 0;
    while let Some(line) = console.read_line() {
        let command = match parse_line(&line) {
            Ok(None) => continue,
            Ok(Some(Action::Help)) => {
                console.say(HELP);
                continue;
            }
            Ok(Some(Action::Quit)) => break,
            Ok(Some(Action::Send(command))) => command,
            Ok(Some(Action::LoginAskingPassword(name))) => match console.read_password() {
                Some(password) => Command::Login { name, password },
                None => break,
            },
            Err(message) => {
                if console.complain(&message) {
                    exit = EXIT_USAGE;
                }
                continue;
            }
        };
        match runtime.block_on(send(client, &command)) {
            Ok(Reply::DisconnectAck) => {
                console.say(Reply::DisconnectAck.as_str());
                return exit;
            }
            Ok(reply) => console.say(reply.as_str()),
            Err(ClientError::Closed) => {
                console.say("the connection is closed");
                return exit;
            }
            Err(err) => {
                eprintln!("tether client: {err}");
                return EXIT_CONNECTION;
            }
        }
    }
    exit
}

/// Runs `--login`, the `-c` commands and `--listen`, printing replies one per line.
fn run_script(
    runtime: &tokio::runtime::Runtime,
    args: &ClientArgs,
    addr: &str,
    options: Options,
    zones: &EventZones,
) -> u8 {
    let mut commands = Vec::new();
    if let Some(name) = &args.login {
        let password = match read_script_password(args.password_stdin) {
            Ok(password) => password,
            Err(message) => {
                eprintln!("tether client: {message}");
                return EXIT_USAGE;
            }
        };
        commands.push(Command::Login {
            name: name.clone(),
            password,
        });
    }
    for text in &args.commands {
        match parse_line(text) {
            Ok(Some(Action::Send(command))) => commands.push(command),
            Ok(Some(Action::LoginAskingPassword(_))) => {
                eprintln!("tether client: -c {text:?}: use --login NAME --password-stdin");
                return EXIT_USAGE;
            }
            Ok(_) => {
                eprintln!("tether client: -c {text:?} is not a protocol command");
                return EXIT_USAGE;
            }
            Err(message) => {
                eprintln!("tether client: -c {text:?}: {message}");
                return EXIT_USAGE;
            }
        }
    }
    runtime.block_on(async {
        let (client, mut pushes) = match open(args, addr, options).await {
            Ok(connected) => connected,
            Err(err) => {
                eprintln!("tether client: cannot connect to {addr}: {err}");
                return EXIT_CONNECTION;
            }
        };
        for command in &commands {
            match send(&client, command).await {
                Ok(reply) => {
                    crate::stdout::line(reply);
                    if reply == Reply::LoginInvalid {
                        return EXIT_LOGIN_INVALID;
                    }
                }
                Err(err) => {
                    eprintln!("tether client: {err}");
                    return EXIT_CONNECTION;
                }
            }
        }
        if args.listen {
            while let Some(push) = pushes.recv().await {
                match push {
                    Ok(push) => crate::stdout::line(zones.render(&push)),
                    Err(err) => {
                        eprintln!("tether client: {err}");
                        return EXIT_CONNECTION;
                    }
                }
            }
        }
        0
    })
}

/// The password for `--login`: the first line of standard input, or asked for on the
/// terminal.
fn read_script_password(from_stdin: bool) -> Result<String, String> {
    if from_stdin {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .map_err(|err| format!("cannot read the password from standard input: {err}"))?;
        let password = line.trim_end_matches(['\r', '\n']);
        if password.is_empty() {
            return Err("no password on standard input".to_owned());
        }
        Ok(password.to_owned())
    } else if std::io::stdin().is_terminal() {
        rpassword::prompt_password("password: ")
            .map_err(|err| format!("cannot read the password: {err}"))
    } else {
        Err("--login needs --password-stdin when standard input is not a terminal".to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tether_client::EventTime;

    #[test]
    fn commands_are_words() {
        assert_eq!(parse_line("   "), Ok(None));
        assert_eq!(
            parse_line("login alice"),
            Ok(Some(Action::LoginAskingPassword("alice".into())))
        );
        assert_eq!(
            parse_line(" login  alice secret "),
            Ok(Some(Action::Send(Command::Login {
                name: "alice".into(),
                password: "secret".into()
            })))
        );
        assert_eq!(
            parse_line("prolongate"),
            Ok(Some(Action::Send(Command::Plain(Verb::Prolongate))))
        );
        assert_eq!(parse_line("quit"), Ok(Some(Action::Quit)));
        assert!(parse_line("prolongate now").is_err());
        assert!(parse_line("login").is_err());
        assert!(parse_line("hello").is_err());
    }

    #[test]
    fn an_event_is_shown_at_its_instant_in_the_display_zone() {
        let zones = EventZones {
            server: TimeZone::get("Europe/Moscow").expect("zone known"),
            display: TimeZone::get("Europe/Berlin").expect("zone known"),
        };
        let event = Push::Event {
            time: EventTime::from_local_millis(1_795_743_186_123),
            text: "hello".into(),
        };
        assert_eq!(
            zones.render(&event),
            "event 2026-11-26 23:33:06.123 +01:00 hello"
        );
        assert_eq!(zones.render(&Push::Invalidated), "invalidated");
    }

    #[test]
    fn control_characters_in_event_text_are_shown_escaped() {
        assert_eq!(
            escape_controls("a\x1b[2Jb\nc\\d\u{9b}e ü"),
            "a\\u{1b}[2Jb\\nc\\\\d\\u{9b}e ü"
        );
    }
}
