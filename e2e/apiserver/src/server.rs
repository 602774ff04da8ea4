//! HTTP: authentication, routing of `/api` and `/apis` paths, content negotiation (JSON, Table,
//! PartialObjectMetadata, aggregated discovery), request decoding and Status errors.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited, combinators::BoxBody};
use hyper::body::Incoming;
use hyper::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderValue, USER_AGENT};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};

use crate::discovery;
use crate::error::ApiError;
use crate::registry::ResourceType;
use crate::selector::{FieldSelector, LabelSelector};
use crate::store::{
    DeleteOptions, FieldValidation, Filter, PatchBody, Store, Stored, Subresource, WatchStart,
    WriteOptions,
};
use crate::table::{self, IncludeObject};
use crate::watch;

pub type Body = BoxBody<Bytes, Infallible>;

/// Largest request body accepted (Helm release Secrets are the biggest objects we see).
const MAX_BODY: usize = 64 << 20;

/// Shared by every request.
pub struct ServerState {
    pub store: Arc<Store>,
    pub token: String,
    /// `host:port` clients reach us at, for `/api`'s serverAddressByClientCIDRs.
    pub server_address: String,
    pub bookmark_interval: Duration,
    pub shutdown: tokio::sync::watch::Receiver<bool>,
}

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

fn respond(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_str(content_type).unwrap_or(HeaderValue::from_static("application/json")),
    );
    r
}

fn json_response(status: StatusCode, v: &Value) -> Response<Body> {
    respond(
        status,
        "application/json",
        serde_json::to_vec(v).unwrap_or_default(),
    )
}

pub fn error_response(e: &ApiError) -> Response<Body> {
    json_response(
        StatusCode::from_u16(e.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        &e.to_status(),
    )
}

/// What the client asked to receive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    Object,
    /// `Table` at `meta.k8s.io/v1` (or v1beta1).
    Table(&'static str),
    PartialMetadata,
}

struct Accept {
    output: Output,
    aggregated: bool,
    json_ok: bool,
}

fn parse_accept(header: Option<&str>) -> Accept {
    let Some(h) = header.filter(|h| !h.trim().is_empty()) else {
        return Accept {
            output: Output::Object,
            aggregated: false,
            json_ok: true,
        };
    };
    let mut acc = Accept {
        output: Output::Object,
        aggregated: false,
        json_ok: false,
    };
    let mut chosen = false;
    for entry in h.split(',') {
        let mut parts = entry.split(';').map(str::trim);
        let media = parts.next().unwrap_or("").to_ascii_lowercase();
        let params: HashMap<String, String> = parts
            .filter_map(|p| p.split_once('='))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        let jsonish = matches!(
            media.as_str(),
            "application/json"
                | "*/*"
                | "application/*"
                | "application/yaml"
                | "application/json-seq"
        );
        if !jsonish {
            continue;
        }
        acc.json_ok = true;
        let as_ = params.get("as").map(String::as_str);
        let g = params.get("g").map(String::as_str);
        let v = params.get("v").map(String::as_str);
        match (as_, g, v) {
            (Some("APIGroupDiscoveryList"), Some("apidiscovery.k8s.io"), Some("v2")) => {
                acc.aggregated = true
            }
            (Some("Table"), Some("meta.k8s.io"), Some(v @ ("v1" | "v1beta1"))) if !chosen => {
                acc.output = Output::Table(if v == "v1" { "v1" } else { "v1beta1" });
                chosen = true;
            }
            (
                Some("PartialObjectMetadata" | "PartialObjectMetadataList"),
                Some("meta.k8s.io"),
                _,
            ) if !chosen => {
                acc.output = Output::PartialMetadata;
                chosen = true;
            }
            (None, _, _) => chosen = true,
            _ => {}
        }
    }
    acc
}

pub struct Query(HashMap<String, String>);

impl Query {
    fn parse(q: Option<&str>) -> Query {
        Query(
            form_urlencoded::parse(q.unwrap_or("").as_bytes())
                .into_owned()
                .collect(),
        )
    }

    pub fn get(&self, k: &str) -> Option<&str> {
        self.0.get(k).map(String::as_str)
    }

    fn flag(&self, k: &str) -> bool {
        matches!(self.get(k), Some("true" | "1"))
    }
}

/// The entry point for every request.
pub async fn handle(
    state: Arc<ServerState>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let version = req.version();
    let started = std::time::Instant::now();
    let resp = match route(&state, req).await {
        Ok(r) => r,
        Err(e) => error_response(&e),
    };
    tracing::debug!(%method, %path, ?version, status = resp.status().as_u16(), elapsed_ms = started.elapsed().as_millis() as u64, "request");
    Ok(resp)
}

fn authenticated(state: &ServerState, req: &Request<Incoming>) -> bool {
    let Some(h) = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
    else {
        return false;
    };
    let Some(t) = h
        .strip_prefix("Bearer ")
        .or_else(|| h.strip_prefix("bearer "))
    else {
        return false;
    };
    // Constant-time enough for a test server; compare lengths and bytes without early exit.
    let (a, b) = (t.trim().as_bytes(), state.token.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn read_body(req: Request<Incoming>) -> Result<Bytes, ApiError> {
    let limited = Limited::new(req.into_body(), MAX_BODY);
    match limited.collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) => Err(if e.is::<http_body_util::LengthLimitError>() {
            ApiError::too_large("the request body is too large")
        } else {
            ApiError::bad_request(format!("reading the request body: {e}"))
        }),
    }
}

fn decode_body(bytes: &[u8], content_type: &str) -> Result<Value, ApiError> {
    let ct = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if ct == "application/vnd.kubernetes.protobuf" {
        return crate::proto::decode(bytes);
    }
    if ct.contains("protobuf") || ct.contains("cbor") {
        return Err(ApiError::unsupported_media_type(content_type));
    }
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request("the request body is empty"));
    }
    match serde_json::from_slice::<Value>(bytes) {
        Ok(v) => Ok(v),
        Err(json_err) => {
            if ct.contains("yaml") {
                serde_yaml::from_slice::<Value>(bytes)
                    .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))
            } else {
                Err(ApiError::bad_request(format!(
                    "couldn't get version/kind; json parse error: {json_err}"
                )))
            }
        }
    }
}

