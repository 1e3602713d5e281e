//! The control plane in process (no sockets, no worker processes): policy endpoints,
//! authentication, bad requests, and one round over a real socket bound to port 0.
//! Worker processes are covered by `tests/master.rs`.

// Helpers panic on purpose: a broken fixture should fail the test that uses it.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::{Value, json};
use superpeer::master::Master;
use superpeer::master::config::MasterConfig;
use superpeer::policy::{PolicyEngine, PolicyLimits};
use superpeer::protocol::{Protocol, starting_policies};
use superpeer::serve::{self, ControlPlane};
use tower::ServiceExt;

fn guest(name: &str) -> Vec<u8> {
    std::fs::read(format!("{}/{name}.wasm", env!("SUPERPEER_GUEST_DIR"))).unwrap()
}

/// A control plane over a real master task that has no seeds, so it starts no workers.
async fn control(token: Option<&str>) -> ControlPlane {
    let limits = PolicyLimits {
        call_deadline: std::time::Duration::from_millis(500),
        init_deadline: std::time::Duration::from_millis(2000),
        max_component_bytes: 4 << 20,
        ..PolicyLimits::default()
    };
    let engine = PolicyEngine::new(limits.clone()).unwrap();
    let policies = starting_policies(&engine, Protocol::Pml, None).unwrap();
    let data = std::env::temp_dir().join(format!(
        "superpeer-serve-test-{}-{}",
        std::process::id(),
        rand_suffix()
    ));
    let mut values = BTreeMap::new();
    values.insert("dataDir".to_string(), data.display().to_string());
    let mut config = MasterConfig::from_values(&values, &BTreeMap::new()).unwrap();
    config.policy_limits = limits;
    let (master, handle) = Master::new(config, policies, "text").unwrap();
    tokio::spawn(master.run());
    ControlPlane::new(engine, handle, token.map(String::from))
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

async fn call_raw(
    control: &ControlPlane,
    request: Request<Body>,
) -> (StatusCode, axum::http::HeaderMap, axum::body::Bytes) {
    let response = control.clone().router().oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
    (status, headers, bytes)
}

async fn call(control: &ControlPlane, request: Request<Body>) -> (StatusCode, Value) {
    let (status, _, bytes) = call_raw(control, request).await;
    let json = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
        panic!("{status}: body is not JSON ({e}): {}", String::from_utf8_lossy(&bytes))
    });
    (status, json)
}

fn get(path: &str) -> Request<Body> {
    Request::get(path).body(Body::empty()).unwrap()
}

fn post(path: &str, body: impl Into<Body>) -> Request<Body> {
    Request::post(path).body(body.into()).unwrap()
}

#[tokio::test]
async fn reports_the_embedded_policy() {
    let control = control(None).await;
    let (status, body) = call(&control, get("/policy")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["policy"]["name"], "pml");
    assert_eq!(body["policy"]["source"], "embedded");
    assert_eq!(body["previous"], Value::Null);
    assert_eq!(body["limits"]["call_deadline"], 500);
}

#[tokio::test]
async fn accepts_a_good_policy_and_keeps_the_old_one_as_previous() {
    let control = control(None).await;
    let (status, body) = call(&control, post("/policy", guest("superpeer_test_counter"))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["policy"]["name"], "counter");
    assert_eq!(body["workers"], 0);
    let (_, body) = call(&control, get("/policy")).await;
    assert_eq!(body["policy"]["name"], "counter");
    assert_eq!(body["policy"]["source"], "upload");
    assert_eq!(body["previous"]["name"], "pml");
}

#[tokio::test]
async fn refuses_bad_policies_with_a_reason_and_keeps_the_running_one() {
    let control = control(None).await;
    let cases: [(Vec<u8>, StatusCode, &str); 5] = [
        (b"garbage".to_vec(), StatusCode::UNPROCESSABLE_ENTITY, "this is not WebAssembly"),
        (
            guest("superpeer_test_wrong_world"),
            StatusCode::UNPROCESSABLE_ENTITY,
            "does not implement",
        ),
        // Needs settings the canary does not give it, so its init refuses.
        (guest("superpeer_test_misbehave"), StatusCode::UNPROCESSABLE_ENTITY, "refused to start"),
        (Vec::new(), StatusCode::BAD_REQUEST, "empty body"),
        (vec![0; 5 << 20], StatusCode::PAYLOAD_TOO_LARGE, "length limit"),
    ];
    for (body, expected, reason) in cases {
        let (status, answer) = call(&control, post("/policy", body)).await;
        assert_eq!(status, expected, "{answer}");
        let error = answer["error"].as_str().unwrap();
        assert!(error.contains(reason), "{error:?} should say {reason:?}");
    }
    let (_, body) =
        call(&control, post("/policy?channel=bm9uZQ", guest("superpeer_test_counter"))).await;
    assert!(body["error"].as_str().unwrap().contains("no seed for channel"), "{body}");
    let (_, body) = call(&control, get("/policy")).await;
    assert_eq!(body["policy"]["name"], "pml");
}

