//! kube-rs (the operator's client) against the test API server over real HTTPS: watchers,
//! reflectors, resumed watches, optimistic concurrency, server-side apply, status subresources.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use cilia_apiserver::{ApiServer, ApiServerOptions};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, Service};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams, WatchEvent,
    WatchParams,
};
use kube::core::{ApiResource, GroupVersionKind};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Client, Config};
use serde_json::json;

const NS: &str = "default";
const STEP: Duration = Duration::from_secs(10);

async fn client_for(server: &ApiServer) -> Client {
    let kc = kube::config::Kubeconfig::read_from(server.kubeconfig_path()).expect("kubeconfig");
    let config = Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .expect("config");
    Client::try_from(config).expect("client")
}

async fn start(opts: ApiServerOptions) -> (ApiServer, Client) {
    let server = ApiServer::spawn(opts).await.expect("server starts");
    let client = client_for(&server).await;
    (server, client)
}

fn cm(name: &str, data: &[(&str, &str)]) -> ConfigMap {
    ConfigMap {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        data: Some(
            data.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
        ),
        ..Default::default()
    }
}

// A watcher sees an object's creation, modification and deletion in that order, and a reflector
// store mirrors the server.
#[tokio::test]
async fn watcher_and_reflector_see_changes_in_order() {
    let (_server, client) = start(ApiServerOptions::default()).await;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), NS);
    let (reader, writer) = reflector::store::<ConfigMap>();
    let cfg = watcher::Config::default().labels("suite=watch");
    let mut events = reflector(writer, watcher(api.clone(), cfg)).boxed();
    // Initial list: Init, InitDone (nothing matches yet).
    assert!(matches!(
        tokio::time::timeout(STEP, events.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap(),
        watcher::Event::Init
    ));
    assert!(matches!(
        tokio::time::timeout(STEP, events.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap(),
        watcher::Event::InitDone
    ));

    let mut obj = cm("w", &[("v", "1")]);
    obj.metadata.labels = Some([("suite".to_string(), "watch".to_string())].into());
    api.create(&PostParams::default(), &obj).await.unwrap();
    api.patch(
        "w",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"v": "2"}})),
    )
    .await
    .unwrap();
    api.delete("w", &DeleteParams::default()).await.unwrap();

    let mut seen = Vec::new();
    while seen.len() < 3 {
        match tokio::time::timeout(STEP, events.next())
            .await
            .expect("event in time")
            .unwrap()
            .unwrap()
        {
            watcher::Event::Apply(o) => seen.push(format!("apply:{}", o.data.unwrap()["v"])),
            watcher::Event::Delete(o) => seen.push(format!("delete:{}", o.metadata.name.unwrap())),
            _ => {}
        }
    }
    assert_eq!(seen, vec!["apply:1", "apply:2", "delete:w"]);
    assert!(reader.is_empty(), "the reflector forgot the deleted object");
}