async fn route(
    state: &Arc<ServerState>,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let path = req.uri().path().to_string();
    let segs: Vec<String> = path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    if matches!(segs.as_slice(), ["healthz"] | ["livez"] | ["readyz"]) {
        return Ok(respond(StatusCode::OK, "text/plain; charset=utf-8", "ok"));
    }
    if !authenticated(state, &req) {
        return Err(ApiError::unauthorized());
    }
    let accept = parse_accept(req.headers().get(ACCEPT).and_then(|h| h.to_str().ok()));
    let query = Query::parse(req.uri().query());
    let reg = state.store.registry();
    let is_get = req.method() == Method::GET;
    match segs.as_slice() {
        [] if is_get => Ok(json_response(
            StatusCode::OK,
            &json!({"paths": ["/api", "/api/v1", "/apis", "/healthz", "/livez", "/openapi/v2", "/openapi/v3", "/readyz", "/version"]}),
        )),
        ["version"] if is_get => Ok(json_response(StatusCode::OK, &discovery::version())),
        ["api"] if is_get => Ok(if accept.aggregated {
            respond(
                StatusCode::OK,
                discovery::AGGREGATED_CONTENT_TYPE,
                serde_json::to_vec(&discovery::aggregated(&reg, true)).unwrap_or_default(),
            )
        } else {
            json_response(
                StatusCode::OK,
                &discovery::api_versions(&state.server_address),
            )
        }),
        ["apis"] if is_get => Ok(if accept.aggregated {
            respond(
                StatusCode::OK,
                discovery::AGGREGATED_CONTENT_TYPE,
                serde_json::to_vec(&discovery::aggregated(&reg, false)).unwrap_or_default(),
            )
        } else {
            json_response(StatusCode::OK, &discovery::api_group_list(&reg))
        }),
        ["api", "v1"] if is_get => Ok(json_response(
            StatusCode::OK,
            &discovery::api_resource_list(&reg, "", "v1"),
        )),
        ["apis", g] if is_get => discovery::api_group(&reg, g)
            .map(|d| json_response(StatusCode::OK, &d))
            .ok_or_else(|| ApiError::path_not_found(&path)),
        ["apis", g, v] if is_get => {
            if reg.serves_group_version(g, v) {
                Ok(json_response(
                    StatusCode::OK,
                    &discovery::api_resource_list(&reg, g, v),
                ))
            } else {
                Err(ApiError::path_not_found(&path))
            }
        }
        ["openapi", "v2"] if is_get => {
            if !accept.json_ok {
                return Err(ApiError::not_acceptable(
                    "only application/json is served for /openapi/v2",
                ));
            }
            Ok(json_response(StatusCode::OK, &discovery::openapi_v2()))
        }
        ["openapi", "v3"] if is_get => Ok(json_response(
            StatusCode::OK,
            &discovery::openapi_v3_index(&reg),
        )),
        ["openapi", "v3", rest @ ..] if is_get => {
            let doc = match rest {
                ["api", v] => discovery::openapi_v3_group_version(&reg, "", v),
                ["apis", g, v] => discovery::openapi_v3_group_version(&reg, g, v),
                _ => None,
            };
            doc.map(|d| json_response(StatusCode::OK, &d))
                .ok_or_else(|| ApiError::path_not_found(&path))
        }
        ["api", "v1", rest @ ..] => {
            let rest: Vec<String> = rest.iter().map(|s| s.to_string()).collect();
            resource(state, req, "", "v1", &rest, &query, &accept).await
        }
        ["apis", g, v, rest @ ..] if !rest.is_empty() => {
            let (g, v) = (g.to_string(), v.to_string());
            let rest: Vec<String> = rest.iter().map(|s| s.to_string()).collect();
            resource(state, req, &g, &v, &rest, &query, &accept).await
        }
        _ if !is_get && segs.first().is_some_and(|s| *s == "api" || *s == "apis") => {
            Err(ApiError::method_not_allowed(format!(
                "the server does not allow this method on the requested resource ({path})"
            )))
        }
        _ => Err(ApiError::path_not_found(&path)),
    }
}

