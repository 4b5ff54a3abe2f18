//! The routes of the admin API (docs/admin-api.md) and what each answers.

use super::events::{self, publish_error};
use super::{metrics_format, AdminState, ApiError};
use crate::users::edit::PasswordChange;
use crate::users::{Page, StoreError};
use actix_web::{dev::Payload, web, FromRequest, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::json;
use std::net::{IpAddr, Ipv4Addr};
use tether_actors::auth::credentials::{check_name, check_password};
use tether_actors::hub::bus::InvalidationCause;

/// Mounts every route, and JSON answers for unknown routes and methods.
pub fn configure(config: &mut web::ServiceConfig) {
    config
        .service(readable("/healthz", healthz))
        .service(readable("/metrics", metrics))
        .service(resource("/v1/events", web::post().to(events::publish)))
        .service(readable("/v1/node", super::node::node))
        .service(readable("/v1/users", list_users))
        .service(resource(
            "/v1/users/{name}/password",
            web::put().to(set_password),
        ))
        .service(resource("/v1/users/{name}", web::delete().to(delete_user)))
        .service(resource(
            "/v1/users/{name}/invalidate",
            web::post().to(invalidate),
        ))
        .service(readable("/v1/users/{name}/connections", connections))
        .default_service(web::to(no_such_route));
}

/// One path with its one method; other methods get `405`.
fn resource(path: &str, route: actix_web::Route) -> actix_web::Resource {
    web::resource(path)
        .route(route)
        .default_service(web::to(method_not_allowed))
}

/// A path read with `GET`, and `HEAD` (the same answer without its body, as HTTP wants:
/// monitors probe with it); other methods get `405`.
fn readable<F, Args>(path: &str, handler: F) -> actix_web::Resource
where
    F: actix_web::Handler<Args> + Clone,
    Args: FromRequest + 'static,
    F::Output: actix_web::Responder + 'static,
{
    web::resource(path)
        .route(web::get().to(handler.clone()))
        .route(web::head().to(handler))
        .default_service(web::to(method_not_allowed))
}

type State = web::Data<AdminState>;

/// `{"status": "ok"}`; with a user store that can be unreachable (PostgreSQL), also
/// `"users"`: `"ok"`, or `"unreachable"` while it does not answer (the server still
/// serves; logins then follow SPEC §9); in a cluster, also `"cluster"`: `"connected"` or
/// `"unreachable"` (SPEC §8), and while connected `"cluster_redis"`: the Redis master's
/// `host:port` (the masters', comma-separated, of a Redis Cluster).
async fn healthz(state: State) -> HttpResponse {
    let mut body = json!({ "status": "ok" });
    if let Some(reachable) = state.users.reachable() {
        body["users"] = json!(if reachable { "ok" } else { "unreachable" });
    }
    if let Some(connected) = state.tether.cluster_connected() {
        let cluster = if connected {
            "connected"
        } else {
            "unreachable"
        };
        body["cluster"] = json!(cluster);
        if let Some(upstream) = state.tether.cluster_upstream() {
            body["cluster_redis"] = json!(upstream);
        }
    }
    HttpResponse::Ok().json(body)
}

/// In a cluster whose users are kept per node (users files), each node's own store
/// governs it: the user routes answer `409` (SPEC §8).
fn refuse_per_node_in_cluster(state: &AdminState) -> Result<(), ApiError> {
    match state.users.per_node() {
        Some(why) if state.tether.cluster_connected().is_some() => {
            Err(ApiError::conflict(why.to_owned()))
        }
        _ => Ok(()),
    }
}

/// The metrics in the format the scraper's `Accept` asks for (see
/// [`metrics_format::negotiate`]).
async fn metrics(state: State, request: HttpRequest) -> Result<HttpResponse, ApiError> {
    let accept = request
        .headers()
        .get(actix_web::http::header::ACCEPT)
        .and_then(|value| value.to_str().ok());
    let format = metrics_format::negotiate(accept);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &state.metrics)
        .map_err(|err| ApiError::internal(format!("cannot encode the metrics: {err}")))?;
    if format == metrics_format::Format::Text {
        text = metrics_format::to_text_format(&text);
    }
    Ok(HttpResponse::Ok()
        .content_type(format.content_type())
        .insert_header((actix_web::http::header::VARY, "Accept"))
        .body(text))
}

/// The body of `PUT /v1/users/{name}/password`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PasswordBody {
    password: String,
}