// The StreamingList strategy (sendInitialEvents + the initial-events-end bookmark) delivers the
// existing objects, then changes.
#[tokio::test]
async fn streaming_list_watcher() {
    let (_server, client) = start(ApiServerOptions::default()).await;
    let api: Api<ConfigMap> = Api::namespaced(client, NS);
    for i in 0..3 {
        api.create(&PostParams::default(), &cm(&format!("s{i}"), &[]))
            .await
            .unwrap();
    }
    let stream = watcher(api.clone(), watcher::Config::default().streaming_lists());
    let mut objects = stream.default_backoff().applied_objects().boxed();
    let mut names = Vec::new();
    for _ in 0..3 {
        names.push(
            tokio::time::timeout(STEP, objects.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap()
                .metadata
                .name
                .unwrap(),
        );
    }
    names.sort();
    assert_eq!(names, vec!["s0", "s1", "s2"]);
    api.create(&PostParams::default(), &cm("s3", &[]))
        .await
        .unwrap();
    let next = tokio::time::timeout(STEP, objects.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(next.metadata.name.as_deref(), Some("s3"));
}

// A watch resumed from a resourceVersion gets every change made after it, in order.
#[tokio::test]
async fn resumed_watch_loses_nothing() {
    let (_server, client) = start(ApiServerOptions::default()).await;
    let api: Api<ConfigMap> = Api::namespaced(client, NS);
    let created = api
        .create(&PostParams::default(), &cm("r", &[("n", "0")]))
        .await
        .unwrap();
    let rv = created.metadata.resource_version.unwrap();
    for n in 1..=5 {
        api.patch(
            "r",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"n": n.to_string()}})),
        )
        .await
        .unwrap();
    }
    api.delete("r", &DeleteParams::default()).await.unwrap();
    let stream = api
        .watch(&WatchParams::default().timeout(5), &rv)
        .await
        .unwrap();
    let events: Vec<WatchEvent<ConfigMap>> = stream.take(6).try_collect().await.unwrap();
    let seen: Vec<String> = events
        .iter()
        .map(|e| match e {
            WatchEvent::Modified(o) => format!("M{}", o.data.as_ref().unwrap()["n"]),
            WatchEvent::Deleted(_) => "D".into(),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(seen, vec!["M1", "M2", "M3", "M4", "M5", "D"]);
}

// Resuming from a resourceVersion older than the kept history is refused with 410 Expired, and
// the kube-runtime watcher recovers by re-listing.
#[tokio::test]
async fn too_old_resource_version_is_gone() {
    let (_server, client) = start(ApiServerOptions {
        watch_history: 4,
        ..Default::default()
    })
    .await;
    let api: Api<ConfigMap> = Api::namespaced(client, NS);
    let created = api
        .create(&PostParams::default(), &cm("g", &[]))
        .await
        .unwrap();
    let rv = created.metadata.resource_version.unwrap();
    for n in 0..10 {
        api.patch(
            "g",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"n": n.to_string()}})),
        )
        .await
        .unwrap();
    }
    let mut stream = api
        .watch(&WatchParams::default().timeout(5), &rv)
        .await
        .unwrap()
        .boxed();
    match tokio::time::timeout(STEP, stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap()
    {
        WatchEvent::Error(e) => {
            assert_eq!(e.code, 410);
            assert_eq!(e.reason, "Expired");
        }
        other => panic!("expected a 410 ERROR event, got {other:?}"),
    }
}