/// A parsed resource path.
struct Target {
    rt: Arc<ResourceType>,
    version: String,
    namespace: Option<String>,
    name: Option<String>,
    sub: Subresource,
}

fn parse_target(
    state: &ServerState,
    group: &str,
    version: &str,
    rest: &[String],
) -> Result<(Target, bool), ApiError> {
    let reg = state.store.registry();
    let mut rest: Vec<&str> = rest.iter().map(String::as_str).collect();
    let mut watch = false;
    if rest.first() == Some(&"watch") {
        watch = true;
        rest.remove(0);
    }
    let shown = format!("/{}", rest.join("/"));
    let not_found = || ApiError::path_not_found(&shown);
    let (namespace, rest) = match rest.as_slice() {
        ["namespaces", ns, res, tail @ ..]
            if reg
                .lookup(group, version, res)
                .is_some_and(|r| r.namespaced) =>
        {
            (
                Some(ns.to_string()),
                std::iter::once(*res)
                    .chain(tail.iter().copied())
                    .collect::<Vec<&str>>(),
            )
        }
        _ => (None, rest),
    };
    let (res, name, sub) = match rest.as_slice() {
        [res] => (*res, None, None),
        [res, name] => (*res, Some(name.to_string()), None),
        [res, name, sub] => (*res, Some(name.to_string()), Some(*sub)),
        _ => return Err(not_found()),
    };
    let rt = reg.lookup(group, version, res).ok_or_else(not_found)?;
    if !rt.namespaced && namespace.is_some() {
        return Err(not_found());
    }
    if rt.namespaced && namespace.is_none() && name.is_some() {
        return Err(not_found());
    }
    let sub = match sub {
        None => Subresource::Main,
        Some("status") if rt.has_status(version) => Subresource::Status,
        // `namespaces/x/finalize` edits spec.finalizers, which the main endpoint also does.
        Some("finalize") if rt.is("", "Namespace") => Subresource::Main,
        Some(_) => return Err(not_found()),
    };
    Ok((
        Target {
            rt,
            version: version.to_string(),
            namespace,
            name,
            sub,
        },
        watch,
    ))
}