/// Hashes the new password on the logins' bcrypt threads (bounded, at low priority),
/// queued as the requester's address, then stores it.
async fn set_password(
    state: State,
    request: HttpRequest,
    UserName(name): UserName,
    body: web::Json<PasswordBody>,
) -> Result<HttpResponse, ApiError> {
    refuse_per_node_in_cluster(&state)?;
    let password = body.into_inner().password;
    check_password(password.as_bytes()).map_err(|err| ApiError::bad_request(err.to_string()))?;
    let requester = request
        .peer_addr()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |peer| peer.ip());
    let hash = state
        .tether
        .passwords()
        .hash(requester, password.as_bytes(), state.bcrypt_cost)
        .await
        .map_err(|err| ApiError::internal(err.to_string()))?;
    // In force, and the user's connections told, when the answer comes.
    let change = state
        .users
        .set_hash(&name, &hash)
        .await
        .map_err(|err| store_error(&format!("cannot set the password of {name:?}"), err))?;
    Ok(match change {
        PasswordChange::Created => {
            log::info!("admin API: user {name:?} created");
            HttpResponse::Created().finish()
        }
        PasswordChange::Changed => {
            log::info!("admin API: password of {name:?} changed");
            HttpResponse::NoContent().finish()
        }
    })
}

async fn delete_user(state: State, UserName(name): UserName) -> Result<HttpResponse, ApiError> {
    refuse_per_node_in_cluster(&state)?;
    let removed = state
        .users
        .remove(&name)
        .await
        .map_err(|err| store_error(&format!("cannot remove {name:?}"), err))?;
    if !removed {
        return Err(ApiError::not_found(format!("no user named {name:?}")));
    }
    log::info!("admin API: user {name:?} removed");
    Ok(HttpResponse::NoContent().finish())
}

async fn invalidate(state: State, UserName(name): UserName) -> Result<HttpResponse, ApiError> {
    let invalidated = state
        .tether
        .invalidate(name, InvalidationCause::Operator)
        .await
        .map_err(publish_error)?;
    Ok(HttpResponse::Ok().json(json!({ "invalidated": invalidated })))
}

async fn connections(state: State, UserName(name): UserName) -> Result<HttpResponse, ApiError> {
    let count = state
        .tether
        .cluster_connections(&name)
        .await
        .map_err(publish_error)?;
    Ok(HttpResponse::Ok().json(json!({ "user": name, "connections": count })))
}

async fn no_such_route() -> Result<HttpResponse, ApiError> {
    Err(ApiError::not_found(
        "no such route: see docs/admin-api.md (GET /healthz, GET /metrics, POST /v1/events, \
         GET /v1/node, GET /v1/users, PUT /v1/users/{name}/password, DELETE /v1/users/{name}, \
         POST /v1/users/{name}/invalidate, GET /v1/users/{name}/connections)",
    ))
}

async fn method_not_allowed() -> Result<HttpResponse, ApiError> {
    Err(ApiError::method_not_allowed())
}

/// Why the user store could not be written or read: `409` when it holds something
/// invalid that must be fixed first, `500` when it could not be read or written (both
/// logged), `503` when it did not answer.
fn store_error(what: &str, err: StoreError) -> ApiError {
    match err {
        StoreError::Invalid(answer) => {
            log::error!("admin API: {what}: {answer}");
            ApiError::conflict(answer)
        }
        StoreError::Failed(answer) => {
            log::error!("admin API: {what}: {answer}");
            ApiError::internal(answer)
        }
        StoreError::Unavailable(why) => ApiError::unavailable(format!("{what}: {why}")),
    }
}

/// The query of `GET /v1/users`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    /// List the names that sort after this one.
    after: Option<String>,
    /// At most this many names.
    limit: Option<usize>,
    /// Only names that contain this text, ASCII letters compared without case.
    search: Option<String>,
    /// Only users with (`true`) or without (`false`) a connection now.
    online: Option<bool>,
}

/// Names `GET /v1/users` lists when `limit` is not given.
const DEFAULT_LIST_LIMIT: usize = 100;
/// Largest `limit` of `GET /v1/users`.
const MAX_LIST_LIMIT: usize = 1000;
/// With `online`, how many names one request examines at most (counting each one's
/// connections) before it answers what it found with a `next` to go on from.
const ONLINE_SCAN_BUDGET: usize = 10_000;