// 20 writers doing read-modify-write on one object, retrying on 409 Conflict, lose no increment.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_lose_no_update() {
    const WRITERS: usize = 20;
    const EACH: usize = 10;
    let (_server, client) = start(ApiServerOptions::default()).await;
    let api: Api<ConfigMap> = Api::namespaced(client, NS);
    api.create(&PostParams::default(), &cm("counter", &[("n", "0")]))
        .await
        .unwrap();
    let conflicts = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..WRITERS {
        let api = api.clone();
        let conflicts = conflicts.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..EACH {
                loop {
                    let mut cur = api.get("counter").await.unwrap();
                    let n: usize = cur.data.as_ref().unwrap()["n"].parse().unwrap();
                    cur.data
                        .as_mut()
                        .unwrap()
                        .insert("n".into(), (n + 1).to_string());
                    match api.replace("counter", &PostParams::default(), &cur).await {
                        Ok(_) => break,
                        Err(kube::Error::Api(e)) if e.code == 409 => {
                            conflicts.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => panic!("unexpected error {e}"),
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let end = api.get("counter").await.unwrap();
    assert_eq!(end.data.unwrap()["n"], (WRITERS * EACH).to_string());
    assert!(
        conflicts.load(Ordering::Relaxed) > 0,
        "the writers should have collided at least once"
    );
}

// Server-side apply: a second manager's conflicting field is refused unless forced, and a
// manager dropping a field from its config removes it.
#[tokio::test]
async fn server_side_apply_conflicts_and_removal() {
    let (_server, client) = start(ApiServerOptions::default()).await;
    let api: Api<ConfigMap> = Api::namespaced(client, NS);
    let cfg = |data: serde_json::Value| json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ssa"}, "data": data});
    api.patch(
        "ssa",
        &PatchParams::apply("one"),
        &Patch::Apply(cfg(json!({"a": "1", "b": "1"}))),
    )
    .await
    .unwrap();
    let err = api
        .patch(
            "ssa",
            &PatchParams::apply("two"),
            &Patch::Apply(cfg(json!({"a": "2"}))),
        )
        .await
        .unwrap_err();
    match err {
        kube::Error::Api(e) => {
            assert_eq!(e.code, 409);
            assert!(e.message.contains("conflict with \"one\""), "{}", e.message);
        }
        other => panic!("{other}"),
    }
    api.patch(
        "ssa",
        &PatchParams::apply("two").force(),
        &Patch::Apply(cfg(json!({"a": "2"}))),
    )
    .await
    .unwrap();
    let after = api
        .patch(
            "ssa",
            &PatchParams::apply("one"),
            &Patch::Apply(cfg(json!({"b": "1"}))),
        )
        .await
        .unwrap();
    assert_eq!(
        after.data.unwrap(),
        BTreeMap::from([
            ("a".to_string(), "2".to_string()),
            ("b".to_string(), "1".to_string())
        ])
    );
    let dropped = api
        .patch(
            "ssa",
            &PatchParams::apply("two"),
            &Patch::Apply(cfg(json!({}))),
        )
        .await
        .unwrap();
    assert_eq!(
        dropped.data.unwrap(),
        BTreeMap::from([("b".to_string(), "1".to_string())])
    );
    let managers: Vec<String> = dropped
        .metadata
        .managed_fields
        .unwrap()
        .into_iter()
        .filter_map(|m| m.manager)
        .collect();
    assert!(managers.contains(&"one".to_string()));
}

fn widget_crd() -> CustomResourceDefinition {
    serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.com"},
        "spec": {"group": "example.com", "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "shortNames": ["wd"]},
            "versions": [{"name": "v1", "served": true, "storage": true,
                "subresources": {"status": {}},
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                    "spec": {"type": "object", "properties": {"size": {"type": "integer", "default": 1}}},
                    "status": {"type": "object", "properties": {"ready": {"type": "boolean"}}}}}}}]}
    }))
    .unwrap()
}

// A CRD becomes a served resource; its status subresource ignores spec, its main resource
// ignores status, generation moves only with spec, and schema defaults apply.
#[tokio::test]
async fn crd_status_subresource_and_generation() {
    let (_server, client) = start(ApiServerOptions::default()).await;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.create(&PostParams::default(), &widget_crd())
        .await
        .unwrap();
    let discovery = kube::discovery::Discovery::new(client.clone())
        .run()
        .await
        .unwrap();
    let (ar, caps) = discovery
        .resolve_gvk(&GroupVersionKind::gvk("example.com", "v1", "Widget"))
        .expect("discovered");
    assert_eq!(caps.scope, kube::discovery::Scope::Namespaced);
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), NS, &ar);
    let w: DynamicObject =
        serde_json::from_value(json!({"apiVersion": "example.com/v1", "kind": "Widget",
        "metadata": {"name": "w"}, "spec": {}, "status": {"ready": true}}))
        .unwrap();
    let created = api.create(&PostParams::default(), &w).await.unwrap();
    assert_eq!(created.data["spec"]["size"], 1, "default applied");
    assert!(
        created.data.get("status").is_none(),
        "status dropped on create"
    );
    let st = api
        .patch_status(
            "w",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"size": 5}, "status": {"ready": true}})),
        )
        .await
        .unwrap();
    assert_eq!(
        (
            st.data["spec"]["size"].clone(),
            st.data["status"]["ready"].clone()
        ),
        (json!(1), json!(true))
    );
    assert_eq!(st.metadata.generation, Some(1));
    let main = api
        .patch(
            "w",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"size": 3}, "status": {"ready": false}})),
        )
        .await
        .unwrap();
    assert_eq!(
        (
            main.data["spec"]["size"].clone(),
            main.data["status"]["ready"].clone()
        ),
        (json!(3), json!(true))
    );
    assert_eq!(main.metadata.generation, Some(2));
    // Deleting the CRD removes the resource and its objects.
    crds.delete("widgets.example.com", &DeleteParams::default())
        .await
        .unwrap();
    let ar2 = ApiResource::from_gvk(&GroupVersionKind::gvk("example.com", "v1", "Widget"));
    let gone: Api<DynamicObject> = Api::namespaced_with(client, NS, &ar2);
    assert!(gone.get("w").await.is_err());
}