fn write_options(req: &Request<Incoming>, query: &Query) -> Result<WriteOptions, ApiError> {
    let dry_run = match query.get("dryRun") {
        None | Some("") => false,
        Some("All") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "dryRun: Unsupported value: \"{other}\": supported values: \"All\""
            )));
        }
    };
    let field_validation = match query.get("fieldValidation") {
        None | Some("") => FieldValidation::Warn,
        Some("Ignore") => FieldValidation::Ignore,
        Some("Warn") => FieldValidation::Warn,
        Some("Strict") => FieldValidation::Strict,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "fieldValidation: Unsupported value: \"{other}\": supported values: \"Ignore\", \"Strict\", \"Warn\""
            )));
        }
    };
    let field_manager = match query.get("fieldManager") {
        Some(m) if !m.is_empty() => {
            if m.len() > 128 {
                return Err(ApiError::bad_request(
                    "fieldManager: Too long: may not be more than 128 bytes",
                ));
            }
            m.to_string()
        }
        _ => {
            // The real server names the manager after the user agent's program name.
            let ua = req
                .headers()
                .get(USER_AGENT)
                .and_then(|h| h.to_str().ok())
                .unwrap_or("");
            let prog = ua.split('/').next().unwrap_or("").trim();
            if prog.is_empty() {
                "unknown".to_string()
            } else {
                prog.chars().take(128).collect()
            }
        }
    };
    let force = query.flag("force");
    Ok(WriteOptions {
        dry_run,
        field_manager,
        field_validation,
        force,
    })
}

fn filter_from(query: &Query, namespace: Option<&str>) -> Result<Filter, ApiError> {
    Ok(Filter {
        namespace: namespace.map(str::to_string),
        labels: LabelSelector::parse(query.get("labelSelector").unwrap_or(""))?,
        fields: FieldSelector::parse(query.get("fieldSelector").unwrap_or(""))?,
    })
}

fn partial(v: &Value) -> Value {
    json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": v.get("metadata").cloned().unwrap_or(json!({}))})
}

fn table_content_type(v: &str) -> String {
    format!("application/json;as=Table;v={v};g=meta.k8s.io")
}

/// Renders one object the way the client asked.
pub fn render_object(
    t: &ResourceTypeAt<'_>,
    stored: &Stored,
    output: Output,
    include: IncludeObject,
) -> (String, Bytes) {
    let api_version = t.rt.api_version(t.version);
    match output {
        Output::Object => ("application/json".into(), stored.json_at(&api_version)),
        Output::PartialMetadata => (
            "application/json".into(),
            Bytes::from(serde_json::to_vec(&partial(&stored.value)).unwrap_or_default()),
        ),
        Output::Table(tv) => {
            let v = stored.value_at(&api_version);
            let rv = crate::meta::meta_str(&v, "resourceVersion")
                .unwrap_or("")
                .to_string();
            let mut tbl = table::table(t.rt, t.version, &[&v], include, &rv, None);
            tbl["apiVersion"] = json!(format!("meta.k8s.io/{tv}"));
            (
                table_content_type(tv),
                Bytes::from(serde_json::to_vec(&tbl).unwrap_or_default()),
            )
        }
    }
}

/// A resource type at the version a request addressed.
pub struct ResourceTypeAt<'a> {
    pub rt: &'a ResourceType,
    pub version: &'a str,
}

fn include_object(query: &Query) -> IncludeObject {
    match query.get("includeObject") {
        Some("None") => IncludeObject::None,
        Some("Object") => IncludeObject::Object,
        _ => IncludeObject::Metadata,
    }
}

fn object_response(
    status: StatusCode,
    t: &ResourceTypeAt<'_>,
    stored: &Stored,
    accept: &Accept,
    query: &Query,
    warnings: &[String],
) -> Response<Body> {
    let (ct, body) = render_object(t, stored, accept.output, include_object(query));
    let mut r = respond(status, &ct, body);
    for w in warnings {
        let text = format!("299 - \"{}\"", w.replace('"', "\\\""));
        if let Ok(h) = HeaderValue::from_str(&text) {
            r.headers_mut().append("Warning", h);
        }
    }
    r
}

