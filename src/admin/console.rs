//! The web console (SPEC §12): a page for operators, served by the admin listener at
//! `/console/` when `admin.console` is on. Its files (`src/admin/console/`: HTML, one CSS
//! file, ES modules; no build step) are built into the binary and served without the
//! token; the page asks for the token and calls the public admin routes with it.
//!
//! Every answer is locked down: a Content-Security-Policy that allows only this origin's
//! files (no inline script or style, no framing), `nosniff`, no referrer.

use actix_web::http::header::{self, HeaderValue};
use actix_web::{web, HttpRequest, HttpResponse};

/// Where the console lives on the admin listener.
pub const ROOT: &str = "/console/";

/// The Content-Security-Policy of every console answer.
const CSP: &str = "default-src 'self'; frame-ancestors 'none'";

/// One file of the console: its name under [`ROOT`], its content type and its bytes.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static str,
}

/// One [`Asset`]: the file `src/admin/console/<file>` served as `name`.
macro_rules! asset {
    ($name:literal, $file:literal, $content_type:literal) => {
        Asset {
            name: $name,
            content_type: $content_type,
            body: include_str!(concat!("console/", $file)),
        }
    };
}

/// The console's files; the page is `/console/` (and `/console/index.html`).
const ASSETS: &[Asset] = &[
    asset!("", "index.html", "text/html; charset=utf-8"),
    asset!("index.html", "index.html", "text/html; charset=utf-8"),
    asset!("console.css", "console.css", "text/css; charset=utf-8"),
    asset!(
        "console.mjs",
        "console.mjs",
        "text/javascript; charset=utf-8"
    ),
    asset!("api.mjs", "api.mjs", "text/javascript; charset=utf-8"),
    asset!("format.mjs", "format.mjs", "text/javascript; charset=utf-8"),
    asset!("favicon.svg", "favicon.svg", "image/svg+xml"),
];

/// Whether `path` is one the console serves, open without the token: `/console`, the
/// page and its files (exact names only; anything else under `/console/` needs the token
/// like every other route).
pub fn is_console_path(path: &str) -> bool {
    path == "/console" || asset(path).is_some()
}

/// The asset at `path`, if it is one of the console's.
fn asset(path: &str) -> Option<&'static Asset> {
    let name = path.strip_prefix(ROOT)?;
    ASSETS.iter().find(|asset| asset.name == name)
}

/// Mounts the console's routes: `/console` redirects to `/console/`, which serves the
/// page; its files beside it.
pub fn configure(config: &mut web::ServiceConfig) {
    config.service(
        web::resource("/console")
            .route(web::get().to(redirect))
            .route(web::head().to(redirect)),
    );
    config.service(
        web::resource("/console/{file:.*}")
            .route(web::get().to(serve))
            .route(web::head().to(serve)),
    );
}

async fn redirect() -> HttpResponse {
    locked_down(HttpResponse::PermanentRedirect())
        .insert_header((header::LOCATION, ROOT))
        .finish()
}

async fn serve(request: HttpRequest) -> HttpResponse {
    match asset(request.path()) {
        Some(asset) => locked_down(HttpResponse::Ok())
            .insert_header((
                header::CONTENT_TYPE,
                HeaderValue::from_static(asset.content_type),
            ))
            .body(asset.body),
        None => locked_down(HttpResponse::NotFound())
            .content_type("application/json")
            .body(r#"{"error":"no such file of the web console"}"#),
    }
}

/// The headers every console answer carries.
fn locked_down(mut response: actix_web::HttpResponseBuilder) -> actix_web::HttpResponseBuilder {
    response
        .insert_header((header::CONTENT_SECURITY_POLICY, CSP))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        .insert_header((header::X_FRAME_OPTIONS, "DENY"))
        // The files change with the binary: revalidate rather than keep a stale page.
        .insert_header((header::CACHE_CONTROL, "no-cache"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_console_files_are_open() {
        assert!(is_console_path("/console"));
        assert!(is_console_path("/console/"));
        assert!(is_console_path("/console/console.mjs"));
        assert!(is_console_path("/console/index.html"));
        assert!(!is_console_path("/console/nothing.js"));
        assert!(!is_console_path("/console/../v1/users"));
        assert!(!is_console_path("/console//"));
        assert!(!is_console_path("/consolex"));
        assert!(!is_console_path("/v1/users"));
    }
}