// Finalizers hold a deleted object (deletionTimestamp set) until they are removed; deleting a
// namespace removes what it contains.
#[tokio::test]
async fn finalizers_and_namespace_deletion() {
    let (_server, client) = start(ApiServerOptions::default()).await;
    let nss: Api<Namespace> = Api::all(client.clone());
    nss.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "lab"}})).unwrap(),
    )
    .await
    .unwrap();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "lab");
    let s: Secret = serde_json::from_value(json!({"metadata": {"name": "held", "finalizers": ["example.com/hold"]}, "stringData": {"k": "v"}})).unwrap();
    let created = secrets.create(&PostParams::default(), &s).await.unwrap();
    assert_eq!(
        created.data.unwrap()["k"].0,
        b"v".to_vec(),
        "stringData folded into data"
    );
    secrets
        .delete("held", &DeleteParams::default())
        .await
        .unwrap();
    let held = secrets.get("held").await.unwrap();
    assert!(held.metadata.deletion_timestamp.is_some());
    nss.delete("lab", &DeleteParams::default()).await.unwrap();
    assert_eq!(
        nss.get("lab")
            .await
            .unwrap()
            .status
            .unwrap()
            .phase
            .as_deref(),
        Some("Terminating")
    );
    secrets
        .patch(
            "held",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await
        .unwrap();
    assert!(secrets.get("held").await.is_err());
    assert!(
        nss.get("lab").await.is_err(),
        "the emptied namespace is gone"
    );
}

// Services get ClusterIPs and node ports; list pagination and label selectors work.
#[tokio::test]
async fn services_lists_and_selectors() {
    let (_server, client) = start(ApiServerOptions::default()).await;
    let api: Api<Service> = Api::namespaced(client, NS);
    for i in 0..7 {
        let svc: Service = serde_json::from_value(json!({"metadata": {"name": format!("svc{i}"), "labels": {"tier": if i % 2 == 0 { "even" } else { "odd" }}},
            "spec": {"type": "LoadBalancer", "ports": [{"port": 80}]}}))
        .unwrap();
        let created = api.create(&PostParams::default(), &svc).await.unwrap();
        let spec = created.spec.unwrap();
        assert!(spec.cluster_ip.unwrap().starts_with("10.96."));
        assert!(spec.ports.unwrap()[0].node_port.is_some());
    }
    let page = api.list(&ListParams::default().limit(3)).await.unwrap();
    assert_eq!(page.items.len(), 3);
    let token = page.metadata.continue_.clone().expect("more pages");
    let rest = api
        .list(&ListParams::default().limit(10).continue_token(&token))
        .await
        .unwrap();
    assert_eq!(
        rest.items.len(),
        5,
        "4 more test Services + the kubernetes Service"
    );
    let odd = api
        .list(&ListParams::default().labels("tier in (odd)"))
        .await
        .unwrap();
    assert_eq!(odd.items.len(), 3);
}

// A missing or wrong token is refused with 401 before anything else.
#[tokio::test]
async fn wrong_token_is_unauthorized() {
    let server = ApiServer::spawn(ApiServerOptions::default()).await.unwrap();
    let kc: kube::config::Kubeconfig =
        serde_yaml::from_str(&server.kubeconfig_with_token("wrong")).unwrap();
    let client = Client::try_from(
        Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .unwrap(),
    )
    .unwrap();
    let api: Api<ConfigMap> = Api::namespaced(client, NS);
    match api.list(&ListParams::default()).await.unwrap_err() {
        kube::Error::Api(e) => assert_eq!((e.code, e.reason.as_str()), (401, "Unauthorized")),
        other => panic!("{other}"),
    }
}

async fn raw(
    client: &Client,
    method: &str,
    path: &str,
    content_type: &str,
    body: &str,
) -> Result<String, (u16, String)> {
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("Content-Type", content_type)
        .body(body.as_bytes().to_vec())
        .expect("request");
    client.request_text(req).await.map_err(|e| match e {
        kube::Error::Api(s) => (s.code, s.reason.clone()),
        other => panic!("transport error: {other}"),
    })
}