async fn resource(
    state: &Arc<ServerState>,
    req: Request<Incoming>,
    group: &str,
    version: &str,
    rest: &[String],
    query: &Query,
    accept: &Accept,
) -> Result<Response<Body>, ApiError> {
    let (target, legacy_watch) = parse_target(state, group, version, rest)?;
    if !accept.json_ok {
        return Err(ApiError::not_acceptable(
            "only the following media types are accepted: application/json, application/yaml",
        ));
    }
    let store = &state.store;
    let rt = target.rt.clone();
    let at = ResourceTypeAt {
        rt: &rt,
        version: &target.version,
    };
    let ns = target.namespace.clone().unwrap_or_default();
    let method = req.method().clone();
    if rt.review {
        if method != Method::POST || target.name.is_some() {
            return Err(ApiError::method_not_allowed(format!(
                "{} only supports create",
                rt.qualified()
            )));
        }
        // kubectl sends reviews as protobuf; the answer does not depend on the question.
        let ct = content_type(&req);
        let body = decode_body(&read_body(req).await?, &ct).unwrap_or_else(|_| json!({}));
        return Ok(json_response(StatusCode::CREATED, &review(&rt, body)));
    }
    match (method, &target.name) {
        (Method::GET, name) => {
            let watch_requested = legacy_watch || query.flag("watch");
            if watch_requested {
                let mut filter = filter_from(query, target.namespace.as_deref())?;
                if let Some(n) = name {
                    filter.fields = FieldSelector::parse(&format!("metadata.name={n}"))?;
                }
                let send_initial = query.flag("sendInitialEvents");
                let start = match (send_initial, query.get("resourceVersion")) {
                    (true, _) | (false, None | Some("") | Some("0")) => WatchStart::Current,
                    (false, Some(rv)) => WatchStart::After(rv.parse().map_err(|_| {
                        ApiError::bad_request(format!("invalid resource version: {rv}"))
                    })?),
                };
                let timeout = query
                    .get("timeoutSeconds")
                    .and_then(|t| t.parse::<u64>().ok())
                    .map(Duration::from_secs)
                    .unwrap_or(Duration::from_secs(1800));
                let params = watch::WatchParams {
                    rt: rt.clone(),
                    version: target.version.clone(),
                    filter,
                    start,
                    bookmarks: query.flag("allowWatchBookmarks"),
                    send_initial,
                    timeout,
                    output: accept.output,
                    include: include_object(query),
                    bookmark_interval: state.bookmark_interval,
                };
                return Ok(watch::serve(store.clone(), params, state.shutdown.clone()));
            }
            match name {
                Some(n) => {
                    let stored = store.get(&rt, &ns, n)?;
                    Ok(object_response(
                        StatusCode::OK,
                        &at,
                        &stored,
                        accept,
                        query,
                        &[],
                    ))
                }
                None => list(store, &at, target.namespace.as_deref(), query, accept),
            }
        }
        (Method::POST, None) => {
            let opts = write_options(&req, query)?;
            let ct = content_type(&req);
            let body = decode_body(&read_body(req).await?, &ct)?;
            let out = store.create(&rt, &target.version, &ns, body, &opts)?;
            Ok(object_response(
                StatusCode::CREATED,
                &at,
                &out.object,
                accept,
                query,
                &out.warnings,
            ))
        }
        (Method::PUT, Some(name)) => {
            let opts = write_options(&req, query)?;
            let ct = content_type(&req);
            let body = decode_body(&read_body(req).await?, &ct)?;
            let out = store.update(&rt, &target.version, &ns, name, body, target.sub, &opts)?;
            Ok(object_response(
                StatusCode::OK,
                &at,
                &out.object,
                accept,
                query,
                &out.warnings,
            ))
        }
        (Method::PATCH, Some(name)) => {
            let opts = write_options(&req, query)?;
            let ct = content_type(&req);
            let media = ct
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            let body = decode_body(&read_body(req).await?, &ct)?;
            let patch = match media.as_str() {
                "application/merge-patch+json" => PatchBody::Merge(body),
                "application/json-patch+json" => PatchBody::Json(body),
                "application/strategic-merge-patch+json" => PatchBody::Strategic(body),
                "application/apply-patch+yaml" | "application/apply-patch+cbor" => {
                    if query.get("fieldManager").is_none_or(str::is_empty) {
                        // Unlike other writes, apply never derives a manager from the user agent.
                        return Err(ApiError::invalid(
                            "PatchOptions",
                            "meta.k8s.io",
                            "",
                            &[crate::error::FieldError::required("fieldManager")],
                        ));
                    }
                    PatchBody::Apply(body)
                }
                other => {
                    return Err(ApiError::unsupported_media_type(other));
                }
            };
            let out = store.patch(&rt, &target.version, &ns, name, &patch, target.sub, &opts)?;
            let status = if out.created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            Ok(object_response(
                status,
                &at,
                &out.object,
                accept,
                query,
                &out.warnings,
            ))
        }
        (Method::DELETE, name) => {
            let ct = content_type(&req);
            let bytes = read_body(req).await?;
            let mut opts = DeleteOptions {
                dry_run: query.get("dryRun") == Some("All"),
                ..Default::default()
            };
            if !bytes.iter().all(u8::is_ascii_whitespace) {
                let body = decode_body(&bytes, &ct)?;
                if body
                    .get("dryRun")
                    .and_then(Value::as_array)
                    .is_some_and(|a| a.iter().any(|v| v == "All"))
                {
                    opts.dry_run = true;
                }
                opts.precondition_uid = body
                    .pointer("/preconditions/uid")
                    .and_then(Value::as_str)
                    .map(str::to_string);
                opts.precondition_rv = body
                    .pointer("/preconditions/resourceVersion")
                    .and_then(Value::as_str)
                    .map(str::to_string);
            }
            match name {
                Some(n) => {
                    let stored = store.delete(&rt, &ns, n, &opts)?;
                    let status = if crate::meta::is_deleting(&stored.value)
                        && !crate::meta::finalizers(&stored.value).is_empty()
                    {
                        StatusCode::ACCEPTED
                    } else {
                        StatusCode::OK
                    };
                    Ok(object_response(status, &at, &stored, accept, query, &[]))
                }
                None => {
                    let filter = filter_from(query, target.namespace.as_deref())?;
                    let deleted = store.delete_collection(&rt, &filter, &opts)?;
                    let page = crate::store::ListPage {
                        items: deleted,
                        resource_version: store.current_rv(),
                        continue_token: None,
                        remaining: None,
                    };
                    Ok(list_response(&at, &page, accept, query))
                }
            }
        }
        _ => Err(ApiError::method_not_allowed(format!(
            "the server does not allow this method on the requested resource ({})",
            rt.qualified()
        ))),
    }
}