#[tokio::test]
async fn enforces_the_access_token_everywhere_but_health_and_the_page() {
    let control = control(Some("s3cret")).await;
    for (method, path) in serve::ROUTES {
        let path = path.replace("{id}", "1").replace("{pid}", "1");
        let request = Request::builder().method(*method).uri(&path).body(Body::empty()).unwrap();
        if path == "/" {
            // The page holds no data; it asks for the token itself.
            assert_eq!(call_raw(&control, request).await.0, StatusCode::OK);
            continue;
        }
        let (status, body) = call(&control, request).await;
        if path == "/health" {
            assert_eq!(status, StatusCode::OK);
        } else {
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {path}");
            assert!(body["error"].as_str().unwrap().contains("X-ACCESS-TOKEN"));
        }
    }
    let wrong =
        Request::get("/stats").header("X-ACCESS-TOKEN", "guess").body(Body::empty()).unwrap();
    assert_eq!(call(&control, wrong).await.0, StatusCode::UNAUTHORIZED);
    let right =
        Request::get("/stats").header("X-ACCESS-TOKEN", "s3cret").body(Body::empty()).unwrap();
    assert_eq!(call(&control, right).await.0, StatusCode::OK);
    // What a Prometheus scrape config sends.
    let bearer = |token: &str| {
        Request::get("/metrics")
            .header("Authorization", format!("Bearer {token}"))
            .body(Body::empty())
            .unwrap()
    };
    assert_eq!(call(&control, bearer("guess")).await.0, StatusCode::UNAUTHORIZED);
    let (status, headers, body) = call_raw(&control, bearer("s3cret")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "text/plain; version=0.0.4; charset=utf-8");
    assert!(String::from_utf8_lossy(&body).contains("\nsuperpeer_workers 0\n"));
}

#[tokio::test]
async fn the_monitor_page_is_self_contained_and_locked_to_this_server() {
    let control = control(Some("s3cret")).await;
    let (status, headers, body) = call_raw(&control, get("/")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "text/html; charset=utf-8");
    let csp = headers["content-security-policy"].to_str().unwrap();
    assert!(csp.starts_with("default-src 'none'") && csp.contains("connect-src 'self'"), "{csp}");
    let page = String::from_utf8(body.to_vec()).unwrap();
    assert!(page.contains("<table>") && page.contains("chart-uplink"));
    for external in ["src=\"http", "href=\"http", "url(http", "@import", "//cdn"] {
        assert!(!page.contains(external), "the page refers elsewhere: {external}");
    }
}