/// `GET /v1/users?after=NAME&limit=N&search=TEXT&online=BOOL`: the users in force, sorted
/// by name (bytewise), with how many connections are bound to each; `next` is the `after`
/// of the next page, `null` on the last. `search` keeps the names containing it (ASCII
/// case folded); `online` keeps the users with (or without) connections, examining at most
/// [`ONLINE_SCAN_BUDGET`] names, so a page may be short with `next` set.
async fn list_users(state: State, query: web::Query<ListQuery>) -> Result<HttpResponse, ApiError> {
    let ListQuery {
        after,
        limit,
        search,
        online,
    } = query.into_inner();
    let limit = limit.unwrap_or(DEFAULT_LIST_LIMIT);
    if !(1..=MAX_LIST_LIMIT).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit must be from 1 to {MAX_LIST_LIMIT}, found {limit}"
        )));
    }
    let search = match search.filter(|search| !search.is_empty()) {
        Some(search) => {
            check_name(&search).map_err(|err| ApiError::bad_request(format!("search: {err}")))?;
            Some(search.to_ascii_lowercase())
        }
        None => None,
    };
    let mut listed = Vec::new();
    let mut cursor = after;
    let mut examined = 0;
    let next = loop {
        // Without `online` one batch is the page; with it, batches until the page is full.
        let batch = match online {
            None => limit,
            Some(_) => MAX_LIST_LIMIT.min(ONLINE_SCAN_BUDGET - examined),
        };
        let mut names = state
            .users
            .names(Page {
                after: cursor.take(),
                limit: batch + 1,
                search: search.clone(),
            })
            .await
            .map_err(|err| store_error("cannot list the users", err))?;
        let mut more = names.len() > batch;
        names.truncate(batch);
        let batch_names: Vec<&str> = names.iter().map(String::as_str).collect();
        let counts = state
            .tether
            .cluster_connections_many(&batch_names)
            .await
            .map_err(publish_error)?;
        let mut last = None;
        for (index, (name, connections)) in names.iter().zip(counts).enumerate() {
            examined += 1;
            if online.is_none_or(|online| online == (connections > 0)) {
                listed.push(json!({ "name": name, "connections": connections }));
            }
            last = Some(name.clone());
            if listed.len() == limit {
                more |= index + 1 < names.len();
                break;
            }
        }
        match last {
            Some(last) if more => {
                if online.is_none() || listed.len() == limit || examined >= ONLINE_SCAN_BUDGET {
                    break Some(last);
                }
                cursor = Some(last);
            }
            _ => break None,
        }
    };
    Ok(HttpResponse::Ok().json(json!({ "users": listed, "next": next })))
}

/// The `{name}` of a `/v1/users/{name}…` route: percent-decoded, valid UTF-8 and valid by
/// the rules of SPEC §5, or the request is answered `400`.
///
/// It is decoded here from the raw request path rather than taken from actix's router,
/// which replaces bytes that are not UTF-8 with U+FFFD: `%FF%FE` would become a user named
/// "\u{FFFD}\u{FFFD}".
struct UserName(String);

/// Where the name is among the `/`-separated segments of the raw path: `""`, `v1`,
/// `users`, the name. Every route that takes a name starts `/v1/users/{name}`, and an
/// encoded `/` (`%2F`) does not separate segments, in the router or here.
const NAME_SEGMENT: usize = 3;

impl FromRequest for UserName {
    type Error = ApiError;
    type Future = std::future::Ready<Result<Self, ApiError>>;

    fn from_request(request: &HttpRequest, _: &mut Payload) -> Self::Future {
        std::future::ready(user_name(request.uri().path()).map(Self))
    }
}

/// The user name in `path`, a raw (still percent-encoded) `/v1/users/{name}…` path.
fn user_name(path: &str) -> Result<String, ApiError> {
    let encoded = path
        .split('/')
        .nth(NAME_SEGMENT)
        .ok_or_else(|| ApiError::bad_request("the path holds no user name"))?;
    let name = percent_encoding::percent_decode_str(encoded)
        .decode_utf8()
        .map_err(|_| {
            ApiError::bad_request(
                "the user name in the path is not valid UTF-8 once percent-decoded \
                 (names are UTF-8 text; percent-encode its UTF-8 bytes)",
            )
        })?
        .into_owned();
    check_name(&name).map_err(|err| ApiError::bad_request(err.to_string()))?;
    Ok(name)
}