/// Answers an access or identity review: the single token grants everything.
fn review(rt: &ResourceType, mut body: Value) -> Value {
    if !body.is_object() {
        body = json!({});
    }
    body["apiVersion"] = json!(rt.api_version("v1"));
    body["kind"] = json!(rt.kind);
    body["status"] = match rt.kind.as_str() {
        "SelfSubjectAccessReview" => {
            json!({"allowed": true, "reason": "the cilia-apiserver token grants everything"})
        }
        "SelfSubjectRulesReview" => json!({
            "resourceRules": [{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}],
            "nonResourceRules": [{"verbs": ["*"], "nonResourceURLs": ["*"]}],
            "incomplete": false,
        }),
        _ => {
            json!({"userInfo": {"username": "cilia-lab-admin", "groups": ["system:masters", "system:authenticated"]}})
        }
    };
    body
}

fn content_type(req: &Request<Incoming>) -> String {
    req.headers()
        .get(CONTENT_TYPE)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("application/json")
        .to_string()
}

fn list(
    store: &Store,
    at: &ResourceTypeAt<'_>,
    namespace: Option<&str>,
    query: &Query,
    accept: &Accept,
) -> Result<Response<Body>, ApiError> {
    let filter = filter_from(query, namespace)?;
    let limit = match query.get("limit") {
        Some(l) if !l.is_empty() => Some(
            l.parse::<usize>()
                .map_err(|_| ApiError::bad_request(format!("invalid limit: {l}")))?,
        ),
        _ => None,
    };
    let page = store.list(at.rt, &filter, limit, query.get("continue"))?;
    Ok(list_response(at, &page, accept, query))
}