#[tokio::test]
async fn history_takes_a_sample_number_to_start_after_and_refuses_anything_else() {
    let control = control(None).await;
    let (status, body) = call(&control, get("/history")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["spanSeconds"], 600);
    assert!(body["samples"].is_array());
    let (status, body) = call(&control, get(&format!("/history?after={}", u64::MAX))).await;
    assert_eq!((status, body["samples"].clone()), (StatusCode::OK, json!([])));
    for bad in ["/history?after=yesterday", "/history?after=-1", "/history?since=0"] {
        let (status, body) = call(&control, get(bad)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
        assert!(body["error"].is_string(), "{bad}: {body}");
    }
}

#[tokio::test]
async fn bad_bodies_and_ids_get_a_4xx_that_names_the_problem() {
    let control = control(None).await;
    let cases: &[(&str, &str, &str, StatusCode, &str)] = &[
        ("POST", "/seed", "{not json", StatusCode::BAD_REQUEST, "invalid JSON"),
        ("POST", "/seed", "", StatusCode::BAD_REQUEST, "empty body"),
        ("POST", "/seed", r#"{"list": []}"#, StatusCode::BAD_REQUEST, "nothing to seed"),
        ("POST", "/seed", r#"{"list": [{"channel": 5}]}"#, StatusCode::BAD_REQUEST, "invalid type"),
        (
            "POST",
            "/seed",
            r#"{"list": [{"chanel": "YQ"}]}"#,
            StatusCode::BAD_REQUEST,
            "unknown field",
        ),
        (
            "POST",
            "/seed",
            r#"{"list": [{"channel": "%%"}]}"#,
            StatusCode::BAD_REQUEST,
            "not base64",
        ),
        (
            "POST",
            "/seed",
            r#"{"list": [{"channel": "YQ", "maxConnections": -1}]}"#,
            StatusCode::BAD_REQUEST,
            "invalid value",
        ),
        // The policy reads a seed's settings and refuses what it cannot use.
        (
            "POST",
            "/seed",
            r#"{"list": [{"channel": "YQ"}, {"channel": "Yg", "settings": {"identities": ["2.3", "1.0"]}}]}"#,
            StatusCode::BAD_REQUEST,
            "item 1: the policy refuses it: setting `identities`: \"1.0\" is not",
        ),
        (
            "POST",
            "/seed",
            r#"{"list": [{"channel": "YQ", "settings": {"offersPerAnnounce": 500}}]}"#,
            StatusCode::BAD_REQUEST,
            "offersPerAnnounce`: 500 is not a number from 1 to 82",
        ),
        (
            "POST",
            "/seed",
            r#"{"list": [{"channel": "YQ", "settings": {"": 1}}]}"#,
            StatusCode::BAD_REQUEST,
            "`settings` must be",
        ),
        ("POST", "/ping", r#"{"workers": "many"}"#, StatusCode::BAD_REQUEST, "invalid type"),
        ("POST", "/ping", r#"{"workers": 0}"#, StatusCode::BAD_REQUEST, "at least 1"),
        ("POST", "/stop/abc", "", StatusCode::NOT_FOUND, "no seed for channel"),
        ("POST", "/restart/abc", "", StatusCode::BAD_REQUEST, "not a pid"),
        ("POST", "/stop/4242", "", StatusCode::NOT_FOUND, "no worker with pid 4242"),
        ("POST", "/restart/4242", "", StatusCode::NOT_FOUND, "no worker with pid 4242"),
        ("GET", "/stats/4242", "", StatusCode::NOT_FOUND, "no worker"),
        ("GET", "/nope", "", StatusCode::NOT_FOUND, "no such endpoint"),
        ("DELETE", "/seed", "", StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
    ];
    for (method, path, body, expected, says) in cases {
        let request = Request::builder()
            .method(*method)
            .uri(*path)
            .body(Body::from(body.to_string()))
            .unwrap();
        let (status, answer) = call(&control, request).await;
        assert_eq!(status, *expected, "{method} {path} {body}: {answer}");
        let error = answer["error"].as_str().unwrap();
        assert!(error.contains(says), "{method} {path} {body}: {error:?} should say {says:?}");
    }
    let huge = format!(r#"{{"list": [{{"channel": "YQ", "label": "{}"}}]}}"#, "x".repeat(2 << 20));
    assert_eq!(call(&control, post("/seed", huge)).await.0, StatusCode::PAYLOAD_TOO_LARGE);
    let (_, stats) = call(&control, get("/stats")).await;
    assert_eq!(stats["master"]["seeds"], 0, "nothing bad was taken");
}

#[tokio::test]
async fn ping_reports_capacity_within_the_operators_limit() {
    let control = control(None).await;
    let (status, body) = call(&control, post("/ping", "")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["workers"], 0);
    let (_, body) = call(&control, post("/ping", r#"{"workers": 1, "bandwidth": 100}"#)).await;
    assert_eq!(body["capacity"], 1);
}

#[tokio::test]
async fn serves_its_openapi_document() {
    let (status, body) = call(&control(None).await, get("/openapi.json")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["openapi"], "3.1.0");
}

#[tokio::test]
async fn serves_over_a_real_socket_and_shuts_down() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve::run(listener, control(None).await, async {
        let _ = stopped.await;
    }));

    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /policy HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("\"name\":\"pml\""), "{response}");

    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}
