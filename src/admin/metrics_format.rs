//! The two formats `/metrics` speaks, chosen by the scraper's `Accept` header as the
//! Prometheus client libraries choose (client_golang's `expfmt.Negotiate`): OpenMetrics
//! 1.0.0 only to a scraper that asks for `application/openmetrics-text` before anything
//! else it accepts (Prometheus itself does); the classic text format 0.0.4 to everyone
//! else — `text/plain;version=0.0.4`, `*/*`, no `Accept` at all — because that is the
//! format `promtool check metrics`, older Prometheus servers and most other scrapers
//! parse.
//!
//! The metrics are encoded once, as OpenMetrics; the text format is derived from it line
//! by line. The two differ, for what tether registers, only in how they name counters
//! (OpenMetrics names the family `x` and its sample `x_total`; the text format names both
//! `x_total`, or a parser finds a sample without help text or type), in `info` and
//! `unknown` types, and in the `# UNIT` and `# EOF` lines the text format does not have.

/// The media type of the classic text format.
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
/// The media type of OpenMetrics.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A format `/metrics` answers in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Prometheus text format 0.0.4.
    Text,
    /// OpenMetrics 1.0.0.
    OpenMetrics,
}

impl Format {
    /// The `Content-Type` of an answer in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Text => TEXT_CONTENT_TYPE,
            Self::OpenMetrics => OPENMETRICS_CONTENT_TYPE,
        }
    }
}

/// The format to answer a request whose `Accept` header is `accept` (`None`: no header):
/// OpenMetrics when `application/openmetrics-text` has the highest quality of the media
/// ranges this endpoint can serve (the first of equals wins), the text format otherwise.
pub fn negotiate(accept: Option<&str>) -> Format {
    let Some(accept) = accept else {
        return Format::Text;
    };
    let mut best: Option<(f32, Format)> = None;
    for range in accept.split(',') {
        let mut params = range.split(';');
        let media = params.next().unwrap_or("").trim().to_ascii_lowercase();
        let format = match media.as_str() {
            "application/openmetrics-text" => Format::OpenMetrics,
            "text/plain" | "text/*" | "*/*" => Format::Text,
            _ => continue,
        };
        let quality = params
            .filter_map(|param| param.split_once('='))
            .find(|(key, _)| key.trim().eq_ignore_ascii_case("q"))
            .and_then(|(_, value)| value.trim().parse::<f32>().ok())
            .unwrap_or(1.0);
        if quality <= 0.0 || !quality.is_finite() {
            continue;
        }
        if best.is_none_or(|(held, _)| quality > held) {
            best = Some((quality, format));
        }
    }
    best.map_or(Format::Text, |(_, format)| format)
}

/// The text format 0.0.4 of `openmetrics`, an exposition as prometheus-client encodes it.
pub fn to_text_format(openmetrics: &str) -> String {
    let mut text = String::with_capacity(openmetrics.len());
    // A family's `# HELP`, held until its `# TYPE` says whether its name changes.
    let mut help: Option<(&str, &str)> = None;
    // The samples of a counter family named `x` are `x_total`; `x_created` are dropped.
    let mut created_prefix: Option<String> = None;
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            flush_help(&mut text, help.take(), None);
            let (name, doc) = rest.split_once(' ').unwrap_or((rest, ""));
            help = Some((name, doc));
            created_prefix = None;
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let (renamed, kind) = match kind {
                "counter" => (format!("{name}_total"), "counter"),
                "info" => (format!("{name}_info"), "gauge"),
                "gauge" | "histogram" | "summary" => (name.to_owned(), kind),
                _ => (name.to_owned(), "untyped"),
            };
            created_prefix = (kind == "counter").then(|| format!("{name}_created"));
            let held = help.take().filter(|(held, _)| *held == name);
            flush_help(&mut text, held, Some(&renamed));
            text.push_str("# TYPE ");
            text.push_str(&renamed);
            text.push(' ');
            text.push_str(kind);
            text.push('\n');
            continue;
        }
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        if line.starts_with('#') {
            // Any other comment line is a comment in both formats.
            text.push_str(line);
            text.push('\n');
            continue;
        }
        if created_prefix
            .as_deref()
            .is_some_and(|prefix| sample_name(line) == prefix)
        {
            continue;
        }
        text.push_str(line);
        text.push('\n');
    }
    flush_help(&mut text, help, None);
    text
}

/// Writes a held `# HELP` line, under `renamed` when the family's name changed.
fn flush_help(text: &mut String, help: Option<(&str, &str)>, renamed: Option<&str>) {
    let Some((name, doc)) = help else { return };
    text.push_str("# HELP ");
    text.push_str(renamed.unwrap_or(name));
    text.push(' ');
    // The text format escapes only backslashes and line feeds in help text; OpenMetrics
    // also escapes double quotes, which would show here as `\"`.
    text.push_str(&doc.replace("\\\"", "\""));
    text.push('\n');
}

/// The metric name a sample line starts with.
fn sample_name(line: &str) -> &str {
    let end = line.find(['{', ' ']).unwrap_or(line.len());
    &line[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openmetrics_only_when_asked_for_first() {
        assert_eq!(negotiate(None), Format::Text);
        assert_eq!(negotiate(Some("*/*")), Format::Text);
        assert_eq!(negotiate(Some("text/plain;version=0.0.4")), Format::Text);
        assert_eq!(negotiate(Some("application/json")), Format::Text);
        assert_eq!(
            negotiate(Some("application/openmetrics-text; version=1.0.0")),
            Format::OpenMetrics
        );
        // Prometheus 2.x's scrape header.
        assert_eq!(
            negotiate(Some(
                "application/openmetrics-text;version=1.0.0,application/openmetrics-text;\
                 version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
            )),
            Format::OpenMetrics
        );
        assert_eq!(
            negotiate(Some("application/openmetrics-text;q=0.2, text/plain")),
            Format::Text
        );
        assert_eq!(
            negotiate(Some("application/openmetrics-text;q=0, */*")),
            Format::Text
        );
        assert_eq!(
            negotiate(Some("application/openmetrics-text;q=x")),
            Format::OpenMetrics
        );
    }

    #[test]
    fn counters_take_their_sample_name_and_openmetrics_only_lines_go() {
        let openmetrics = "# HELP tether_logins Logins by result.\n\
                           # TYPE tether_logins counter\n\
                           tether_logins_total{result=\"valid\"} 1\n\
                           tether_logins_created{result=\"valid\"} 1.5\n\
                           # HELP tether_open Open \\\"now\\\".\n\
                           # TYPE tether_open gauge\n\
                           # UNIT tether_open connections\n\
                           tether_open 2\n\
                           # HELP tether_build Build.\n\
                           # TYPE tether_build info\n\
                           tether_build_info{version=\"1\"} 1\n\
                           # EOF\n";
        assert_eq!(
            to_text_format(openmetrics),
            "# HELP tether_logins_total Logins by result.\n\
             # TYPE tether_logins_total counter\n\
             tether_logins_total{result=\"valid\"} 1\n\
             # HELP tether_open Open \"now\".\n\
             # TYPE tether_open gauge\n\
             tether_open 2\n\
             # HELP tether_build_info Build.\n\
             # TYPE tether_build_info gauge\n\
             tether_build_info{version=\"1\"} 1\n"
        );
    }
}