fn list_response(
    at: &ResourceTypeAt<'_>,
    page: &crate::store::ListPage,
    accept: &Accept,
    query: &Query,
) -> Response<Body> {
    let api_version = at.rt.api_version(at.version);
    let mut meta = json!({"resourceVersion": page.resource_version.to_string()});
    if let Some(c) = &page.continue_token {
        meta["continue"] = json!(c);
    }
    if let Some(r) = page.remaining {
        meta["remainingItemCount"] = json!(r);
    }
    match accept.output {
        Output::Table(tv) => {
            let values: Vec<Value> = page
                .items
                .iter()
                .map(|s| s.value_at(&api_version))
                .collect();
            let refs: Vec<&Value> = values.iter().collect();
            let mut tbl = table::table(
                at.rt,
                at.version,
                &refs,
                include_object(query),
                &page.resource_version.to_string(),
                page.continue_token.as_deref(),
            );
            tbl["apiVersion"] = json!(format!("meta.k8s.io/{tv}"));
            respond(
                StatusCode::OK,
                &table_content_type(tv),
                serde_json::to_vec(&tbl).unwrap_or_default(),
            )
        }
        Output::PartialMetadata => {
            let items: Vec<Value> = page.items.iter().map(|s| partial(&s.value)).collect();
            let v = json!({"kind": "PartialObjectMetadataList", "apiVersion": "meta.k8s.io/v1", "metadata": meta, "items": items});
            json_response(StatusCode::OK, &v)
        }
        Output::Object => {
            // Assemble from the stored serializations instead of re-encoding every object.
            let head =
                json!({"kind": at.rt.list_kind, "apiVersion": api_version, "metadata": meta});
            let head = serde_json::to_string(&head).unwrap_or_default();
            let mut out = Vec::with_capacity(
                head.len() + page.items.iter().map(|s| s.json.len() + 1).sum::<usize>() + 16,
            );
            out.extend_from_slice(&head.as_bytes()[..head.len() - 1]);
            out.extend_from_slice(b",\"items\":[");
            for (i, s) in page.items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(&s.json_at(&api_version));
            }
            out.extend_from_slice(b"]}");
            respond(StatusCode::OK, "application/json", out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_negotiation() {
        let a = parse_accept(Some(
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json",
        ));
        assert_eq!(a.output, Output::Table("v1"));
        let a = parse_accept(Some(
            "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json",
        ));
        assert!(a.aggregated && a.json_ok && a.output == Output::Object);
        let a = parse_accept(Some("application/vnd.kubernetes.protobuf"));
        assert!(!a.json_ok);
        let a = parse_accept(Some(
            "application/com.github.proto-openapi.spec.v2@v1.0+protobuf",
        ));
        assert!(!a.json_ok);
        let a = parse_accept(None);
        assert!(a.json_ok);
        let a = parse_accept(Some(
            "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1",
        ));
        assert_eq!(a.output, Output::PartialMetadata);
    }

    #[test]
    fn bodies_decode_as_json_or_yaml() {
        assert_eq!(
            decode_body(b"{\"a\":1}", "application/json").unwrap(),
            json!({"a": 1})
        );
        assert_eq!(
            decode_body(b"a: 1\nb: [x]\n", "application/apply-patch+yaml").unwrap(),
            json!({"a": 1, "b": ["x"]})
        );
        assert_eq!(
            decode_body(b"{nope", "application/json").unwrap_err().code,
            400
        );
        assert_eq!(
            decode_body(b"\x0a\x0b", "application/vnd.kubernetes.protobuf")
                .unwrap_err()
                .code,
            400
        );
        assert_eq!(
            decode_body(b"\xa0", "application/cbor").unwrap_err().code,
            415
        );
        assert_eq!(
            decode_body(b"  ", "application/json").unwrap_err().code,
            400
        );
    }
}
