//! Where `tether client` reads commands from and writes replies to: a terminal with a
//! line editor, or plain lines on standard input.

use rustyline::error::ReadlineError;
use rustyline::{DefaultEditor, ExternalPrinter};
use std::io::BufRead;

/// A source of command lines and a place to show answers.
pub trait Console {
    /// The next command line; `None` at the end of input.
    fn read_line(&mut self) -> Option<String>;
    /// A password, read without showing it where possible; `None` at the end of input.
    fn read_password(&mut self) -> Option<String>;
    /// Shows a reply or a message.
    fn say(&mut self, text: &str);
    /// Shows why a line was not sent; answers whether that makes the run fail (exit code
    /// 2 at its end): so for piped commands, which a script checks by the exit code; not
    /// for a person at the prompt, who sees the message and types again.
    fn complain(&mut self, text: &str) -> bool;
}

/// A person at a terminal: a prompt, line editing, history, and pushes printed above the
/// prompt while it waits.
pub struct Interactive {
    /// The line editor; its history lives as long as the session.
    editor: DefaultEditor,
    /// The prompt, naming the server.
    prompt: String,
}

impl Interactive {
    /// A console for a session with the server at `addr`.
    pub fn new(addr: &str) -> Result<Self, ReadlineError> {
        crate::stdout::line(format_args!(
            "connected to {addr}; type `help` for the commands"
        ));
        Ok(Self {
            editor: DefaultEditor::new()?,
            prompt: format!("tether {addr}> "),
        })
    }

    /// A way to print lines from another task without garbling the line being typed; falls
    /// back to plain printing if the terminal does not allow it.
    pub fn printer(&mut self) -> Box<dyn FnMut(String) + Send> {
        match self.editor.create_external_printer() {
            Ok(mut printer) => Box::new(move |line: String| {
                if printer.print(format!("{line}\n")).is_err() {
                    crate::stdout::line(line);
                }
            }),
            Err(_) => Box::new(|line: String| crate::stdout::line(line)),
        }
    }
}

impl Console for Interactive {
    fn read_line(&mut self) -> Option<String> {
        loop {
            match self.editor.readline(&self.prompt) {
                Ok(line) => {
                    let _ = self.editor.add_history_entry(history_entry(&line));
                    return Some(line);
                }
                // Ctrl-C abandons the line being typed, as in a shell.
                Err(ReadlineError::Interrupted) => continue,
                Err(_) => return None,
            }
        }
    }

    fn read_password(&mut self) -> Option<String> {
        rpassword::prompt_password("password: ").ok()
    }

    fn say(&mut self, text: &str) {
        crate::stdout::line(text);
    }

    fn complain(&mut self, text: &str) -> bool {
        crate::stdout::line(text);
        false
    }
}

/// What history keeps of `line`: a `login` without its password, so that no password can
/// be recalled with the arrow keys.
fn history_entry(line: &str) -> String {
    let words: Vec<&str> = line.split_whitespace().collect();
    match words.as_slice() {
        ["login", name, _, ..] => format!("login {name}"),
        _ => line.trim().to_owned(),
    }
}

/// Commands one per line on standard input (a pipe or a file); a password asked for is
/// the next line.
pub struct LinesFromStdin {
    /// Standard input, buffered.
    lines: std::io::Lines<std::io::StdinLock<'static>>,
}

impl LinesFromStdin {
    /// Reads from standard input.
    pub fn new() -> Self {
        Self {
            lines: std::io::stdin().lock().lines(),
        }
    }
}

impl Console for LinesFromStdin {
    fn read_line(&mut self) -> Option<String> {
        self.lines.next()?.ok()
    }

    fn read_password(&mut self) -> Option<String> {
        self.read_line()
    }

    fn say(&mut self, text: &str) {
        crate::stdout::line(text);
    }

    fn complain(&mut self, text: &str) -> bool {
        // On standard error: standard output holds the replies a script reads.
        eprintln!("tether client: {text}");
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_never_keeps_a_password() {
        assert_eq!(history_entry("login alice s3cret"), "login alice");
        assert_eq!(history_entry(" login alice "), "login alice");
        assert_eq!(history_entry("prolongate"), "prolongate");
    }
}