// Malformed requests get a Status with the right code, never a dropped connection.
#[tokio::test]
async fn malformed_requests_get_status_errors() {
    let (_server, client) = start(ApiServerOptions::default()).await;
    let cms = "/api/v1/namespaces/default/configmaps";
    assert_eq!(
        raw(&client, "POST", cms, "application/json", "{not json")
            .await
            .unwrap_err(),
        (400, "BadRequest".into())
    );
    assert_eq!(
        raw(&client, "POST", cms, "application/json", "[1,2]")
            .await
            .unwrap_err(),
        (400, "BadRequest".into())
    );
    assert_eq!(
        raw(
            &client,
            "POST",
            cms,
            "application/json",
            r#"{"kind":"Pod","metadata":{"name":"x"}}"#
        )
        .await
        .unwrap_err(),
        (400, "BadRequest".into())
    );
    assert_eq!(
        raw(&client, "POST", cms, "application/cbor", "\u{a0}")
            .await
            .unwrap_err()
            .0,
        415
    );
    assert_eq!(
        raw(
            &client,
            "GET",
            &format!("{cms}?labelSelector=a%20in%20b"),
            "application/json",
            ""
        )
        .await
        .unwrap_err()
        .0,
        400
    );
    assert_eq!(
        raw(
            &client,
            "GET",
            &format!("{cms}?limit=x"),
            "application/json",
            ""
        )
        .await
        .unwrap_err()
        .0,
        400
    );
    assert_eq!(
        raw(
            &client,
            "GET",
            &format!("{cms}?watch=1&resourceVersion=abc"),
            "application/json",
            ""
        )
        .await
        .unwrap_err()
        .0,
        400
    );
    assert_eq!(
        raw(
            &client,
            "GET",
            "/api/v1/namespaces/default/nothings",
            "application/json",
            ""
        )
        .await
        .unwrap_err()
        .0,
        404
    );
    assert_eq!(
        raw(&client, "GET", "/apis/nope.io/v1", "application/json", "")
            .await
            .unwrap_err()
            .0,
        404
    );
    assert_eq!(
        raw(&client, "PUT", cms, "application/json", "{}")
            .await
            .unwrap_err()
            .0,
        405
    );
    raw(
        &client,
        "POST",
        cms,
        "application/json",
        r#"{"metadata":{"name":"p"}}"#,
    )
    .await
    .unwrap();
    let p = format!("{cms}/p");
    assert_eq!(
        raw(&client, "PATCH", &p, "text/plain", "{}")
            .await
            .unwrap_err()
            .0,
        415
    );
    assert_eq!(
        raw(
            &client,
            "PATCH",
            &p,
            "application/json-patch+json",
            r#"{"op":"add"}"#
        )
        .await
        .unwrap_err()
        .0,
        400
    );
    assert_eq!(
        raw(
            &client,
            "PATCH",
            &p,
            "application/json-patch+json",
            r#"[{"op":"remove","path":"/nope"}]"#
        )
        .await
        .unwrap_err()
        .0,
        422
    );
    assert_eq!(
        raw(
            &client,
            "PATCH",
            &p,
            "application/merge-patch+json",
            r#"{"metadata":{"name":"other"}}"#
        )
        .await
        .unwrap_err()
        .0,
        400
    );
    assert_eq!(
        raw(
            &client,
            "PATCH",
            &p,
            "application/apply-patch+yaml",
            "kind: ConfigMap\napiVersion: v1\nmetadata: {name: p}\n"
        )
        .await
        .unwrap_err()
        .0,
        422,
        "apply needs a fieldManager"
    );
    assert_eq!(
        raw(
            &client,
            "POST",
            &format!("{cms}?dryRun=Sometimes"),
            "application/json",
            r#"{"metadata":{"name":"q"}}"#
        )
        .await
        .unwrap_err()
        .0,
        400
    );
    // The server still answers afterwards.
    assert!(
        raw(&client, "GET", &p, "application/json", "")
            .await
            .is_ok()
    );
}
